"""Relative-index entry kernels: encode with fillers, check, bit-pack.

The semantics are those of ``cmodel.codecs.entries`` (spec: "sparse" encoding and
"packed" coding); this module only holds the hot loops.  Callers validate
arguments first: nothing here checks bounds beyond what the loops need to
stay inside their arrays, and checks report status codes instead of raising.

An entry ``(delta, code)`` covers ``delta + 1`` positions of its line; a gap
of ``g`` zeros before a non-zero code needs ``g >> r`` fillers and leaves
``delta = g & (2**r - 1)``.
"""

import contextlib

import numba as nb
import numpy as np

# Column-order encoders walk the C-order matrix one row at a time over a block
# of columns, so each thread's per-column state (2 x 8 bytes per column) stays
# in L1/L2 and the matrix is read once, in order, with no transposed copy.
COL_BLOCK = 4096

# Below this many elements touched, a call runs on one thread: waking the
# worker threads costs more than it saves.  Measured on a loaded 2-core
# machine (omp layer): 0.2-15 ms per parallel launch, against ~6 us for a
# whole 12 x 40 encode on one thread; 2**18 bytes scan in ~0.2 ms.
PARALLEL_MIN_WORK = 1 << 18

# Status codes of check_line / check_entries, first failure of a line wins.
OK = 0
BAD_DELTA = 1  # delta >= 2**r
BAD_CODE = 2  # code >= codebook size
BAD_FILLER = 3  # code 0 with delta != 2**r - 1
OVERRUN = 4  # sum of (delta + 1) exceeds the line length


@contextlib.contextmanager
def threads_for(work):
    """Context: run the kernels called inside on one thread if ``work`` is small."""
    if work >= PARALLEL_MIN_WORK:
        yield
        return
    n = nb.get_num_threads()
    nb.set_num_threads(1)
    try:
        yield
    finally:
        nb.set_num_threads(n)


@nb.njit(parallel=True, cache=True)
def count_row_entries(codes, r, counts):
    """counts[i] = number of entries (fillers included) of row i."""
    rows, cols = codes.shape
    for i in nb.prange(rows):
        n = 0
        nxt = 0
        for j in range(cols):
            if codes[i, j] != 0:
                n += 1 + ((j - nxt) >> r)
                nxt = j + 1
        counts[i] = n


@nb.njit(parallel=True, cache=True)
def fill_row_entries(codes, r, pointers, deltas, ecodes):
    """Write the entries of row i at pointers[i]:pointers[i + 1]."""
    rows, cols = codes.shape
    fill = (1 << r) - 1
    for i in nb.prange(rows):
        k = pointers[i]
        nxt = 0
        for j in range(cols):
            c = codes[i, j]
            if c != 0:
                gap = j - nxt
                while gap > fill:
                    deltas[k] = fill
                    ecodes[k] = 0
                    k += 1
                    gap -= fill + 1
                deltas[k] = gap
                ecodes[k] = c
                k += 1
                nxt = j + 1


@nb.njit(parallel=True, cache=True)
def count_col_entries(codes, r, counts):
    """counts[j] = number of entries (fillers included) of column j."""
    rows, cols = codes.shape
    for b in nb.prange((cols + COL_BLOCK - 1) // COL_BLOCK):
        c0 = b * COL_BLOCK
        c1 = min(cols, c0 + COL_BLOCK)
        n = np.zeros(c1 - c0, np.int64)
        nxt = np.zeros(c1 - c0, np.int64)
        for i in range(rows):
            for j in range(c0, c1):
                if codes[i, j] != 0:
                    n[j - c0] += 1 + ((i - nxt[j - c0]) >> r)
                    nxt[j - c0] = i + 1
        counts[c0:c1] = n


@nb.njit(parallel=True, cache=True)
def fill_col_entries(codes, r, pointers, deltas, ecodes):
    """Write the entries of column j at pointers[j]:pointers[j + 1]."""
    rows, cols = codes.shape
    fill = (1 << r) - 1
    for b in nb.prange((cols + COL_BLOCK - 1) // COL_BLOCK):
        c0 = b * COL_BLOCK
        c1 = min(cols, c0 + COL_BLOCK)
        cur = pointers[c0:c1].copy()
        nxt = np.zeros(c1 - c0, np.int64)
        for i in range(rows):
            for j in range(c0, c1):
                c = codes[i, j]
                if c != 0:
                    t = j - c0
                    k = cur[t]
                    gap = i - nxt[t]
                    while gap > fill:
                        deltas[k] = fill
                        ecodes[k] = 0
                        k += 1
                        gap -= fill + 1
                    deltas[k] = gap
                    ecodes[k] = c
                    cur[t] = k + 1
                    nxt[t] = i + 1


@nb.njit(cache=True)
def check_line(pointers, deltas, codes, line, line_len, r, ncodes):
    """(status, first bad entry or -1, positions covered up to it) of one line."""
    fill = (1 << r) - 1
    covered = 0
    for k in range(pointers[line], pointers[line + 1]):
        d = np.int64(deltas[k])
        c = np.int64(codes[k])
        if d > fill:
            return BAD_DELTA, k, covered
        if c >= ncodes:
            return BAD_CODE, k, covered
        if c == 0 and d != fill:
            return BAD_FILLER, k, covered
        covered += d + 1
        if covered > line_len:
            return OVERRUN, k, covered
    return OK, np.int64(-1), covered


@nb.njit(parallel=True, cache=True)
def check_entries(pointers, deltas, codes, line_len, r, ncodes, status):
    """status[line] = check_line(...) status, for every line (pointers sound)."""
    for line in nb.prange(status.size):
        status[line] = check_line(pointers, deltas, codes, line, line_len, r, ncodes)[0]


@nb.njit(parallel=True, cache=True)
def pack_bits(values, width, group, out):
    """Pack values LSB-first at ``width`` bits into out (zeroed padding).

    ``group`` values fill a whole number of bytes (8 // gcd(width, 8)), so
    groups are written by independent threads without sharing a byte.
    """
    n = values.size
    group_bytes = group * width // 8
    for g in nb.prange((n + group - 1) // group):
        o = g * group_bytes
        acc = 0  # < 8 pending bits + one value: at most 23 bits
        nbits = 0
        for i in range(g * group, min(n, (g + 1) * group)):
            acc |= np.int64(values[i]) << nbits
            nbits += width
            while nbits >= 8:
                out[o] = acc & 0xFF
                acc >>= 8
                nbits -= 8
                o += 1
        if nbits > 0:
            out[o] = acc


@nb.njit(inline="always")
def _load(buf, bit, width):
    # A field of <= 16 bits starting at bit offset s < 8 spans <= 3 bytes.
    k = bit >> 3
    v = np.int64(buf[k])
    if k + 1 < buf.size:
        v |= np.int64(buf[k + 1]) << 8
    if k + 2 < buf.size:
        v |= np.int64(buf[k + 2]) << 16
    return (v >> (bit & 7)) & ((1 << width) - 1)


@nb.njit(parallel=True, cache=True)
def unpack_bits(buf, width, out):
    """out[i] = the i-th ``width``-bit field of the LSB-first stream buf."""
    for i in nb.prange(out.size):
        out[i] = _load(buf, i * width, width)


@nb.njit(parallel=True, cache=True)
def unpack_entries(buf, r, b, deltas, codes):
    """Split each (r + b)-bit field into its low r bits and high b bits."""
    w = r + b
    for i in nb.prange(deltas.size):
        e = _load(buf, i * w, w)
        deltas[i] = e & ((1 << r) - 1)
        codes[i] = e >> r
