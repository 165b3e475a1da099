"""Relative-index sparse entries with fillers, and the ``packed`` bit coding.

Semantics (DESIGN §3, "sparse" encoding and "packed" coding):

- A tensor is viewed as the matrix ``[rows, cols] = [shape[0], prod(shape[1:])]``
  of uint8 codes, code 0 being a zero (pruned) weight.  In ``order='row'`` the
  lines are rows (CSR-like); in ``order='col'`` they are columns (CSC-like,
  EIE).
- Each non-zero code becomes an entry ``(delta, code)``, ``delta`` (r =
  ``index_bits`` bits) being the number of zeros skipped since the previous
  entry of the line or since the line start.  A gap larger than ``2**r - 1``
  is bridged by filler entries ``(2**r - 1, 0)``; each covers its ``2**r - 1``
  skipped zeros plus the zero at the next position.  Every entry covers
  ``delta + 1`` positions, the entries of a line cover at most the line, and
  trailing zeros get no entries.  Code 0 occurs only in fillers.
- ``pointers`` holds ``n_lines + 1`` cumulative entry counts, fillers included.
- ``packed``: entry ``delta | code << r`` in ``w = r + b`` bits, fields packed
  LSB-first (bit k of the stream is bit ``k % 8`` of byte ``k // 8``), the
  unused high bits of the last byte zero; ``ceil(n * w / 8)`` bytes.

The encoder and bit packing run as Numba kernels (``cmodel.kernels.entries``);
``relative_index_decode`` is a plain numpy reference decoder.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CmzError
from ..kernels import entries as _k

ORDERS = ("row", "col")
MAX_INDEX_BITS = 8  # delta is stored in a uint8 array
MAX_VALUE_BITS = 8  # codes are uint8
MAX_PACK_WIDTH = 16  # a packed field never spans more than 3 bytes

_PROBLEMS = {
    _k.BAD_DELTA: "expected delta < 2**r = {lim}; found delta {d}",
    _k.BAD_CODE: "expected code < codebook size {ncodes}; found code {c}",
    _k.BAD_FILLER: "expected code 0 only in a filler with delta 2**r - 1 = {fill}; found delta {d}",
    _k.OVERRUN: "expected the entries to cover at most the line length {line_len}; found {covered} positions covered",
}


def pointer_dtype(n_entries: int) -> np.dtype:
    """The narrowest pointer dtype holding ``n_entries`` (spec §6.3):
    uint16 below 2**16, uint32 below 2**32, else uint64."""
    for dt in (np.uint16, np.uint32):
        if n_entries < 1 << (8 * np.dtype(dt).itemsize):
            return np.dtype(dt)
    return np.dtype(np.uint64)


def relative_index_encode(codes2d: np.ndarray, index_bits: int, order: str = "row") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode a code matrix as relative-index entries with fillers.

    The matrix is read once per pass (count, then fill); a C- or F-contiguous
    matrix is never copied, in either order.

    Args:
        codes2d: 2-D uint8 codes, 0 meaning a pruned weight.
        index_bits: r, bits per delta, 1..8.
        order: ``'row'`` (lines are rows) or ``'col'`` (lines are columns).

    Returns:
        ``(pointers, deltas, entry_codes)``: pointers (n_lines + 1, dtype
        ``pointer_dtype(n_entries)``), then uint8 deltas and codes of the
        n_entries entries, fillers included, line after line.

    Raises:
        CmzError: ``check='encoder_options'`` for a bad argument.

    Example:
        >>> p, d, c = relative_index_encode(np.array([[0, 0, 1, 2] + [0] * 18 + [3]], np.uint8), 4)
        >>> p.tolist(), d.tolist(), c.tolist()
        ([0, 4], [2, 0, 15, 2], [1, 2, 0, 3])
    """
    if not isinstance(codes2d, np.ndarray) or codes2d.ndim != 2 or codes2d.dtype != np.uint8:
        raise CmzError("encoder_options", f"codes2d: expected a 2-D uint8 array; found {_describe(codes2d)}")
    r = _bits("index_bits", index_bits, MAX_INDEX_BITS)
    _order(order)
    m = codes2d if order == "row" else codes2d.T  # lines are the rows of m
    if m.flags.c_contiguous:
        n_lines, count, fill = m.shape[0], _k.count_row_entries, _k.fill_row_entries
    else:  # lines are the columns of a C-ordered matrix: no transposed copy
        m = np.ascontiguousarray(m.T)
        n_lines, count, fill = m.shape[1], _k.count_col_entries, _k.fill_col_entries
    pointers = np.zeros(n_lines + 1, np.int64)
    with _k.threads_for(m.size):
        count(m, r, pointers[1:])
        np.cumsum(pointers, out=pointers)
        n = int(pointers[-1])
        deltas = np.empty(n, np.uint8)
        entry_codes = np.empty(n, np.uint8)
        fill(m, r, pointers, deltas, entry_codes)
    return pointers.astype(pointer_dtype(n)), deltas, entry_codes


def count_fillers(entry_codes: np.ndarray) -> int:
    """Number of filler entries among valid entries (those with code 0).

    Args:
        entry_codes: the uint8 codes of entries that passed ``validate_entries``
            or came from ``relative_index_encode``.

    Returns:
        The filler count, for the encoder report.
    """
    return int(entry_codes.size - np.count_nonzero(entry_codes))


def validate_entries(pointers: np.ndarray, deltas: np.ndarray, entry_codes: np.ndarray, shape2d: tuple[int, int], index_bits: int, order: str, codebook_size: int) -> None:
    """Prove that entries are sound before any kernel trusts them.

    Checks, in order: the pointers (length ``n_lines + 1``, start at 0,
    non-decreasing, end at the entry count), then every line in one parallel
    pass: each delta < 2**r, each code < ``codebook_size``, code 0 only in a
    filler ``(2**r - 1, 0)``, and the positions covered (sum of delta + 1)
    within the line length.

    Args:
        pointers: 1-D integer array of cumulative entry counts.
        deltas: 1-D uint8 deltas.
        entry_codes: 1-D uint8 codes, as long as ``deltas``.
        shape2d: ``(rows, cols)`` of the matrix view.
        index_bits: r, 1..8.
        order: ``'row'`` or ``'col'``.
        codebook_size: number of codebook values (code 0 included), 1..256.

    Raises:
        CmzError: ``check='pointers'`` or ``check='entries'`` naming the first
            bad pointer, or the first bad line and entry;
            ``check='encoder_options'`` for a bad argument.
    """
    r = _bits("index_bits", index_bits, MAX_INDEX_BITS)
    n_lines, line_len = _lines(shape2d, order)
    if type(codebook_size) is not int or not 1 <= codebook_size <= 256:
        raise CmzError("encoder_options", f"codebook_size: expected an int in 1..256; found {codebook_size!r}")
    for name, a in (("deltas", deltas), ("entry_codes", entry_codes)):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype != np.uint8:
            raise CmzError("encoder_options", f"{name}: expected a 1-D uint8 array; found {_describe(a)}")
    if deltas.size != entry_codes.size:
        raise CmzError("entries", f"entries: expected as many codes as deltas ({deltas.size}); found {entry_codes.size}")
    p = _pointers(pointers, n_lines, deltas.size)
    status = np.zeros(n_lines, np.int8)
    with _k.threads_for(deltas.size + n_lines):
        _k.check_entries(p, deltas, entry_codes, line_len, r, codebook_size, status)
    bad = np.flatnonzero(status)
    if bad.size:
        line = int(bad[0])
        what, k, covered = _k.check_line(p, deltas, entry_codes, line, line_len, r, codebook_size)
        problem = _PROBLEMS[what].format(lim=1 << r, fill=(1 << r) - 1, d=deltas[k], c=entry_codes[k], ncodes=codebook_size, line_len=line_len, covered=covered)
        raise CmzError("entries", f"entries: {order} {line}, entry {k}: {problem}")


def relative_index_decode(pointers: np.ndarray, deltas: np.ndarray, entry_codes: np.ndarray, shape2d: tuple[int, int], index_bits: int, order: str) -> np.ndarray:
    """Reference decoder: entries back to the dense code matrix.

    Validates first (any uint8 code is accepted: there is no codebook here).

    Args:
        pointers, deltas, entry_codes: as returned by ``relative_index_encode``.
        shape2d: ``(rows, cols)`` of the matrix view.
        index_bits: r, 1..8.
        order: ``'row'`` or ``'col'``.

    Returns:
        The uint8 code matrix of shape ``shape2d``.

    Raises:
        CmzError: as ``validate_entries``.
    """
    validate_entries(pointers, deltas, entry_codes, shape2d, index_bits, order, 256)
    p = np.asarray(pointers, np.int64)
    counts = np.diff(p)
    line = np.repeat(np.arange(counts.size), counts)
    end = np.cumsum(deltas.astype(np.int64) + 1)  # one past each entry's position, counted over all lines
    line_start = np.concatenate(([0], end))[p[:-1]]
    pos = end - 1 - np.repeat(line_start, counts)
    out = np.zeros(tuple(shape2d), np.uint8)
    if order == "row":
        out[line, pos] = entry_codes
    else:
        out[pos, line] = entry_codes
    return out


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned values LSB-first at ``width`` bits each.

    Args:
        values: 1-D integer array, each in ``0..2**width - 1``.
        width: bits per value, 1..16.

    Returns:
        ``ceil(len(values) * width / 8)`` uint8 bytes; the unused high bits of
        the last byte are zero.

    Raises:
        CmzError: ``check='entries'`` for a value that does not fit,
            ``check='encoder_options'`` for a bad argument.

    Example:
        >>> pack_bits(np.array([1, 2, 3, 4, 5, 6, 7, 0]), 3).tobytes().hex()
        'd1581f'
    """
    w = _bits("width", width, MAX_PACK_WIDTH)
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype.kind not in "ui":
        raise CmzError("encoder_options", f"values: expected a 1-D integer array; found {_describe(values)}")
    if values.size and (values.min() < 0 or values.max() >= 1 << w):
        i = int(np.flatnonzero((values < 0) | (values >= 1 << w))[0])
        raise CmzError("entries", f"values[{i}]: expected 0..{(1 << w) - 1} ({w} bits); found {values[i]}")
    out = np.empty(_packed_size(values.size, w), np.uint8)
    with _k.threads_for(values.size):
        _k.pack_bits(values.astype(np.uint16, copy=False), w, 8 // math.gcd(w, 8), out)
    return out


def unpack_bits(buf, width: int, count: int) -> np.ndarray:
    """Unpack ``count`` LSB-first ``width``-bit values.

    Args:
        buf: bytes-like or 1-D uint8 array of exactly ``ceil(count * width / 8)``
            bytes, with zero padding bits.
        width: bits per value, 1..16.
        count: number of values.

    Returns:
        uint16 array of ``count`` values.

    Raises:
        CmzError: ``check='entries'`` for a buffer of the wrong length or with
            non-zero padding, ``check='encoder_options'`` for a bad argument.
    """
    w = _bits("width", width, MAX_PACK_WIDTH)
    b = _stream(buf, count, w)
    out = np.empty(count, np.uint16)
    with _k.threads_for(count):
        _k.unpack_bits(b, w, out)
    return out


def pack_entries(deltas: np.ndarray, codes: np.ndarray, index_bits: int, value_bits: int) -> np.ndarray:
    """Pack entries as ``delta | code << r`` fields of ``r + b`` bits (``packed`` coding).

    Args:
        deltas: 1-D integer deltas, each < 2**index_bits.
        codes: 1-D integer codes, each < 2**value_bits, as long as ``deltas``.
        index_bits: r, 1..8.
        value_bits: b, 1..8.

    Returns:
        The packed stream as uint8 (see ``pack_bits``).

    Raises:
        CmzError: ``check='entries'`` for a field that does not fit or
            mismatched lengths, ``check='encoder_options'`` for a bad argument.

    Example:
        >>> pack_entries(np.array([2, 0, 15, 2]), np.array([1, 2, 0, 3]), 4, 4).tobytes().hex()
        '12200f32'
    """
    r = _bits("index_bits", index_bits, MAX_INDEX_BITS)
    b = _bits("value_bits", value_bits, MAX_VALUE_BITS)
    for name, a, bits in (("deltas", deltas, r), ("codes", codes, b)):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "ui":
            raise CmzError("encoder_options", f"{name}: expected a 1-D integer array; found {_describe(a)}")
        if a.size and (a.min() < 0 or a.max() >= 1 << bits):
            i = int(np.flatnonzero((a < 0) | (a >= 1 << bits))[0])
            raise CmzError("entries", f"{name}[{i}]: expected 0..{(1 << bits) - 1} ({bits} bits); found {a[i]}")
    if deltas.size != codes.size:
        raise CmzError("entries", f"entries: expected as many codes as deltas ({deltas.size}); found {codes.size}")
    return pack_bits(deltas.astype(np.uint16) | (codes.astype(np.uint16) << r), r + b)


def unpack_entries(buf, n_entries: int, index_bits: int, value_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpack a ``packed`` entry stream into deltas and codes.

    Args:
        buf: bytes-like or 1-D uint8 array of exactly
            ``ceil(n_entries * (r + b) / 8)`` bytes, with zero padding bits.
        n_entries: number of entries.
        index_bits: r, 1..8.
        value_bits: b, 1..8.

    Returns:
        ``(deltas, codes)``, uint8 arrays of ``n_entries``; still to be
        checked with ``validate_entries``.

    Raises:
        CmzError: ``check='entries'`` for a buffer of the wrong length or with
            non-zero padding, ``check='encoder_options'`` for a bad argument.
    """
    r = _bits("index_bits", index_bits, MAX_INDEX_BITS)
    b = _bits("value_bits", value_bits, MAX_VALUE_BITS)
    stream = _stream(buf, n_entries, r + b)
    deltas = np.empty(n_entries, np.uint8)
    codes = np.empty(n_entries, np.uint8)
    with _k.threads_for(n_entries):
        _k.unpack_entries(stream, r, b, deltas, codes)
    return deltas, codes


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.ndim}-D {a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _bits(name: str, value, limit: int) -> int:
    if type(value) is not int or not 1 <= value <= limit:
        raise CmzError("encoder_options", f"{name}: expected an int in 1..{limit}; found {value!r}")
    return value


def _order(order) -> None:
    if order not in ORDERS:
        raise CmzError("encoder_options", f"order: expected one of {ORDERS}; found {order!r}")


def _lines(shape2d, order) -> tuple[int, int]:
    """(number of lines, line length) of a matrix view in ``order``."""
    _order(order)
    if not (isinstance(shape2d, (tuple, list)) and len(shape2d) == 2 and all(type(d) is int and d >= 0 for d in shape2d)):
        raise CmzError("encoder_options", f"shape2d: expected two non-negative ints; found {shape2d!r}")
    rows, cols = shape2d
    return (rows, cols) if order == "row" else (cols, rows)


def _pointers(pointers, n_lines: int, n_entries: int) -> np.ndarray:
    """Check a pointer array; return it as int64 for the kernels."""
    if not isinstance(pointers, np.ndarray) or pointers.ndim != 1 or pointers.dtype.kind not in "ui":
        raise CmzError("pointers", f"pointers: expected a 1-D integer array; found {_describe(pointers)}")
    if pointers.size != n_lines + 1:
        raise CmzError("pointers", f"pointers: expected {n_lines + 1} values (lines + 1); found {pointers.size}")
    if pointers[0] != 0:
        raise CmzError("pointers", f"pointers[0]: expected 0; found {pointers[0]}")
    down = np.flatnonzero(pointers[1:] < pointers[:-1])
    if down.size:
        i = int(down[0])
        raise CmzError("pointers", f"pointers: expected non-decreasing values; found pointers[{i + 1}] = {pointers[i + 1]} < pointers[{i}] = {pointers[i]}")
    if pointers[-1] != n_entries:
        raise CmzError("pointers", f"pointers[-1]: expected the entry count {n_entries}; found {pointers[-1]}")
    return pointers.astype(np.int64)  # exact: 0 <= pointers <= n_entries


def _packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


def _stream(buf, count, width: int) -> np.ndarray:
    """Check a packed stream's length and padding; return it as a uint8 array."""
    if type(count) is not int or count < 0:
        raise CmzError("encoder_options", f"count: expected a non-negative int; found {count!r}")
    if isinstance(buf, np.ndarray):
        if buf.ndim != 1 or buf.dtype != np.uint8:
            raise CmzError("encoder_options", f"buf: expected a 1-D uint8 array; found {_describe(buf)}")
        b = buf
    else:
        b = np.frombuffer(buf, np.uint8)
    expected = _packed_size(count, width)
    if b.size != expected:
        raise CmzError("entries", f"packed stream: expected {expected} bytes for {count} fields of {width} bits; found {b.size}")
    tail = count * width % 8
    if tail and b[-1] >> tail:
        raise CmzError("entries", f"packed stream: expected zero padding in the last byte's {8 - tail} high bits; found byte 0x{int(b[-1]):02x}")
    return b
