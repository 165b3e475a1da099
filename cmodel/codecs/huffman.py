"""Canonical, length-limited Huffman streams in independently decodable chunks.

This is the ``huffman`` coding of DESIGN §3 (spec §6.4):

* Alphabet: uint8 symbols, ``n = 2**bits`` of them for ``bits`` in 1..8.  The
  table is one code length per symbol (uint8[n], 0 = unused, at most
  ``MAX_CODE_LENGTH``).
* Codes are assigned and bits packed exactly as DEFLATE: RFC 1951 §3.2.2
  (canonical codes: shorter codes first, then by symbol value) and §3.1.1
  (bytes filled from the least significant bit; each code is packed starting
  with its most significant bit).
* A valid table is a complete prefix code (Kraft sum exactly 1), with two
  exceptions: no used symbol (only for a stream of 0 symbols), and exactly one
  used symbol, whose length MUST be 1: each symbol is then the single bit 0.
* A stream of N symbols is cut into ``ceil(N / chunk_symbols)`` chunks of
  ``chunk_symbols`` symbols (the last may be shorter).  Each chunk starts on a
  byte boundary, and ends with the fewest bytes that hold its codes; the
  padding bits after its last code MUST be zero.  ``offsets`` (uint64,
  ``n_chunks + 1`` values) gives each chunk's first byte, starts at 0, never
  decreases and ends at the stream's byte length.

Decoding checks the table and the offsets before it allocates or reads, then
decodes the chunks in parallel with ``cmodel.kernels.huffman``, which reports
bad chunk data per chunk; every problem raises :class:`CmzError` with check
``"data"``.  Bad arguments to the encoder raise check ``"input"``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numba
import numpy as np

from ..format.constants import DEFAULT_CHUNK_SYMBOLS, MAX_CODE_LENGTH
from ..errors import CmzError
from ..kernels import huffman as _k
# code_lengths works in int64: a package weighs at most max_length times the
# total frequency, so 12 * 2**58 < 2**63 cannot overflow.
MAX_TOTAL_FREQ = 2**58
# uint8 symbols: alphabets of 2**1 .. 2**8 symbols.
MAX_ALPHABET_BITS = 8

assert _k.PEEK_BITS == MAX_CODE_LENGTH

_STATUS_TEXT = {
    _k.OVERRUN: "codes running past the chunk's last byte (truncated chunk)",
    _k.TRAILING_BYTES: "unused trailing bytes after the last code",
    _k.PADDING: "non-zero padding bits after the last code",
}


def _as_lengths(lengths, check: str) -> np.ndarray:
    a = np.asarray(lengths)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise CmzError(check, f"code lengths: expected a 1-D integer array; found {a.ndim}-D {a.dtype}")
    n = a.size
    if n < 2 or n > 2**MAX_ALPHABET_BITS or n & (n - 1):
        raise CmzError(check, f"code lengths: expected one per symbol of a 2**bits alphabet, bits in 1..{MAX_ALPHABET_BITS}; found {n} lengths")
    bad = np.flatnonzero((a < 0) | (a > MAX_CODE_LENGTH))
    if bad.size:
        s = int(bad[0])
        raise CmzError(check, f"code length of symbol {s}: expected 0..{MAX_CODE_LENGTH} (MAX_CODE_LENGTH); found {int(a[s])}")
    return a.astype(np.uint8)


def _check_lengths(lengths, n_symbols: int | None, check: str) -> np.ndarray:
    a = _as_lengths(lengths, check)
    used = np.flatnonzero(a)
    if used.size == 0:
        if n_symbols:
            raise CmzError(check, f"code lengths: expected at least one used symbol for a stream of {n_symbols} symbols; found none")
        return a
    if used.size == 1:
        if a[used[0]] != 1:
            raise CmzError(check, f"code lengths: expected length 1 for the only used symbol {int(used[0])}; found {int(a[used[0]])}")
        return a
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - a[used].astype(np.int64))))
    full = 1 << MAX_CODE_LENGTH
    if kraft != full:
        kind = "over-subscribed" if kraft > full else "incomplete"
        raise CmzError(check, f"code lengths: expected a complete prefix code (Kraft sum {full}/{full}); found an {kind} code (Kraft sum {kraft}/{full})")
    return a


def validate_lengths(lengths: np.ndarray, n_symbols: int) -> None:
    """Check that ``lengths`` is a valid table for a stream of ``n_symbols``.

    Args:
        lengths: one code length per symbol of a ``2**bits`` alphabet.
        n_symbols: the number of symbols in the stream coded with it.

    Raises:
        CmzError: check ``"data"``: the alphabet size is not ``2**bits`` for
            bits in 1..8, a length is above ``MAX_CODE_LENGTH``, the code is
            over-subscribed or incomplete, a single used symbol's length is
            not 1, or no symbol is used for a non-empty stream.
    """
    _check_lengths(lengths, n_symbols, "data")


def code_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal length-limited code lengths (package-merge) for ``freqs``.

    Deterministic: symbols are ordered by (frequency, symbol value) and ties
    between a symbol and a package go to the symbol.  When the limit does not
    bind, the total code length equals that of an unlimited Huffman code.

    Args:
        freqs: non-negative integer count per symbol (1-D).
        max_length: the longest code allowed, 1..``MAX_CODE_LENGTH``.

    Returns:
        uint8 array of code lengths, 0 for symbols with frequency 0.  One used
        symbol gets length 1; no used symbol gives all zeros.

    Raises:
        CmzError: check ``"input"``: ``freqs`` is not a 1-D array of
            non-negative integers, ``max_length`` is out of range, more
            than ``2**max_length`` symbols are used, or the frequencies sum
            to more than ``MAX_TOTAL_FREQ``.

    Example:
        >>> code_lengths(np.array([5, 1, 1, 2]))
        array([1, 3, 3, 2], dtype=uint8)
    """
    f = np.asarray(freqs)
    if f.ndim != 1 or f.dtype.kind not in "iu" or (f.size and f.min() < 0):
        raise CmzError("input", f"freqs: expected a 1-D array of non-negative integers; found {f.ndim}-D {f.dtype}")
    if not (isinstance(max_length, (int, np.integer)) and 1 <= max_length <= MAX_CODE_LENGTH):
        raise CmzError("input", f"max_length: expected 1..{MAX_CODE_LENGTH}; found {max_length!r}")
    out = np.zeros(f.size, np.uint8)
    used = np.flatnonzero(f)
    m = used.size
    if m > 2**max_length:
        raise CmzError("input", f"freqs: expected at most 2**{max_length} used symbols for max_length {max_length}; found {m}")
    if m <= 1:
        out[used] = 1
        return out
    if int(f.sum()) > MAX_TOTAL_FREQ:
        raise CmzError("input", f"freqs: expected a total of at most 2**58 (MAX_TOTAL_FREQ); found {int(f.sum())}")
    # Package-merge ("coin collector"): level 0 is the symbols sorted by
    # (frequency, symbol); each next level merges them with packages (sums of
    # adjacent pairs) of the level before, symbols first on ties.  The 2m - 2
    # lightest items of the last level are selected; a selected package
    # selects the two items it was made of.  A symbol's code length is the
    # number of its selected copies.  No level needs more than 2m - 2 items.
    keep = 2 * m - 2
    order = np.lexsort((used, f[used]))
    leaf_w = f[used][order].astype(np.int64)
    leaf_sym = used[order]
    levels = [(leaf_w, leaf_sym)]  # (weights, symbol or -1 for a package)
    for _ in range(max_length - 1):
        w, _ = levels[-1]
        pairs = w[: w.size // 2 * 2].reshape(-1, 2).sum(axis=1)
        merged_w = np.concatenate([leaf_w, pairs])
        merged_sym = np.concatenate([leaf_sym, np.full(pairs.size, -1)])
        pick = np.argsort(merged_w, kind="stable")[:keep]
        levels.append((merged_w[pick], merged_sym[pick]))
    take = keep
    for _, sym in reversed(levels):
        chosen = sym[:take]
        np.add.at(out, chosen[chosen >= 0], 1)
        take = 2 * int(np.count_nonzero(chosen < 0))
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical codes RFC 1951 §3.2.2 assigns to ``lengths``.

    Args:
        lengths: one code length per symbol (a valid table, see module doc).

    Returns:
        uint16 array: the code of each symbol as a number whose most
        significant of ``lengths[s]`` bits is sent first; 0 for unused symbols.

    Raises:
        CmzError: check ``"data"``: ``lengths`` is not a valid table.

    Example:
        >>> canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8))  # RFC 1951 example
        array([ 2,  3,  4,  5,  6,  0, 14, 15], dtype=uint16)
    """
    a = _check_lengths(lengths, None, "data")
    bl_count = np.bincount(a, minlength=MAX_CODE_LENGTH + 1)
    bl_count[0] = 0
    next_code = [0] * (MAX_CODE_LENGTH + 1)
    code = 0
    for bits in range(1, MAX_CODE_LENGTH + 1):
        code = (code + int(bl_count[bits - 1])) << 1
        next_code[bits] = code
    codes = np.zeros(a.size, np.uint16)
    for s in np.flatnonzero(a):
        codes[s] = next_code[a[s]]
        next_code[a[s]] += 1
    return codes


def _reversed_codes(lengths: np.ndarray) -> np.ndarray:
    """Each code with its bits reversed, the order they are written LSB first
    (RFC 1951 §3.1.1), as uint64."""
    codes = canonical_codes(lengths)
    rev = np.zeros(lengths.size, np.uint64)
    for s in np.flatnonzero(lengths):
        rev[s] = int(f"{int(codes[s]):0{int(lengths[s])}b}"[::-1], 2)
    return rev


@lru_cache(maxsize=64)
def _decode_tables(lengths_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``single`` and ``multi`` tables of ``cmodel.kernels.huffman`` for
    a valid table of at least two used symbols."""
    lengths = np.frombuffer(lengths_bytes, np.uint8)
    rev = _reversed_codes(lengths)
    single = np.zeros(1 << MAX_CODE_LENGTH, np.uint16)
    for s in np.flatnonzero(lengths):
        single[int(rev[s]) :: 1 << int(lengths[s])] = s | (int(lengths[s]) << 8)
    # Up to three codes per 12-bit peek: the k-th code is taken when it is
    # decided by the peeked bits left after the first k - 1.
    idx = np.arange(1 << MAX_CODE_LENGTH, dtype=np.uint32)
    sym = []
    nbits = np.zeros_like(idx)
    nsym = np.zeros_like(idx)
    fits = np.ones(idx.size, bool)
    for _ in range(3):
        t = single[idx >> nbits].astype(np.uint32)
        fits &= nbits + (t >> 8) <= MAX_CODE_LENGTH
        sym.append(np.where(fits, t & 255, 0))
        nbits += np.where(fits, t >> 8, 0).astype(np.uint32)
        nsym += fits
    multi = (sym[0] | (sym[1] << 8) | (sym[2] << 16) | (nbits << 24) | (nsym << 28)).astype(np.uint32)
    return _readonly(single), _readonly(multi)


def encode(symbols: np.ndarray, lengths: np.ndarray, chunk_symbols: int = DEFAULT_CHUNK_SYMBOLS) -> tuple[bytes, np.ndarray]:
    """Huffman-code ``symbols`` into chunks.

    Args:
        symbols: uint8 1-D array; every symbol must have a code.
        lengths: the table, e.g. from :func:`code_lengths` on the symbols'
            frequencies.
        chunk_symbols: symbols per chunk (>= 1).

    Returns:
        ``(stream, offsets)``: the stream bytes and the uint64 chunk byte
        offsets (``ceil(N / chunk_symbols) + 1`` values).

    Raises:
        CmzError: check ``"input"``: bad argument types, an invalid table, or
            a symbol without a code.

    Example:
        >>> s = np.array([0, 1, 1, 3], np.uint8)
        >>> stream, offsets = encode(s, code_lengths(np.bincount(s, minlength=4)))
        >>> decode(stream, offsets, code_lengths(np.bincount(s, minlength=4)), 4, 65536)
        array([0, 1, 1, 3], dtype=uint8)
    """
    if not isinstance(symbols, np.ndarray) or symbols.dtype != np.uint8 or symbols.ndim != 1:
        raise CmzError("input", f"symbols: expected a 1-D uint8 array; found {type(symbols).__name__} {getattr(symbols, 'dtype', '')}")
    if not isinstance(chunk_symbols, (int, np.integer)) or chunk_symbols < 1:
        raise CmzError("input", f"chunk_symbols: expected an int >= 1; found {chunk_symbols!r}")
    n = symbols.size
    a = _check_lengths(lengths, n, "input")
    counts = np.bincount(symbols, minlength=256)
    has_code = np.zeros(256, bool)
    has_code[: a.size] = a > 0
    missing = np.flatnonzero((counts > 0) & ~has_code)
    if missing.size:
        s = int(missing[0])
        raise CmzError("input", f"symbols: expected every symbol to have a code; found symbol {s} ({int(counts[s])} times) with none")
    chunk = min(int(chunk_symbols), max(n, 1))
    n_chunks = -(-n // chunk)
    bits = np.empty(n_chunks, np.int64)
    symbols = _readonly(symbols)
    _k.chunk_bits(symbols, a, chunk, bits)
    offsets = np.zeros(n_chunks + 1, np.uint64)
    np.cumsum((bits + 7) >> 3, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), np.uint8)
    _k.encode_chunks(symbols, _reversed_codes(a), a, chunk, offsets, out)
    return out.tobytes(), offsets


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view (a copy only if not contiguous), so the
    kernels see one array type whatever the caller passed."""
    a = np.ascontiguousarray(a).view()
    a.flags.writeable = False
    return a


def _as_count(x, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise CmzError("data", f"{what}: expected an int; found {type(x).__name__}")
    return int(x)


def decode(stream, offsets: np.ndarray, lengths: np.ndarray, n_symbols: int, chunk_symbols: int, threads: int | None = None) -> np.ndarray:
    """Decode a chunked Huffman stream, checking everything before decoding.

    Args:
        stream: the stream bytes (bytes-like or a uint8 array).
        offsets: the ``ceil(n_symbols / chunk_symbols) + 1`` chunk byte offsets.
        lengths: the table.
        n_symbols: symbols in the stream.
        chunk_symbols: symbols per chunk.
        threads: threads for the chunk-parallel decode (default: Numba's
            current setting).

    Returns:
        uint8 array of ``n_symbols`` symbols.

    Raises:
        CmzError: check ``"data"``: an invalid table; offsets of the wrong
            count, not starting at 0, decreasing, or not ending at the stream
            length; a chunk with more symbols than 8 per byte; a chunk whose
            codes run past its end, that has unused trailing bytes, non-zero
            padding bits, or (one-symbol table) a 1 bit.  Check ``"input"``:
            ``threads`` out of range.
    """
    return _decode(stream, offsets, lengths, n_symbols, chunk_symbols, threads, None)


def _decode(stream, offsets, lengths, n_symbols, chunk_symbols, threads, parallel: bool | None) -> np.ndarray:
    """:func:`decode`; ``parallel`` None picks the kernel (the serial one for
    one thread or one group of chunks), True/False forces it (benchmarks)."""
    if threads is not None and not (isinstance(threads, (int, np.integer)) and 1 <= threads <= numba.config.NUMBA_NUM_THREADS):
        raise CmzError("input", f"threads: expected 1..{numba.config.NUMBA_NUM_THREADS}; found {threads!r}")
    v = _check_stream(stream, offsets, lengths, n_symbols, chunk_symbols)
    if v.n == 0:
        return np.zeros(0, np.uint8)
    if v.used.size == 1:
        return _decode_one_symbol(v.buf, v.offsets, v.counts, int(v.used[0]))
    buf, off, a, n, chunk, n_chunks = v.buf, v.offsets, v.lengths, v.n, v.chunk, v.n_chunks
    single, multi = _decode_tables(a.tobytes())
    out = np.empty(n, np.uint8)
    status = np.zeros(n_chunks, np.uint8)
    args = (buf, off, multi, single, np.uint64(chunk), out, status)
    before = numba.get_num_threads()
    if parallel is None:
        parallel = (threads or before) > 1 and n_chunks > _k.LANES
    if not parallel:
        _k.decode_chunks_serial(*args)
    else:
        numba.set_num_threads(threads or before)
        try:
            _k.decode_chunks(*args)
        finally:
            numba.set_num_threads(before)
    _check_status(status, v.counts, v.nbytes)
    return out


class _Checked(NamedTuple):
    """A stream that passed :func:`_check_stream`."""

    buf: np.ndarray  # read-only uint8 stream
    offsets: np.ndarray  # uint64[n_chunks + 1]
    lengths: np.ndarray  # uint8, the valid table
    used: np.ndarray  # the symbols with a code
    n: int  # symbols
    chunk: int  # symbols per chunk
    n_chunks: int
    counts: np.ndarray  # uint64 symbols per chunk
    nbytes: np.ndarray  # uint64 bytes per chunk


def _check_stream(stream, offsets, lengths, n_symbols, chunk_symbols) -> _Checked:
    """Every check :func:`decode` makes before decoding (shared with the CUDA
    decoder, ``cmodel.kernels.cuda.huffman``); raises CmzError ``"data"``."""
    if isinstance(stream, np.ndarray):
        if stream.dtype != np.uint8 or stream.ndim != 1:
            raise CmzError("data", f"stream: expected a 1-D uint8 array; found {stream.ndim}-D {stream.dtype}")
        buf = _readonly(stream)
    else:
        buf = _readonly(np.frombuffer(stream, np.uint8))
    n = _as_count(n_symbols, "n_symbols")
    chunk = _as_count(chunk_symbols, "chunk_symbols")
    if n < 0 or chunk < 1:
        raise CmzError("data", f"expected n_symbols >= 0 and chunk_symbols >= 1; found {n} and {chunk}")
    a = _check_lengths(lengths, n, "data")
    n_chunks = -(-n // chunk)
    off = np.asarray(offsets)
    if off.ndim != 1 or off.dtype.kind not in "iu" or off.size != n_chunks + 1:
        raise CmzError("data", f"chunk offsets: expected {n_chunks + 1} integers ({n} symbols in chunks of {chunk}); found {off.size} of {off.dtype}")
    if off.dtype.kind == "i" and off.min() < 0:
        raise CmzError("data", f"chunk offsets: expected non-negative values; found {int(off.min())}")
    off = off.astype(np.uint64)
    if off[0] != 0:
        raise CmzError("data", f"chunk offsets: expected the first to be 0; found {int(off[0])}")
    down = np.flatnonzero(off[1:] < off[:-1])
    if down.size:
        i = int(down[0])
        raise CmzError("data", f"chunk offsets: expected non-decreasing values; found {int(off[i + 1])} after {int(off[i])} (chunk {i})")
    if off[-1] != buf.size:
        raise CmzError("data", f"chunk offsets: expected the last to be the stream length {buf.size}; found {int(off[-1])}")
    nbytes = np.diff(off)
    counts = np.full(n_chunks, chunk, np.uint64)
    if n_chunks:
        counts[-1] = n - (n_chunks - 1) * chunk
    over = np.flatnonzero(counts > nbytes * np.uint64(8))
    if over.size:
        i = int(over[0])
        raise CmzError("data", f"chunk {i}: expected at most 8 symbols per byte ({8 * int(nbytes[i])} for {int(nbytes[i])} bytes); found {int(counts[i])} symbols")
    return _Checked(buf, off, a, np.flatnonzero(a), n, chunk, n_chunks, counts, nbytes)


def _check_status(status: np.ndarray, counts: np.ndarray, nbytes: np.ndarray) -> None:
    """Raise CmzError ``"data"`` for the first chunk whose decode status is not OK."""
    bad = np.flatnonzero(status)
    if bad.size:
        i = int(bad[0])
        raise CmzError("data", f"chunk {i}: expected {int(counts[i])} codes filling its {int(nbytes[i])} bytes up to zero padding; found {_STATUS_TEXT[int(status[i])]}")


def decode_device(stream, offsets, lengths, n_symbols: int, chunk_symbols: int, *, cuda_stream=0):
    """:func:`decode` on a CUDA device (the ``cuda`` extra): the same checks on
    the host, then every chunk decoded by
    :func:`cmodel.kernels.cuda.huffman.decode_chunks`.

    Args:
        stream, offsets, lengths, n_symbols, chunk_symbols: as for
            :func:`decode` (``stream`` on the host: the checks read it for a
            one-symbol table).
        cuda_stream: a numba CUDA stream, or 0 (the default stream).

    Returns:
        A uint8 numba device array of ``n_symbols`` symbols.

    Raises:
        CmzError: check ``"data"``, exactly as :func:`decode` (the status of
            each chunk is read back from the device).
    """
    from numba import cuda

    from ..kernels.cuda import huffman as _kc

    s = cuda_stream
    v = _check_stream(stream, offsets, lengths, n_symbols, chunk_symbols)
    if v.n == 0:
        return cuda.device_array(0, np.uint8, stream=s)
    if v.used.size == 1:
        return cuda.to_device(_decode_one_symbol(v.buf, v.offsets, v.counts, int(v.used[0])), stream=s)
    single, multi = _decode_tables(v.lengths.tobytes())
    out = cuda.device_array(v.n, np.uint8, stream=s)
    status = np.zeros(v.n_chunks, np.uint8)  # copied back by decode_chunks
    _kc.decode_chunks(v.buf, v.offsets, multi, single, v.chunk, out, status, cuda_stream=s)
    _check_status(status, v.counts, v.nbytes)
    return out


def _decode_one_symbol(buf: np.ndarray, off: np.ndarray, counts: np.ndarray, symbol: int) -> np.ndarray:
    """A one-symbol table codes each symbol as the bit 0: each chunk is
    ``ceil(count / 8)`` zero bytes."""
    need = (counts + np.uint64(7)) >> np.uint64(3)
    nbytes = np.diff(off)
    wrong = np.flatnonzero(nbytes != need)
    if wrong.size:
        i = int(wrong[0])
        what = _STATUS_TEXT[_k.OVERRUN if nbytes[i] < need[i] else _k.TRAILING_BYTES]
        raise CmzError("data", f"chunk {i}: expected {int(need[i])} bytes for {int(counts[i])} one-bit codes; found {int(nbytes[i])}, {what}")
    nz = np.flatnonzero(buf)
    if nz.size:
        p = int(nz[0])
        i = int(np.searchsorted(off, p, side="right")) - 1
        bit = (p - int(off[i])) * 8 + ((int(buf[p]) & -int(buf[p])).bit_length() - 1)
        if bit < counts[i]:
            raise CmzError("data", f"chunk {i}: expected only 0 bits (the one used symbol's code is the bit 0); found a 1 bit at bit {bit}")
        raise CmzError("data", f"chunk {i}: expected zero padding bits after the last code; found a 1 bit at bit {bit}")
    return np.full(int(counts.sum()), symbol, np.uint8)


def entropy_bits(freqs: np.ndarray) -> float:
    """The zeroth-order entropy bound of a stream, in bits.

    Args:
        freqs: non-negative count per symbol.

    Returns:
        ``sum(f * log2(N / f))`` over the non-zero counts, N their total; the
        fewest bits any code of one symbol at a time can average.
    """
    f = np.asarray(freqs, np.float64)
    f = f[f > 0]
    if f.size == 0:
        return 0.0
    return float(np.sum(f * np.log2(f.sum() / f)))
