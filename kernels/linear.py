"""Codebook GEMV/GEMM on packed weights: ``Y = X @ W.T + bias`` (spec §6.2-§6.4).

``W[i, j] = scales[i] * codebook[code(i, j)]`` is never expanded: the kernels
read the packed fields themselves and apply the row scale once per output
(``y = s * (C x)``), then the bias.  Sparse tensors store relative-index
entries with fillers (§6.3; a filler has code 0 and ``codebook[0] == 0.0``,
so it needs no branch); dense codebook tensors store one b-bit code per
element, row after row (§6.2).  Fields are packed LSB-first (§6.4); widths
8 and 16 are loaded directly as a byte / u16, every other width 1..16 by bit
extraction.

Public entry points (plain arrays in, ``out`` written and returned):
:func:`sparse_matmul` and :func:`codebook_matmul`.  Like the rest of this
package they trust their data: the reader validates entries (every position
inside its line, codes inside the codebook) before a kernel runs; the
wrappers only check argument shapes and dtypes, which cost O(1).

Sums are float32 with reassociation allowed (``_FAST``): results stay
within ~1e-6 of a float64 reference relative to ``|X| @ |W|.T`` for the
sizes tested.  Non-finite inputs propagate, but not always as a dense
product would: pruned weights are never multiplied (0 * inf is not formed),
fillers are (0 * inf = NaN in row order), and column order skips zero
activations.

Dense codebook AVX-512 path (``SIMD == "avx512"``): x86 AVX-512 in-register
table lookups, written as LLVM IR through Numba intrinsics.
* 4-bit: the 16-entry codebook sits in one zmm register; 16 code bytes are
  widened to dwords, split into low and high nibbles and looked up with
  ``vpermps`` (32 weights per 2 lookups), multiplied with x pre-arranged per
  block of 32 columns as [16 even | 16 odd].
* 8-bit: the codebook's 256 float32 values are split into 4 byte planes of
  256 bytes (4 zmm each); ``vpermi2b`` looks up 64 codes in a 128-byte half
  per instruction, a mask on bit 7 picks the half, and byte/word unpacks
  reassemble 64 float32 weights in a fixed lane order that x is permuted to
  once per call.  That is ~26 instructions per 64 weights against ~64+ for a
  gather loop.
Measured (``cmodel.bench_linear``) on a 2-core AMD EPYC (Zen 5) VM on a
shared host, 4096 x 4096, batch 1, 2 threads: 4-bit 0.27-0.39 ms, 6-8x
numpy's dense float32 GEMV; 8-bit 0.54 ms back to back (2.9x) and 1.0-1.3
ms interleaved with numpy, whose 67 MB evict the 16 MB of codes from L3
(1.5-1.8x); the portable scalar loops reach ~0.5x at either width.

AVX2 path (``SIMD == "avx2"``, CPUs with AVX2 and FMA but no AVX-512, e.g.
AMD Zen 2/3): 4-bit codes only.  The codebook's 16 float32 values are split
into 4 byte planes of 16 bytes, each one ``vpshufb`` table; 16 code bytes
give a 32-byte index vector (low nibbles, then high nibbles), 4 ``vpshufb``
look up the 4 bytes of 32 weights, and the same byte/word unpacks as the
8-bit AVX-512 path reassemble them as 4 x 8 float32 in a fixed lane order
(x is permuted to it once per call).  A 256-entry table has no such
in-register lookup on AVX2, so 8-bit codes take the portable loops there.

The portable loops are the fallback everywhere else, and the tests check
that every SIMD path the CPU has agrees with them.  ``CMODEL_SIMD`` forces
a level (``avx512``, ``avx2``, ``portable``; the CPU must have it);
``auto`` (default) picks the best one the CPU has, published as
:data:`SIMD` (and :data:`SIMD_OK` per level).
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import binding as _llvm  # numba's own LLVM binding
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from .entries import threads_for

__all__ = ["SIMD", "codebook_matmul", "sparse_matmul"]

# --- SIMD selection -----------------------------------------------------------

SIMD_ENV = "CMODEL_SIMD"
SIMD_CHOICES = ("auto", "avx512", "avx2", "portable")
# Per level, the CPU features its lookups need.  AVX-512: vpermps/vpermi2ps
# need F; vpermi2b needs VBMI; the byte mask and the byte/word unpacks on zmm
# need BW.  AVX2: vpshufb and the byte/word unpacks on ymm, FMA3.
_SIMD_FEATURES = {
    "avx512": frozenset({"avx512f", "avx512bw", "avx512vbmi"}),
    "avx2": frozenset({"avx2", "fma"}),
    "portable": frozenset(),
}
_SIMD_BEST_FIRST = ("avx512", "avx2", "portable")


def _target_features() -> set[str]:
    """Features of the CPU Numba compiles for (NUMBA_CPU_NAME may differ from the host)."""
    if config.CPU_NAME:
        return {f[1:] for f in (config.CPU_FEATURES or "").split(",") if f.startswith("+")}
    return {name for name, on in _llvm.get_host_cpu_features().items() if on}


_FEATURES = _target_features()
#: Per SIMD level, whether the target CPU has what it needs.
SIMD_OK = {level: need <= _FEATURES for level, need in _SIMD_FEATURES.items()}
_AVX512_OK = SIMD_OK["avx512"]
_AVX2_OK = SIMD_OK["avx2"]


def _lacks(level: str) -> str:
    return ", ".join(sorted(_SIMD_FEATURES[level] - _FEATURES))


def _choose_simd() -> str:
    want = os.environ.get(SIMD_ENV, "auto")
    if want not in SIMD_CHOICES:
        raise ValueError(f"{SIMD_ENV}: expected one of {', '.join(SIMD_CHOICES)}; found {want!r}")
    if want == "auto":
        return next(level for level in _SIMD_BEST_FIRST if SIMD_OK[level])
    if not SIMD_OK[want]:
        raise RuntimeError(f"{SIMD_ENV}={want}: the target CPU lacks {_lacks(want)}")
    return want


#: The dense codebook path in use: ``"avx512"``, ``"avx2"`` or ``"portable"``.
SIMD = _choose_simd()

# Float flags of every kernel: reassociation (and contraction into FMAs) lets
# LLVM split sums over several accumulators and vectorise them; no
# finite-math assumptions, so NaN and inf in the inputs propagate.
_FAST = {"reassoc", "contract", "nsz", "arcp"}

# --- packed fields --------------------------------------------------------------

# All index arithmetic in the hot loops is uint64: Numba adds a negative-index
# fix-up to every signed index, and mixing signed with unsigned gives floats.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_U4 = np.uint64(4)
_U5 = np.uint64(5)
_U6 = np.uint64(6)
_U7 = np.uint64(7)
_U8 = np.uint64(8)
_U14 = np.uint64(14)
_U15 = np.uint64(15)
_U16 = np.uint64(16)


def _unaligned_load(bits):
    """An intrinsic ``load(buf, byte)``: the little-endian unsigned ``bits``-bit
    integer at ``buf[byte]`` (uint8 array), one unaligned load."""
    result = getattr(types, f"uint{bits}")

    @intrinsic
    def load(typingctx, buf, byte):
        def codegen(context, builder, sig, args):
            ary, i = args
            ptr = builder.gep(context.make_array(sig.args[0])(context, builder, ary).data, [i])
            v = builder.load(builder.bitcast(ptr, ir.IntType(bits).as_pointer()), align=1)
            return v if np.little_endian else builder.bswap(v)

        return result(buf, byte), codegen

    return load


_load_u64 = _unaligned_load(64)
_load_u32 = _unaligned_load(32)


@intrinsic
def _prefetch(typingctx, buf, i):
    """Hint the cache line holding ``buf[i]`` into L1 (never faults)."""

    def codegen(context, builder, sig, args):
        ary, k = args
        ptr = builder.gep(context.make_array(sig.args[0])(context, builder, ary).data, [k])
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(buf, i), codegen


def _prefetch_entries(buf, w, k0, k1):
    """Hint the cache lines of entries ``k0 .. k1 - 1`` into L1."""


@overload(_prefetch_entries, inline="always")
def _ov_prefetch_entries(buf, w, k0, k1):
    if isinstance(w, types.NoneType):
        step = np.uint64(512 // buf.dtype.bitwidth)  # fields per 64-byte line

        def impl(buf, w, k0, k1):
            i = k0
            while i < k1:
                _prefetch(buf, i)
                i += step

        return impl

    def impl(buf, w, k0, k1):
        i = (k0 * np.uint64(w)) >> _U3
        end = (k1 * np.uint64(w)) >> _U3
        while i <= end:
            _prefetch(buf, i)
            i += np.uint64(64)

    return impl


@nb.njit(inline="always")
def _field_at(buf, bit, w):
    # A field of <= 16 bits at bit offset s < 8 spans <= 3 bytes; guarded at the end.
    k = bit >> _U3
    n = np.uint64(buf.size)
    if k + _U8 <= n:
        v = _load_u64(buf, k)
    else:
        v = np.uint64(buf[k])
        if k + _U1 < n:
            v |= np.uint64(buf[k + _U1]) << _U8
        if k + _U2 < n:
            v |= np.uint64(buf[k + _U2]) << _U16
    return (v >> (bit & _U7)) & ((_U1 << w) - _U1)


# Field access: ``w`` None means ``buf`` holds one field per element (uint8 at
# width 8, uint16 at width 16); an integer ``w`` means bit extraction from a
# uint8 stream.  Dispatch is by type, so each kernel compiles to one loop.


def _entry(buf, k, w):
    """Field ``k`` as uint64."""


def _entries4(buf, k, w):
    """Fields ``k .. k+3`` as four uint64 (only below ``_fast_end``)."""


def _fast_end(buf, w, n):
    """Fields below this index may be read by ``_entries4`` without a guard."""


@overload(_entry)
def _ov_entry(buf, k, w):
    if isinstance(w, types.NoneType):
        return lambda buf, k, w: np.uint64(buf[k])
    return lambda buf, k, w: _field_at(buf, k * np.uint64(w), np.uint64(w))


@overload(_entries4)
def _ov_entries4(buf, k, w):
    if isinstance(w, types.NoneType):
        return lambda buf, k, w: (np.uint64(buf[k]), np.uint64(buf[k + _U1]), np.uint64(buf[k + _U2]), np.uint64(buf[k + _U3]))

    def impl(buf, k, w):
        # Four fields of <= 14 bits after a shift < 8 fit one u64 load; at
        # 15 bits a second load takes the last two.
        wu = np.uint64(w)
        m = (_U1 << wu) - _U1
        b0 = k * wu
        v0 = _load_u64(buf, b0 >> _U3) >> (b0 & _U7)
        if wu <= _U14:
            return v0 & m, (v0 >> wu) & m, (v0 >> (wu + wu)) & m, (v0 >> (_U3 * wu)) & m
        b1 = b0 + _U2 * wu
        v1 = _load_u64(buf, b1 >> _U3) >> (b1 & _U7)
        return v0 & m, (v0 >> wu) & m, v1 & m, (v1 >> wu) & m

    return impl


@overload(_fast_end)
def _ov_fast_end(buf, w, n):
    if isinstance(w, types.NoneType):
        return lambda buf, w, n: np.uint64(n)

    def impl(buf, w, n):
        # k + 4 <= end  =>  the load at bit (k + 2) * w ends inside buf.
        if buf.size < 8:
            return _U0
        return np.uint64((8 * (buf.size - 8)) // w + 2)

    return impl


# --- sparse: row order (CSR-like) ----------------------------------------------

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


@nb.njit(inline="always")
def _epilogue(acc, scales, bias, i):
    if scales.size:
        acc *= scales[i]
    if bias.size:
        acc += bias[i]
    return acc


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


# --- dense codebook: AVX-512 intrinsics -------------------------------------------

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_V16F = ir.VectorType(_F32, 16)
_V16I = ir.VectorType(_I32, 16)
_V16B = ir.VectorType(_I8, 16)
_V32S = ir.VectorType(_I16, 32)
_V64B = ir.VectorType(_I8, 64)
_V8F = ir.VectorType(_F32, 8)
_V16S = ir.VectorType(_I16, 16)
_V32B = ir.VectorType(_I8, 32)

NIBBLE_BLOCK = 32  # columns per 4-bit SIMD step (both levels): 16 code bytes
BYTE_BLOCK = 64  # columns per 8-bit SIMD step: 64 code bytes
_NIBBLE_ROWS = 4  # rows per 4-bit dot call (x loads shared)
_BYTE_ROWS = 2  # rows per 8-bit dot call (16 zmm hold the byte planes)


def _splat(ty, v):
    return ir.Constant(ty, [ir.Constant(ty.element, v)] * ty.count)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _vload(builder, base, offset, vty, align):
    return builder.load(builder.bitcast(builder.gep(base, [offset]), vty.as_pointer()), align=align)


def _vstore(builder, value, base, offset):
    builder.store(value, builder.bitcast(builder.gep(base, [offset]), value.type.as_pointer()), align=4)


def _hsum(builder, v):
    n = v.type.count
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h, n))))
        v = builder.fadd(lo, hi)
        n = h
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _loop(builder, n, init, body):
    """Emit ``for k in range(n): state = body(k, state)``; return the final state."""
    entry = builder.block
    loop = builder.append_basic_block("simd_loop")
    done = builder.append_basic_block("simd_done")
    zero = ir.Constant(_I64, 0)
    builder.cbranch(builder.icmp_signed(">", n, zero), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(_I64)
    k.add_incoming(zero, entry)
    phis = []
    for v in init:
        p = builder.phi(v.type)
        p.add_incoming(v, entry)
        phis.append(p)
    new = body(k, phis)
    k1 = builder.add(k, ir.Constant(_I64, 1))
    last = builder.block
    k.add_incoming(k1, last)
    for p, v in zip(phis, new):
        p.add_incoming(v, last)
    builder.cbranch(builder.icmp_signed("<", k1, n), loop, done)
    builder.position_at_end(done)
    out = []
    for v0, v in zip(init, new):
        p = builder.phi(v0.type)
        p.add_incoming(v0, entry)
        p.add_incoming(v, last)
        out.append(p)
    return out


def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _trap(builder):
    # Compiled on a CPU without AVX-512: the dispatcher never selects this
    # path there, and x86 intrinsics would not compile, so the body is a trap.
    builder.call(_fn(builder, "llvm.trap", ir.VoidType(), []), [])


def _nibble_weights(builder, codes, offset, cbv):
    """32 weights of 16 code bytes: (even columns, odd columns)."""
    perm = _fn(builder, "llvm.x86.avx512.permvar.sf.512", _V16F, [_V16F, _V16I])
    z = builder.zext(_vload(builder, codes, offset, _V16B, 1), _V16I)
    lo = builder.call(perm, [cbv, builder.and_(z, _splat(_V16I, 15))])
    hi = builder.call(perm, [cbv, builder.lshr(z, _splat(_V16I, 4))])
    return lo, hi


def _unpack(builder, a, b, elem_bits, high):
    # x86 unpack{l,h} within each 128-bit lane, as a plain shufflevector.
    n = a.type.count
    per = 128 // elem_bits
    half = per // 2
    mask = []
    for lane in range(n // per):
        for e in range(half):
            src = lane * per + e + (half if high else 0)
            mask += [src, n + src]
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, n), mask))


def _bytes_to_floats(builder, planes):
    """Four vectors of byte planes 0..3 -> four float vectors in the lane order
    of ``_plane_order`` (two rounds of in-lane unpacks)."""
    n = planes[0].type.count
    vs = ir.VectorType(_I16, n // 2)
    vf = ir.VectorType(_F32, n // 4)
    w01l = builder.bitcast(_unpack(builder, planes[0], planes[1], 8, False), vs)
    w01h = builder.bitcast(_unpack(builder, planes[0], planes[1], 8, True), vs)
    w23l = builder.bitcast(_unpack(builder, planes[2], planes[3], 8, False), vs)
    w23h = builder.bitcast(_unpack(builder, planes[2], planes[3], 8, True), vs)
    quads = [
        _unpack(builder, w01l, w23l, 16, False),
        _unpack(builder, w01l, w23l, 16, True),
        _unpack(builder, w01h, w23h, 16, False),
        _unpack(builder, w01h, w23h, 16, True),
    ]
    return [builder.bitcast(q, vf) for q in quads]


def _plane_order(n: int) -> np.ndarray:
    """Byte position (0..n-1) of each float lane that ``_bytes_to_floats``
    makes of n-byte planes: vector q holds, per 128-bit lane L, positions
    16 L + 4 q .. 16 L + 4 q + 3."""
    q, lane, e = np.meshgrid(np.arange(4), np.arange(n // 16), np.arange(4), indexing="ij")
    return (16 * lane + 4 * q + e).reshape(-1)


def _byte_weights(builder, codes, offset, tabs):
    """64 weights of 64 code bytes, as 4 vectors in the lane order of ``_byte_order``."""
    perm = _fn(builder, "llvm.x86.avx512.vpermi2var.qi.512", _V64B, [_V64B, _V64B, _V64B])
    c = _vload(builder, codes, offset, _V64B, 1)
    high = builder.icmp_signed("<", c, ir.Constant(_V64B, None))  # code >= 128
    planes = []
    for p in range(4):
        lo = builder.call(perm, [tabs[4 * p], c, tabs[4 * p + 1]])
        hi = builder.call(perm, [tabs[4 * p + 2], c, tabs[4 * p + 3]])
        planes.append(builder.select(high, hi, lo))
    return _bytes_to_floats(builder, planes)


def _nibble_weights_avx2(builder, codes, offset, tabs):
    """32 weights of 16 code bytes (AVX2), as 4 x 8 floats in the lane order
    of ``_nibble_order_avx2``: the low nibbles (even columns) fill the low
    128-bit half of a 32-byte index vector, the high nibbles the high half,
    and ``vpshufb`` looks each up in the 16-entry table of one byte plane of
    the codebook (``tabs[p]``, the 16 bytes repeated in both halves)."""
    shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", _V32B, [_V32B, _V32B])
    c = _vload(builder, codes, offset, _V16B, 1)
    lo = builder.and_(c, _splat(_V16B, 15))
    hi = builder.lshr(c, _splat(_V16B, 4))
    idx = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
    return _bytes_to_floats(builder, [builder.call(shuf, [tabs[p], idx]) for p in range(4)])


def _byte_order() -> np.ndarray:
    """Column (0..63) of each weight lane that ``_byte_weights`` produces."""
    return _plane_order(64)


def _nibble_order() -> np.ndarray:
    """Column (0..31) of each weight lane that ``_nibble_weights`` produces."""
    return np.concatenate([np.arange(0, 32, 2), np.arange(1, 32, 2)])


def _nibble_order_avx2() -> np.ndarray:
    """Column (0..31) of each weight lane that ``_nibble_weights_avx2`` produces:
    index byte p < 16 is the low nibble of code byte p (column 2 p), p >= 16
    the high nibble of byte p - 16 (column 2 (p - 16) + 1)."""
    p = _plane_order(32)
    return np.where(p < 16, 2 * p, 2 * (p - 16) + 1)


def _byte_tables(builder, planes):
    p = builder.bitcast(planes, _V64B.as_pointer())
    return [builder.load(builder.gep(p, [ir.Constant(_I64, t)]), align=1) for t in range(16)]


@intrinsic
def _nibble_dot(typingctx, codes, base, stride, nblk, codebook, xq):
    """Dot products of 4 rows of 4-bit codes (bytes ``base + r * stride``,
    ``nblk`` blocks of 16 bytes) with x in ``_nibble_order`` per block."""
    sig = types.UniTuple(types.float32, _NIBBLE_ROWS)(codes, base, stride, nblk, codebook, xq)

    def codegen(context, builder, signature, args):
        codes_, base_, stride_, nblk_, cb_, xq_ = args
        zero = ir.Constant(_V16F, None)
        if not _AVX512_OK:
            _trap(builder)
            return context.make_tuple(builder, signature.return_type, [ir.Constant(_F32, 0.0)] * _NIBBLE_ROWS)
        cp = _data(context, builder, signature.args[0], codes_)
        cbv = builder.load(builder.bitcast(_data(context, builder, signature.args[4], cb_), _V16F.as_pointer()), align=4)
        xp = _data(context, builder, signature.args[5], xq_)
        fma = _fn(builder, "llvm.fma.v16f32", _V16F, [_V16F, _V16F, _V16F])

        def body(k, accs):
            xoff = builder.mul(k, ir.Constant(_I64, 32))
            xe = _vload(builder, xp, xoff, _V16F, 4)
            xo = _vload(builder, xp, builder.add(xoff, ir.Constant(_I64, 16)), _V16F, 4)
            coff = builder.add(base_, builder.mul(k, ir.Constant(_I64, 16)))
            new = []
            for r in range(_NIBBLE_ROWS):
                off = builder.add(coff, builder.mul(stride_, ir.Constant(_I64, r)))
                lo, hi = _nibble_weights(builder, cp, off, cbv)
                new.append(builder.call(fma, [lo, xe, accs[2 * r]]))
                new.append(builder.call(fma, [hi, xo, accs[2 * r + 1]]))
            return new

        accs = _loop(builder, nblk_, [zero] * (2 * _NIBBLE_ROWS), body)
        sums = [_hsum(builder, builder.fadd(accs[2 * r], accs[2 * r + 1])) for r in range(_NIBBLE_ROWS)]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


def _nibble_tables(builder, planes):
    # planes: 4 x 32 bytes, byte plane p of the 16 codebook floats twice.
    p = builder.bitcast(planes, _V32B.as_pointer())
    return [builder.load(builder.gep(p, [ir.Constant(_I64, t)]), align=1) for t in range(4)]


@intrinsic
def _nibble_dot_avx2(typingctx, codes, base, stride, nblk, planes, xq):
    """As ``_nibble_dot`` with AVX2 lookups: 4 rows, x in ``_nibble_order_avx2``
    per block, ``planes`` as ``_nibble_tables`` reads them."""
    sig = types.UniTuple(types.float32, _NIBBLE_ROWS)(codes, base, stride, nblk, planes, xq)

    def codegen(context, builder, signature, args):
        codes_, base_, stride_, nblk_, planes_, xq_ = args
        if not _AVX2_OK:
            _trap(builder)
            return context.make_tuple(builder, signature.return_type, [ir.Constant(_F32, 0.0)] * _NIBBLE_ROWS)
        cp = _data(context, builder, signature.args[0], codes_)
        tabs = _nibble_tables(builder, _data(context, builder, signature.args[4], planes_))
        xp = _data(context, builder, signature.args[5], xq_)
        fma = _fn(builder, "llvm.fma.v8f32", _V8F, [_V8F, _V8F, _V8F])

        def body(k, accs):
            xoff = builder.mul(k, ir.Constant(_I64, 32))
            xs = [_vload(builder, xp, builder.add(xoff, ir.Constant(_I64, 8 * q)), _V8F, 4) for q in range(4)]
            coff = builder.add(base_, builder.mul(k, ir.Constant(_I64, 16)))
            new = []
            for r in range(_NIBBLE_ROWS):
                ws = _nibble_weights_avx2(builder, cp, builder.add(coff, builder.mul(stride_, ir.Constant(_I64, r))), tabs)
                a = accs[r]
                for q in range(4):
                    a = builder.call(fma, [ws[q], xs[q], a])
                new.append(a)
            return new

        accs = _loop(builder, nblk_, [ir.Constant(_V8F, None)] * _NIBBLE_ROWS, body)
        return context.make_tuple(builder, signature.return_type, [_hsum(builder, a) for a in accs])

    return sig, codegen


@intrinsic
def _byte_dot(typingctx, codes, base, stride, nblk, planes, xq):
    """Dot products of 2 rows of 8-bit codes (bytes ``base + r * stride``,
    ``nblk`` blocks of 64) with x in ``_byte_order`` per block."""
    sig = types.UniTuple(types.float32, _BYTE_ROWS)(codes, base, stride, nblk, planes, xq)

    def codegen(context, builder, signature, args):
        codes_, base_, stride_, nblk_, planes_, xq_ = args
        zero = ir.Constant(_V16F, None)
        if not _AVX512_OK:
            _trap(builder)
            return context.make_tuple(builder, signature.return_type, [ir.Constant(_F32, 0.0)] * _BYTE_ROWS)
        cp = _data(context, builder, signature.args[0], codes_)
        tabs = _byte_tables(builder, _data(context, builder, signature.args[4], planes_))
        xp = _data(context, builder, signature.args[5], xq_)
        fma = _fn(builder, "llvm.fma.v16f32", _V16F, [_V16F, _V16F, _V16F])

        def body(k, accs):
            off = builder.mul(k, ir.Constant(_I64, 64))
            xs = [_vload(builder, xp, builder.add(off, ir.Constant(_I64, 16 * q)), _V16F, 4) for q in range(4)]
            new = []
            for r in range(_BYTE_ROWS):
                ws = _byte_weights(builder, cp, builder.add(builder.add(base_, off), builder.mul(stride_, ir.Constant(_I64, r))), tabs)
                a0 = builder.call(fma, [ws[0], xs[0], accs[2 * r]])
                a1 = builder.call(fma, [ws[1], xs[1], accs[2 * r + 1]])
                new.append(builder.call(fma, [ws[2], xs[2], a0]))
                new.append(builder.call(fma, [ws[3], xs[3], a1]))
            return new

        accs = _loop(builder, nblk_, [zero] * (2 * _BYTE_ROWS), body)
        sums = [_hsum(builder, builder.fadd(accs[2 * r], accs[2 * r + 1])) for r in range(_BYTE_ROWS)]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


def _decode_intrinsic(ok, tables, weights, code_bytes, doc):
    """An intrinsic ``(codes, base, nblk, table, tile, toff)`` writing the
    weights of ``nblk`` blocks of ``code_bytes`` code bytes from ``base`` at
    ``tile[toff:]`` in the lane order of ``weights`` (which returns a block's
    weights as vectors); ``tables`` loads what ``weights`` looks codes up in
    from the ``table`` array; ``ok`` says whether the CPU has the
    instructions."""

    def decode(typingctx, codes, base, nblk, table, tile, toff):
        sig = types.void(codes, base, nblk, table, tile, toff)

        def codegen(context, builder, signature, args):
            codes_, base_, nblk_, table_, tile_, toff_ = args
            if not ok:
                _trap(builder)
                return context.get_dummy_value()
            cp = _data(context, builder, signature.args[0], codes_)
            tabs = tables(builder, _data(context, builder, signature.args[3], table_))
            tp = _data(context, builder, signature.args[4], tile_)

            def body(k, state):
                ws = weights(builder, cp, builder.add(base_, builder.mul(k, ir.Constant(_I64, code_bytes))), tabs)
                block = sum(v.type.count for v in ws)
                o = builder.add(toff_, builder.mul(k, ir.Constant(_I64, block)))
                n = 0
                for v in ws:
                    _vstore(builder, v, tp, builder.add(o, ir.Constant(_I64, n)))
                    n += v.type.count
                return state

            _loop(builder, nblk_, [], body)
            return context.get_dummy_value()

        return sig, codegen

    decode.__doc__ = doc
    return intrinsic(decode)


def _codebook_vector(builder, codebook):
    return builder.load(builder.bitcast(codebook, _V16F.as_pointer()), align=4)


_nibble_decode = _decode_intrinsic(
    _AVX512_OK, _codebook_vector, _nibble_weights, 16,
    "4-bit codes, AVX-512: 32 weights a block in ``_nibble_order``; table = the float32[16] codebook.")
_nibble_decode_avx2 = _decode_intrinsic(
    _AVX2_OK, _nibble_tables, _nibble_weights_avx2, 16,
    "4-bit codes, AVX2: 32 weights a block in ``_nibble_order_avx2``; table = ``_nibble_tables``' planes.")
_byte_decode = _decode_intrinsic(
    _AVX512_OK, _byte_tables, _byte_weights, 64,
    "8-bit codes, AVX-512: 64 weights a block in ``_byte_order``; table = ``_byte_tables``' planes.")


# --- dense codebook: kernels --------------------------------------------------------

# How a kernel reads the codes (chosen by the wrapper, see _codebook_kind).
GENERIC = 0  # any b, bit extraction
BYTE = 1  # b = 8, scalar
NIBBLE = 2  # b = 4 and even cols (rows start on a byte), scalar
BYTE_AVX512 = 3
NIBBLE_AVX512 = 4
NIBBLE_AVX2 = 5

GEMM_ROWS = 4  # rows decoded per tile
GEMM_COLS = 1024  # columns per tile (a multiple of both SIMD blocks): 16 KB


@nb.njit(inline="always")
def _code(buf, bits, i, j, cols):
    return _field_at(buf, (np.uint64(i) * np.uint64(cols) + np.uint64(j)) * np.uint64(bits), np.uint64(bits))


@nb.njit(fastmath=_FAST)
def _dot_generic(buf, bits, codebook, x, i, j0, cols):
    """sum_{j0 <= j < cols} codebook[code(i, j)] * x[j], x in natural order."""
    acc = np.float32(0.0)
    for j in range(j0, cols):
        acc += codebook[_code(buf, bits, i, j, cols)] * x[j]
    return acc


@nb.njit(fastmath=_FAST)
def _dot_portable(buf, bits, kind, codebook, x, i, cols):
    if kind == BYTE:
        base = np.uint64(i) * np.uint64(cols)
        acc = np.float32(0.0)
        for j in range(cols):
            acc += codebook[buf[base + np.uint64(j)]] * x[j]
        return acc
    if kind == NIBBLE:
        half = cols // 2
        base = np.uint64(i) * np.uint64(half)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        for g in range(half):
            c = np.uint64(buf[base + np.uint64(g)])
            a0 += codebook[c & _U15] * x[2 * g]
            a1 += codebook[c >> _U4] * x[2 * g + 1]
        return a0 + a1
    return _dot_generic(buf, bits, codebook, x, i, 0, cols)


@nb.njit(parallel=True, fastmath=_FAST, cache=True)
def _codebook_gemv(buf, bits, kind, codebook, planes, xq, scales, bias, y):
    rows = y.size
    cols = xq.size
    for g in nb.prange((rows + 3) // 4):
        i0 = g * 4
        n = min(4, rows - i0)
        if kind == NIBBLE_AVX512 or kind == NIBBLE_AVX2:
            nblk = cols // NIBBLE_BLOCK
            half = cols // 2
            if n == 4:
                if kind == NIBBLE_AVX512:
                    s = _nibble_dot(buf, i0 * half, half, nblk, codebook, xq)
                else:
                    s = _nibble_dot_avx2(buf, i0 * half, half, nblk, planes, xq)
                y[i0], y[i0 + 1], y[i0 + 2], y[i0 + 3] = s
            else:
                for r in range(n):
                    if kind == NIBBLE_AVX512:
                        y[i0 + r] = _nibble_dot(buf, (i0 + r) * half, 0, nblk, codebook, xq)[0]
                    else:
                        y[i0 + r] = _nibble_dot_avx2(buf, (i0 + r) * half, 0, nblk, planes, xq)[0]
            for r in range(n):
                y[i0 + r] += _dot_generic(buf, 4, codebook, xq, i0 + r, nblk * NIBBLE_BLOCK, cols)
        elif kind == BYTE_AVX512:
            nblk = cols // BYTE_BLOCK
            r = 0
            while r < n:
                if r + 1 < n:
                    y[i0 + r], y[i0 + r + 1] = _byte_dot(buf, (i0 + r) * cols, cols, nblk, planes, xq)
                    r += 2
                else:
                    y[i0 + r] = _byte_dot(buf, (i0 + r) * cols, 0, nblk, planes, xq)[0]
                    r += 1
            for r in range(n):
                y[i0 + r] += _dot_generic(buf, 8, codebook, xq, i0 + r, nblk * BYTE_BLOCK, cols)
        else:
            for r in range(n):
                y[i0 + r] = _dot_portable(buf, bits, kind, codebook, xq, i0 + r, cols)
        for r in range(n):
            y[i0 + r] = _epilogue(y[i0 + r], scales, bias, i0 + r)


@nb.njit(fastmath=_FAST)
def _decode_tile(buf, bits, kind, codebook, planes, i, cols, c0, c1, t):
    """t[c - c0] = weight (i, c) for c0 <= c < c1, full SIMD blocks in their
    lane order (c0 is a multiple of the block), the rest in column order."""
    j = c0
    if kind == NIBBLE_AVX512:
        nblk = (c1 - c0) // NIBBLE_BLOCK
        _nibble_decode(buf, (i * cols + c0) // 2, nblk, codebook, t, 0)
        j = c0 + nblk * NIBBLE_BLOCK
    elif kind == NIBBLE_AVX2:
        nblk = (c1 - c0) // NIBBLE_BLOCK
        _nibble_decode_avx2(buf, (i * cols + c0) // 2, nblk, planes, t, 0)
        j = c0 + nblk * NIBBLE_BLOCK
    elif kind == BYTE_AVX512:
        nblk = (c1 - c0) // BYTE_BLOCK
        _byte_decode(buf, i * cols + c0, nblk, planes, t, 0)
        j = c0 + nblk * BYTE_BLOCK
    elif kind == BYTE:
        codes = buf[i * cols + c0 : i * cols + c1]
        for c in range(codes.size):
            t[c] = codebook[codes[c]]
        j = c1
    elif kind == NIBBLE:
        pairs = buf[(i * cols + c0) // 2 : (i * cols + c1) // 2]
        for g in range(pairs.size):
            c = pairs[g]
            t[2 * g] = codebook[c & 15]
            t[2 * g + 1] = codebook[c >> 4]
        j = c0 + 2 * pairs.size
    for c in range(j, c1):
        t[c - c0] = codebook[_code(buf, bits, i, c, cols)]


@nb.njit(fastmath=_FAST)
def _dot(a, b):
    s = np.float32(0.0)
    for c in range(a.size):
        s += a[c] * b[c]
    return s


@nb.njit(parallel=True, fastmath=_FAST, cache=True)
def _codebook_gemm(buf, bits, kind, codebook, planes, xq, scales, bias, out):
    # Decode a tile of GEMM_ROWS x GEMM_COLS weights (16 KB, stays in L1/L2)
    # once, then dot it with every batch row: the codes are read once per call.
    batch, cols = xq.shape
    rows = out.shape[1]
    for g in nb.prange((rows + GEMM_ROWS - 1) // GEMM_ROWS):
        i0 = g * GEMM_ROWS
        n = min(GEMM_ROWS, rows - i0)
        tile = np.empty((GEMM_ROWS, GEMM_COLS), np.float32)
        acc = np.empty((GEMM_ROWS, batch), np.float32)
        for r in range(GEMM_ROWS):
            for b in range(batch):
                acc[r, b] = 0.0
        for c0 in range(0, cols, GEMM_COLS):
            c1 = min(cols, c0 + GEMM_COLS)
            for r in range(n):
                _decode_tile(buf, bits, kind, codebook, planes, i0 + r, cols, c0, c1, tile[r, : c1 - c0])
            for b in range(batch):
                xs = xq[b, c0:c1]
                for r in range(n):
                    acc[r, b] += _dot(tile[r, : c1 - c0], xs)
        for r in range(n):
            for b in range(batch):
                out[b, i0 + r] = _epilogue(acc[r, b], scales, bias, i0 + r)


# --- wrappers -----------------------------------------------------------------------

_NO_F32 = np.zeros(0, np.float32)


def _vector(name, a, n):
    if a is None:
        return _NO_F32
    a = np.asarray(a)
    if a.dtype != np.float32 or a.shape != (n,):
        raise ValueError(f"{name}: expected float32[{n}] or None; found {a.dtype}{list(a.shape)}")
    return a


def _operands(x, out, cols_name):
    """(x 2-D, out 2-D, batch, rows, cols) after checking dtypes and shapes."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim in (1, 2) and x.flags.c_contiguous):
        raise ValueError(f"x: expected a C-contiguous float32 array [batch, {cols_name}] or [{cols_name}]; found {getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}")
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == x.ndim and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out: expected a writable C-contiguous float32 array with x's {x.ndim} dims; found {getattr(out, 'dtype', type(out).__name__)} {list(getattr(out, 'shape', []))}")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    out2 = out.reshape(1, -1) if out.ndim == 1 else out
    if out2.shape[0] != x2.shape[0]:
        raise ValueError(f"out: expected batch {x2.shape[0]} (as x); found {out2.shape[0]}")
    return x2, out2, x2.shape[0], out2.shape[1], x2.shape[1]


def _readonly(a):
    """``a`` as a read-only view.

    Numba compiles one specialisation per argument type, at about a second
    each; files give read-only entries and pointers, Huffman decoding writable
    ones.  One type each keeps it to one compile.
    """
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _pointers(a):
    """Pointers as read-only uint32 (uint16 widened: a few KB, and one
    specialisation less) or uint64 (also for signed ints, non-negative when
    valid)."""
    if a.dtype.kind == "i":
        a = a.astype(np.uint64)
    elif a.dtype.itemsize < 4 or not a.dtype.isnative:
        a = a.astype(np.uint32 if a.dtype.itemsize <= 4 else np.uint64)
    return _readonly(a)


def _fill_bias(out2, bias):
    out2[...] = bias if bias.size else 0.0


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


def _codebook_kind(bits, cols, simd):
    if bits == 8:
        return BYTE_AVX512 if simd == "avx512" and cols >= BYTE_BLOCK else BYTE
    if bits == 4 and cols % 2 == 0:
        if cols >= NIBBLE_BLOCK and simd in ("avx512", "avx2"):
            return NIBBLE_AVX512 if simd == "avx512" else NIBBLE_AVX2
        return NIBBLE
    return GENERIC


def _permute_columns(x2, block, order):
    """x with each full block of columns in the SIMD lane order, the rest as is."""
    full = x2.shape[1] // block * block
    out = np.empty_like(x2)
    out[:, :full] = x2[:, :full].reshape(x2.shape[0], -1, block)[:, :, order].reshape(x2.shape[0], full)
    out[:, full:] = x2[:, full:]
    return out


_BYTE_ORDER = _byte_order()
_NIBBLE_ORDER = _nibble_order()
_NIBBLE_ORDER_AVX2 = _nibble_order_avx2()


def codebook_matmul(entries, bits, codebook, scales, bias, x, out, *, simd=None):
    """``out = x @ W.T + bias`` for a packed dense codebook matrix (spec §6.2, §6.4).

    ``W[i, j] = scales[i] * codebook[code]`` with the code of element
    ``i * cols + j`` read from the LSB-first stream; W is never expanded (a
    batch > 1 decodes one 4 x 1024 tile at a time and reuses it for every
    batch row).  8-bit and 4-bit codes have AVX-512 lookup paths, 4-bit codes
    an AVX2 one (module docstring); every width 1..8 has a portable path.

    Args:
        entries: uint8 stream of ``rows * cols`` codes of ``bits`` bits.
        bits: b, 1..8.
        codebook: float32[2**bits].
        scales: float32[rows], or None.
        bias: float32[rows], or None.
        x: C-contiguous float32 [batch, cols] (or [cols]).
        out: C-contiguous float32 [batch, rows] (or [rows]), overwritten.
        simd: ``"avx512"``, ``"avx2"`` or ``"portable"`` to force a path
            (the CPU must have it, see :data:`SIMD_OK`); None follows
            :data:`SIMD`.

    Returns:
        ``out``.

    Raises:
        ValueError: inconsistent shapes, dtypes or sizes, or a ``simd``
            level the CPU lacks.

    Example:
        >>> c = f.read_compressed("fc.weight")                   # doctest: +SKIP
        >>> codebook_matmul(c.entries, c.bits, c.codebook, c.scales, bias, x, out)
    """
    x2, out2, batch, rows, cols = _operands(x, out, "cols")
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
        raise ValueError(f"bits: expected 1..8; found {bits!r}")
    bits = int(bits)
    entries = _readonly(np.asarray(entries))
    if entries.dtype != np.uint8 or entries.ndim != 1 or entries.size * 8 < rows * cols * bits:
        raise ValueError(f"entries: expected a 1-D uint8 stream of at least {-(-rows * cols * bits // 8)} bytes; found {entries.dtype}{list(entries.shape)}")
    codebook = np.asarray(codebook)
    if codebook.dtype != np.float32 or codebook.shape != (1 << bits,):
        raise ValueError(f"codebook: expected float32[{1 << bits}]; found {codebook.dtype}{list(codebook.shape)}")
    scales = _vector("scales", scales, rows)
    bias = _vector("bias", bias, rows)
    if simd is None:
        simd = SIMD
    elif simd not in SIMD_OK:
        raise ValueError(f"simd: expected None or one of {', '.join(_SIMD_BEST_FIRST)}; found {simd!r}")
    elif not SIMD_OK[simd]:
        raise ValueError(f"simd={simd!r}: the target CPU lacks {_lacks(simd)}")
    if batch == 0 or rows == 0:
        return out
    if cols == 0:
        _fill_bias(out2, bias)
        return out
    kind = _codebook_kind(bits, cols, simd)
    planes = _NO_U8
    xq = x2
    if kind == BYTE_AVX512:
        # Byte p of codebook[c] at planes[p * 256 + c] (float32 little-endian).
        planes = np.ascontiguousarray(codebook.astype("<f4").view(np.uint8).reshape(256, 4).T).reshape(-1)
        xq = _permute_columns(x2, BYTE_BLOCK, _BYTE_ORDER)
    elif kind == NIBBLE_AVX512:
        xq = _permute_columns(x2, NIBBLE_BLOCK, _NIBBLE_ORDER)
    elif kind == NIBBLE_AVX2:
        # Byte plane p of the 16 codebook floats, twice (one per 128-bit half).
        planes = np.ascontiguousarray(np.tile(codebook.astype("<f4").view(np.uint8).reshape(16, 4).T, (1, 2))).reshape(-1)
        xq = _permute_columns(x2, NIBBLE_BLOCK, _NIBBLE_ORDER_AVX2)
    with threads_for(rows * cols * batch):
        if batch == 1:
            _codebook_gemv(entries, bits, kind, codebook, planes, xq[0], scales, bias, out2[0])
        else:
            _codebook_gemm(entries, bits, kind, codebook, planes, xq, scales, bias, out2)
    return out


_NO_U8 = np.zeros(0, np.uint8)
