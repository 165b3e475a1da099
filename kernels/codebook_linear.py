"""Dense codebook GEMV/GEMM on packed b-bit codes: ``Y = X @ W.T + bias``
with ``W[i, j] = scales[i] * codebook[code(i, j)]`` never expanded (spec
§6.2, §6.4).  Public entry point: :func:`codebook_matmul`.

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

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._common import _NO_U8, _epilogue, _fill_bias, _operands, _readonly, _vector
from .entries import threads_for
from .simd import _AVX2_OK, _AVX512_OK, _F32, _FAST, _I32, _I64, _SIMD_BEST_FIRST, _U4, _U15, _V8F, _V16B, _V16F, _V16I, _V32B, _V64B, SIMD, SIMD_OK, _bytes_to_floats, _data, _field_at, _fn, _hsum, _lacks, _loop, _plane_order, _splat, _trap, _vload, _vstore

__all__ = ["codebook_matmul"]


NIBBLE_BLOCK = 32  # columns per 4-bit SIMD step (both levels): 16 code bytes
BYTE_BLOCK = 64  # columns per 8-bit SIMD step: 64 code bytes
_NIBBLE_ROWS = 4  # rows per 4-bit dot call (x loads shared)
_BYTE_ROWS = 2  # rows per 8-bit dot call (16 zmm hold the byte planes)


def _nibble_weights(builder, codes, offset, cbv):
    """32 weights of 16 code bytes: (even columns, odd columns)."""
    perm = _fn(builder, "llvm.x86.avx512.permvar.sf.512", _V16F, [_V16F, _V16I])
    z = builder.zext(_vload(builder, codes, offset, _V16B, 1), _V16I)
    lo = builder.call(perm, [cbv, builder.and_(z, _splat(_V16I, 15))])
    hi = builder.call(perm, [cbv, builder.lshr(z, _splat(_V16I, 4))])
    return lo, hi


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
