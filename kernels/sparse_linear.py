"""Sparse codebook GEMV/GEMM on packed relative-index entries:
``Y = X @ W.T + bias`` (spec §6.3, §6.4), in row order (CSR-like) and in
EIE's column order (CSC-like, skipping zero activations).

Codebook GEMV/GEMM on packed weights: ``Y = X @ W.T + bias`` (spec §6.2-§6.4).

``W[i, j] = scales[i] * codebook[code(i, j)]`` is never expanded: the kernels
read the packed fields themselves and apply the row scale once per output
(``y = s * (C x)``), then the bias.  Sparse tensors store relative-index
entries with fillers (§6.3; a filler has code 0 and ``codebook[0] == 0.0``,
so it needs no branch); dense codebook tensors store one b-bit code per
element, row after row (§6.2).  Fields are packed LSB-first (§6.4); widths
8 and 16 are loaded directly as a byte / u16, every other width 1..16 by bit
extraction.

Public entry point: :func:`sparse_matmul` (plain arrays in, ``out`` written
and returned).  Like the rest of this package it trusts its data: the reader
validates entries (every position inside its line, codes inside the
codebook) before a kernel runs; the wrapper only checks argument shapes and
dtypes, which cost O(1).

Sums are float32 with reassociation allowed: results stay within ~1e-6 of a
float64 reference relative to ``|X| @ |W|.T`` for the sizes tested.
Non-finite inputs propagate, but not always as a dense product would:
pruned weights are never multiplied (0 * inf is not formed), fillers are
(0 * inf = NaN in row order), and column order skips zero activations.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from ._common import _epilogue, _fill_bias, _operands, _readonly, _vector
from .entries import threads_for
from .simd import _FAST, _U0, _U1, _U2, _U3, _U4, _U5, _U6, _U7, _U8, _entries4, _entry, _fast_end, _load_u32, _prefetch_entries

__all__ = ["sparse_matmul"]


# With a batch, X is transposed and its batch padded with zeros to a multiple
# of LANES: one walk of a line's entries serves LANES batch rows, each
# weight decoded once and applied to all of them from contiguous X values.
# The kernels spell the eight lanes out (row order keeps their sums in
# registers).  Larger batches walk the entries once per group.
LANES = 8


@nb.njit(inline="always")
def _positions4(e0, e1, e2, e3, m):
    """Offsets of four consecutive entries from the current position, and the
    step past the last: a prefix tree, so the loop-carried chain is one add
    per four entries instead of four."""
    d0 = e0 & m
    s01 = d0 + (e1 & m)
    s012 = s01 + (e2 & m)
    s0123 = s01 + ((e2 & m) + (e3 & m))
    return d0, s01 + _U1, s012 + _U2, s0123 + _U3, s0123 + _U4




@nb.njit(parallel=True, fastmath=_FAST, cache=True)
def _sparse_row(buf, w, r, n_entries, pointers, codebook, scales, bias, xt, acc, out):
    """Row order: out[b, i] = row i's entries against X.

    ``xt`` is X transposed ([cols, padded batch], flat; for batch 1 simply
    x); ``acc`` only gives the padded batch size.  One kernel for both batch
    cases: each parallel kernel costs ~1-2 s of compilation.
    """
    ru = np.uint64(r)
    m = (_U1 << ru) - _U1
    batch, rows = out.shape
    fast = _fast_end(buf, w, n_entries)
    for i in nb.prange(rows):
        k = np.uint64(pointers[i])
        end = np.uint64(pointers[i + 1])
        pos = _U0
        if batch == 1:
            # Four accumulators and positions from a prefix tree, so neither
            # the float sum nor the position chain serialises the loop.
            fe = min(end, fast)
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            while k + _U4 <= fe:
                e0, e1, e2, e3 = _entries4(buf, k, w)
                p0, p1, p2, p3, step = _positions4(e0, e1, e2, e3, m)
                a0 += codebook[e0 >> ru] * xt[pos + p0]
                a1 += codebook[e1 >> ru] * xt[pos + p1]
                a2 += codebook[e2 >> ru] * xt[pos + p2]
                a3 += codebook[e3 >> ru] * xt[pos + p3]
                pos += step
                k += _U4
            while k < end:
                e = _entry(buf, k, w)
                pos += e & m
                a0 += codebook[e >> ru] * xt[pos]
                pos += _U1
                k += _U1
            out[0, i] = _epilogue((a0 + a1) + (a2 + a3), scales, bias, i)
        else:
            bu = np.uint64(acc.shape[1])  # the batch padded to whole lane groups
            for g in range(0, batch, LANES):
                # LANES batch rows, their sums in registers.
                k = np.uint64(pointers[i])
                pos = _U0
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                while k < end:
                    e = _entry(buf, k, w)
                    pos += e & m
                    v = codebook[e >> ru]
                    o = pos * bu + np.uint64(g)
                    a0 += v * xt[o]
                    a1 += v * xt[o + _U1]
                    a2 += v * xt[o + _U2]
                    a3 += v * xt[o + _U3]
                    a4 += v * xt[o + _U4]
                    a5 += v * xt[o + _U5]
                    a6 += v * xt[o + _U6]
                    a7 += v * xt[o + _U7]
                    pos += _U1
                    k += _U1
                sums = (a0, a1, a2, a3, a4, a5, a6, a7)
                for b in range(min(LANES, batch - g)):
                    out[g + b, i] = _epilogue(sums[b], scales, bias, i)


# --- sparse: column order (CSC-like, EIE) ----------------------------------------
#
# Each column's entries scatter into the outputs, so two threads working on
# different columns would race on the same outputs.  Every part of the work
# owns a private accumulator (rows floats per batch row: 16 KB for 4096
# rows, in L1) over a run of active columns holding an equal share of their
# entries, and one pass over the rows sums the accumulators and applies
# scale and bias.
# Atomics would cost more than this reduction, and splitting by rows would make
# each thread walk every column's entries.


@nb.njit(inline="always")
def _first_line_at(pointers, lines, target):
    """Smallest line l with pointers[l] >= target (binary search)."""
    lo = 0
    hi = lines
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(pointers[mid]) < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


# Whole-byte entries (width 8) with r <= 6 take a faster batch-1 loop, where
# the read-modify-write of the accumulator makes every instruction count:
# * a 256-entry table maps an entry byte straight to its weight (no code
#   extraction);
# * a u32 load holds four entries; (v & D) * 0x01010101 (D: the r index bits
#   of every byte) gives in byte i the sum of deltas 0..i, so entry i sits at
#   pos + byte i + i, the "+ i" folding into the address.  A byte may not
#   carry into the next: 4 * (2**r - 1) <= 255, i.e. r <= 6.
# Measured on 4096 x 4096, 90% pruned, b = r = 4, half the inputs zero, one
# thread: 1.1-1.4x faster than the general loop in two runs (the same ideas
# made the row order slower: its sums live in registers, and the extra live
# values spill).
# Column order also prefetches the entries of the active column two ahead:
# the skipped columns break the entry stream into runs too short for the
# hardware prefetcher.  Measured with the caches flushed before each call
# (4096 x 4096 as above, 2 threads): 1.29 -> 0.97-1.01 ms.
_PREFETCH_COLUMNS = 2
_W1 = np.uint32(0x01010101)
_B8 = np.uint32(8)
_B16 = np.uint32(16)
_B24 = np.uint32(24)
_BFF = np.uint32(0xFF)
_BYTE_PATH_MAX_R = 6


def _byte_table(buf, w, r, codebook):
    """float32[256]: the weight of every entry byte (codebook[byte >> r]) when
    the entries are whole bytes with r <= 6, else an empty array."""


@overload(_byte_table, inline="always")
def _ov_byte_table(buf, w, r, codebook):
    if isinstance(w, types.NoneType) and buf.dtype == types.uint8:

        def impl(buf, w, r, codebook):
            if r > _BYTE_PATH_MAX_R:
                return np.empty(0, np.float32)
            t = np.empty(256, np.float32)
            for e in range(256):
                t[e] = codebook[e >> r]
            return t

        return impl
    return lambda buf, w, r, codebook: np.empty(0, np.float32)


@nb.njit(inline="always")
def _col_bytes4(a, table, xj, pos, v, s):
    """Four byte entries ``v`` with in-byte delta sums ``s`` into ``a``."""
    a[pos + (s & _BFF)] += table[v & _BFF] * xj
    a[pos + ((s >> _B8) & _BFF) + _U1] += table[(v >> _B8) & _BFF] * xj
    a[pos + ((s >> _B16) & _BFF) + _U2] += table[(v >> _B16) & _BFF] * xj
    a[pos + (s >> _B24) + _U3] += table[v >> _B24] * xj
    return pos + np.uint64(s >> _B24) + _U4


@nb.njit(parallel=True, fastmath=_FAST, cache=True)
def _sparse_col(buf, w, r, n_entries, pointers, codebook, scales, bias, x2, xt, parts, out):
    """Column order: out = X against the columns' entries, through per-part
    accumulators (see above) that one pass then sums, scales and biases.

    ``xt`` is X transposed ([cols, padded batch], flat); a column is skipped
    when it is zero in every batch row.  ``parts``: how many parts to
    split the work into at most (two per thread: with one, two threads ran
    10-25% slower than on the same columns in halves, measured here on 4096
    x 4096; the cause is not known).  The accumulators and the reduction
    live in this one call: allocating them and calling a second kernel from
    Python cost ~20 us a call.  (The thread count comes from Python:
    ``get_num_threads`` inside a kernel keeps it out of the compile cache.)
    """
    ru = np.uint64(r)
    m = (_U1 << ru) - _U1
    batch, cols = x2.shape
    rows = out.shape[1]
    padded = xt.size // cols  # the batch padded to whole lane groups
    bu = np.uint64(padded)
    fast = _fast_end(buf, w, n_entries)
    # The active columns, appended without a branch (with half the columns
    # zero at random a branch per column mispredicts half the time), and the
    # running count of their entries, so that every part gets an equal share
    # of the work whichever columns are zero.
    active = np.empty(cols, np.int64)
    work = np.empty(cols + 1, np.uint64)  # integers: a float sum's latency would chain the loop
    work[0] = 0
    n = 0
    for j in range(cols):
        nz = x2[0, j] != 0
        for b in range(1, batch):
            nz |= x2[b, j] != 0
        active[n] = j
        work[n + 1] = work[n] + (np.uint64(pointers[j + 1]) - np.uint64(pointers[j]))
        n += np.int64(nz)
    parts = max(1, min(parts, n))
    acc = np.empty((parts, rows * padded), np.float32)
    table = _byte_table(buf, w, r, codebook)
    for t in nb.prange(parts):
        a = acc[t]
        for i in range(a.size):
            a[i] = 0.0
        q0 = _first_line_at(work, n, np.float64(work[n]) * t / parts)
        q1 = _first_line_at(work, n, np.float64(work[n]) * (t + 1) / parts) if t + 1 < parts else n
        if batch == 1:
            x = x2[0]
            dm = _W1 * np.uint32((1 << r) - 1)
            for q in range(q0, q1):
                j = active[q]
                xj = x[j]
                k = np.uint64(pointers[j])
                end = np.uint64(pointers[j + 1])
                fe = min(end, fast)
                pos = _U0
                if q + _PREFETCH_COLUMNS < q1:
                    jn = active[q + _PREFETCH_COLUMNS]
                    _prefetch_entries(buf, w, np.uint64(pointers[jn]), np.uint64(pointers[jn + 1]))
                if table.size:
                    while k + _U8 <= fe:
                        v0 = _load_u32(buf, k)
                        v1 = _load_u32(buf, k + _U4)
                        pos = _col_bytes4(a, table, xj, pos, v0, np.uint32((v0 & dm) * _W1))
                        pos = _col_bytes4(a, table, xj, pos, v1, np.uint32((v1 & dm) * _W1))
                        k += _U8
                while k + _U4 <= fe:
                    e0, e1, e2, e3 = _entries4(buf, k, w)
                    p0, p1, p2, p3, step = _positions4(e0, e1, e2, e3, m)
                    p0 += pos
                    p1 += pos
                    p2 += pos
                    p3 += pos
                    a[p0] += codebook[e0 >> ru] * xj
                    a[p1] += codebook[e1 >> ru] * xj
                    a[p2] += codebook[e2 >> ru] * xj
                    a[p3] += codebook[e3 >> ru] * xj
                    pos += step
                    k += _U4
                while k < end:
                    e = _entry(buf, k, w)
                    pos += e & m
                    a[pos] += codebook[e >> ru] * xj
                    pos += _U1
                    k += _U1
        else:
            for g in range(0, padded, LANES):
                # One group of LANES batch rows per walk of the entries.
                for q in range(q0, q1):
                    j = active[q]
                    k = np.uint64(pointers[j])
                    end = np.uint64(pointers[j + 1])
                    pos = _U0
                    xb = np.uint64(j) * bu + np.uint64(g)
                    x0 = xt[xb]
                    x1 = xt[xb + _U1]
                    x2_ = xt[xb + _U2]
                    x3 = xt[xb + _U3]
                    x4 = xt[xb + _U4]
                    x5 = xt[xb + _U5]
                    x6 = xt[xb + _U6]
                    x7 = xt[xb + _U7]
                    while k < end:
                        e = _entry(buf, k, w)
                        pos += e & m
                        v = codebook[e >> ru]
                        o = pos * bu + np.uint64(g)
                        a[o] += v * x0
                        a[o + _U1] += v * x1
                        a[o + _U2] += v * x2_
                        a[o + _U3] += v * x3
                        a[o + _U4] += v * x4
                        a[o + _U5] += v * x5
                        a[o + _U6] += v * x6
                        a[o + _U7] += v * x7
                        pos += _U1
                        k += _U1
    _reduce_parts(acc.reshape(parts, rows, padded), scales, bias, out)


@nb.njit(fastmath=_FAST, cache=True)
def _reduce_parts(acc, scales, bias, out):
    """out[b, i] = sum_t acc[t, i, b], then the row scale and bias.

    On the calling thread, in loops that vectorise: even a batch-64 GEMV's
    reduction is ~0.1 ms against tens of ms for the kernel."""
    parts, rows = acc.shape[:2]
    for b in range(out.shape[0]):  # acc's batch may be padded
        y = out[b]
        for i in range(rows):
            y[i] = acc[0, i, b]
        for t in range(1, parts):
            for i in range(rows):
                y[i] += acc[t, i, b]
        if scales.size:
            for i in range(rows):
                y[i] *= scales[i]
        if bias.size:
            for i in range(rows):
                y[i] += bias[i]


def _pointers(a):
    """Pointers as read-only uint32 (uint16 widened: a few KB, and one
    specialisation less) or uint64 (also for signed ints, non-negative when
    valid)."""
    if a.dtype.kind == "i":
        a = a.astype(np.uint64)
    elif a.dtype.itemsize < 4 or not a.dtype.isnative:
        a = a.astype(np.uint32 if a.dtype.itemsize <= 4 else np.uint64)
    return _readonly(a)


def sparse_matmul(entries, n_entries, width, index_bits, pointers, codebook, scales, bias, x, out, order):
    """``out = x @ W.T + bias`` for a packed sparse codebook matrix (spec §6.3, §6.4).

    Row order walks each row's entries (``pos += delta``; add
    ``codebook[code] * x[pos]``; ``pos += 1``), one output per row, rows in
    parallel.  Column order (EIE) walks only the columns whose activation is
    non-zero (in any batch row) and scatters into private accumulators, two
    parts of the work per thread, split so that each gets an equal share of
    the active columns' entries.  With a batch, each entry's weight is
    loaded once and applied to every batch row (X is transposed once so the
    batch is contiguous).

    Args:
        entries: uint8 stream of ``n_entries`` packed fields of ``width`` bits,
            ``delta | code << index_bits``, LSB-first.
        n_entries: stored entries, fillers included.
        width: ``index_bits + bits``, 2..16 (8 and 16 load whole bytes / u16).
        index_bits: r, 1..8.
        pointers: ``rows + 1`` (row order) or ``cols + 1`` (col order)
            cumulative entry counts (unsigned as files store them; uint16
            and signed ints are converted).
        codebook: float32[2**bits], ``codebook[0] == 0.0``.
        scales: float32[rows] row scales, or None.
        bias: float32[rows], or None.
        x: C-contiguous float32 [batch, cols] (or [cols]).
        out: C-contiguous float32 [batch, rows] (or [rows]), overwritten.
        order: ``"row"`` or ``"col"``, as the entries were stored.

    Returns:
        ``out``.

    Raises:
        ValueError: inconsistent shapes, dtypes or sizes.  The entries
            themselves are trusted (validated by the reader, spec §6.6).

    Example:
        >>> c = f.read_compressed("fc.weight")                   # doctest: +SKIP
        >>> sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers,
        ...               c.codebook, c.scales, None, x, out, c.order)
    """
    x2, out2, batch, rows, cols = _operands(x, out, "cols")
    if order not in ("row", "col"):
        raise ValueError(f"order: expected 'row' or 'col'; found {order!r}")
    if not (isinstance(width, (int, np.integer)) and isinstance(index_bits, (int, np.integer)) and 1 <= index_bits <= 8 and index_bits + 1 <= width <= 16):
        raise ValueError(f"width, index_bits: expected 1 <= index_bits <= 8 and index_bits < width <= 16; found {width}, {index_bits}")
    width, index_bits, n_entries = int(width), int(index_bits), int(n_entries)
    entries = np.asarray(entries)
    if entries.dtype != np.uint8 or entries.ndim != 1 or entries.size * 8 < n_entries * width or n_entries < 0:
        raise ValueError(f"entries: expected a 1-D uint8 stream of at least {-(-max(n_entries, 0) * width // 8)} bytes; found {entries.dtype}{list(entries.shape)}")
    lines = rows if order == "row" else cols
    pointers = np.asarray(pointers)
    if pointers.dtype.kind not in "ui" or pointers.shape != (lines + 1,):
        raise ValueError(f"pointers: expected integers [{lines + 1}] ({order} order); found {pointers.dtype}{list(pointers.shape)}")
    codebook = np.asarray(codebook)
    if codebook.dtype != np.float32 or codebook.shape != (1 << (width - index_bits),):
        raise ValueError(f"codebook: expected float32[{1 << (width - index_bits)}]; found {codebook.dtype}{list(codebook.shape)}")
    scales = _vector("scales", scales, rows)
    bias = _vector("bias", bias, rows)
    if batch == 0 or rows == 0:
        return out
    if cols == 0 or n_entries == 0:
        _fill_bias(out2, bias)
        return out
    entries = _readonly(entries)
    if width == 8:
        buf, w = entries, None
    elif width == 16:
        buf, w = entries[: 2 * n_entries].view("<u2"), None
    else:
        buf, w = entries, width
    args = (buf, w, index_bits, n_entries, _pointers(pointers), codebook)
    # X transposed so a batch is contiguous (for batch 1, x itself), the
    # batch padded with zeros to whole groups of LANES.
    padded = 1 if batch == 1 else -(-batch // LANES) * LANES
    if batch == 1:
        xt = x2.reshape(-1)
    else:
        xt = np.zeros((cols, padded), np.float32)
        xt[:, :batch] = x2.T
        xt = xt.reshape(-1)
    with threads_for(n_entries * batch):
        if order == "row":
            acc = np.empty((0, padded), np.float32)  # gives the padded batch
            _sparse_row(*args, scales, bias, xt, acc, out2)
            return out
        _sparse_col(*args, scales, bias, x2, xt, 2 * nb.get_num_threads(), out2)
    return out
