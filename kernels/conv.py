"""2-D convolution kernels that run on compressed weights (DESIGN §5).

The semantics are PyTorch's ``conv2d`` on NCHW float32 arrays, with the
padding given per side (``top, left, bottom, right``; asymmetric allowed)::

    out[n, k, oh, ow] = bias[k] + scale[k] * sum over (c, r, s) of
        w[k, (c, r, s)] * x[n, g*Cg + c, oh*sh - top + r*dh, ow*sw - left + s*dw]

with ``g = k // Kg``, ``Kg = K / groups``, ``Cg = C / groups``, inputs
outside the image read as 0, and ``OH = (H + top + bottom - dh*(R - 1) - 1)
// sh + 1`` (``OW`` alike).  ``w`` is the spec's matrix view of the weight
(spec §6.2): row ``k`` is output channel ``k``, positions ``(c, r, s)`` in C
order, ``w = codebook[code]``; the row scale multiplies each output channel
once, after its sum.

Entry points, all taking plain arrays and writing into ``out``:

* :func:`sparse_conv2d` -- row-order sparse entries (spec §6.3, packed §6.4).
  A direct sparse convolution: each output channel walks its own entries,
  and each non-zero adds ``value x`` a shifted input plane to the output
  plane.  The weight is never expanded.
* :func:`codebook_conv2d` -- dense codebook codes.  Each thread expands one
  tile of weight rows at a time into a scratch buffer and multiplies it with
  the input's im2col matrix; depthwise convolutions (``C / groups == 1``)
  run direct loops on each channel's expanded ``R*S`` taps.
* :func:`dense_conv2d` -- raw float32 weights, the same paths.

**Phase planes.**  The direct loops and the GEMM read the input from one
padded copy, split into ``sh x sw`` phase planes per channel
(``plane[py, px][i, j] = padded[i*sh + py, j*sw + px]``, each ``Hq x Wq``).
Tap ``(r, s)`` reads the plane of ``(r*dh mod sh, s*dw mod sw)`` at a fixed
offset, whatever the stride and dilation, and with output rows stored ``Wq``
floats apart, a tap's contribution to a whole output plane is one contiguous
``acc[i] += v * plane[offset + i]`` over ``L = (OH - 1)*Wq + OW`` floats.  The
``Wq - OW`` extra columns per row are computed and dropped.  The same offsets
make each row ``(c, r, s)`` of the im2col matrix a few contiguous runs of
one phase plane, so the GEMM packs its ``KC x NR`` blocks straight from the
planes (valid columns only) and the full im2col matrix is never built.

**GEMM.**  The codebook/dense GEMM is a register-blocked micro-kernel
(``MR`` output channels x 2 SIMD vectors of output columns, fused
multiply-adds on LLVM vector types) inside Numba's ``prange``, not a BLAS
call.  Measured on this project's 2-core AMD EPYC (Zen 5, AVX-512) machine:
numpy's OpenBLAS picks its Haswell kernels there (the 256 x 2304 x 784
sgemm of a 3x3 256->256 conv at 28x28 took 4.4-5.4 ms on 2 threads, torch's
whole conv 2.4-2.8 ms; 2.6 ms with ``OPENBLAS_CORETYPE=SkylakeX``), and a
BLAS call right after a Numba parallel region ran 3x slower, its threads
competing with OpenMP workers still spinning.  The micro-kernel alone runs
at ~115 GMAC/s per core with its data in L1 (the FMA peak) and ~88 inside
the conv.  The tile is expanded into packed panels of ``MR`` rows (the
``MR`` values one step broadcasts are adjacent, one stream per panel instead
of ``MR`` rows ``cols`` floats apart), and the micro-kernel indexes them with
unsigned integers (signed ones cost Numba's negative-index fix-up, four
integer instructions per broadcast): on a 2-core AMD EPYC (Zen 3, AVX2) the
8-bit codebook 3x3 256->256 conv at 28x28 went from 0.66x to 0.93-1.01x
torch's conv2d.  :func:`codebook_conv2d` and :func:`dense_conv2d` take
``gemm="blas"`` for the im2col + ``numpy.matmul`` path (one weight tile at a
time as well; its Numba steps run on one thread), for machines whose BLAS is
the better choice.

Callers validate compressed data first (spec §6.6): the kernels do no bounds
checks on entries, codes or pointers.  The wrappers check array shapes,
dtypes and layouts, and raise ``ValueError`` on a mismatch.
"""

from __future__ import annotations

import llvmlite.binding as _llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .entries import threads_for

# Taps added per pass over the accumulator in the direct loops: four input
# streams + one accumulator load and store per four FMAs.
TAPS_PER_PASS = 4

# Output planes a thread takes at a time in the direct loops (dynamic
# scheduling: rows differ in entry counts, and on a shared machine threads
# differ in speed).
CHUNK_PLANES = 4

# Default output channels per weight tile, rounded up to a multiple of MR.
# Every block of the im2col matrix packed into L1 serves all the tile's rows,
# so taller tiles pay less packing per FMA: one thread on a 3x3 256->256 conv
# at 28x28 took 7.3 / 5.8 / 5.3 / 5.1 ms with 36 / 66 / 132 / 258 rows (an
# earlier packing; the trend holds).  The micro-kernel works on a KC-column
# slice of the tile at a time (132 x 256 floats: 135 KB, kept in L2).
TILE_ROWS = 128

# GEMM micro-kernel: MR output channels x 2 vectors of VW floats, 2*MR
# accumulators (12 of the 32 AVX-512 registers; 12 of 16 with AVX2).
MR = 6
# 16 lanes where the host has AVX-512 (Numba compiles for the host CPU unless
# NUMBA_CPU_NAME says otherwise), else 8 (AVX2, or two NEON registers).
VW = 16 if (not nb.config.CPU_NAME and _llvm.get_host_cpu_features().get("avx512f", False)) else 8
NR = 2 * VW
# Reduction positions per block: a KC x NR block of the im2col matrix is
# KC x 128 bytes with AVX-512 (32 KB), reused from L1 by every MR rows.
KC = 256

# Most bytes of one work item's sums (tile rows x output positions): with a
# KC-column slice of the tile they stay in a 1 MB L2.
CS_BYTES = 512 * 1024

# FMA contraction only: no reassociation, NaN/Inf keep their meaning.
_FASTMATH = {"contract"}


# --------------------------------------------------------------- SIMD vectors


class _F32Vec(types.Type):
    def __init__(self):
        super().__init__(name=f"F32x{VW}")


_vec = _F32Vec()
_VT = ir.VectorType(ir.FloatType(), VW)


@register_model(_F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _elem_ptr(context, builder, aty, ary, idx):
    return builder.gep(context.make_array(aty)(context, builder, ary).data, [idx])


@intrinsic
def _vload(typingctx, arr, idx):
    """VW floats at arr[idx:] (unaligned, unchecked)."""

    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _VT.as_pointer()), align=4)

    return _vec(arr, idx), codegen


@intrinsic
def _vstore(typingctx, arr, idx, v):
    """arr[idx:idx + VW] = v (unaligned, unchecked)."""

    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _VT.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def _vsplat(typingctx, x):
    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW))

    return _vec(types.float32), codegen


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VT, [0.0] * VW)

    return _vec(), codegen


@intrinsic
def _vadd(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return _vec(_vec, _vec), codegen


@intrinsic
def _vmul(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])

    return _vec(_vec, _vec), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c, one rounding."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT] * 3), f"llvm.fma.v{VW}f32")
        return builder.call(fn, args)

    return _vec(_vec, _vec, _vec), codegen


# --------------------------------------------------------------- geometry


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name}: expected an int or 2 ints; found {v!r}")
    return t


def _padding(p):
    if isinstance(p, (int, np.integer)):
        return (int(p),) * 4
    t = tuple(int(a) for a in p)
    if len(t) == 2:
        return t[0], t[1], t[0], t[1]
    if len(t) != 4:
        raise ValueError(f"padding: expected an int, (ph, pw) or (top, left, bottom, right); found {p!r}")
    return t


def conv2d_output_shape(x_shape, out_channels, kernel_size, stride=1, padding=0, dilation=1):
    """The output shape ``(N, K, OH, OW)`` of a convolution.

    Args:
        x_shape: ``(N, C, H, W)``.
        out_channels: K.
        kernel_size, stride, dilation: an int or ``(h, w)``.
        padding: an int, ``(ph, pw)``, or ``(top, left, bottom, right)``.

    Returns:
        A tuple of 4 ints.

    Raises:
        ValueError: a bad argument, or no output position.

    Example:
        >>> conv2d_output_shape((1, 3, 224, 224), 32, 3, stride=2, padding=(0, 0, 1, 1))
        (1, 32, 112, 112)
    """
    n, _, h, w = x_shape
    (r, s), (sh, sw), (dh, dw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
    top, left, bottom, right = _padding(padding)
    if min(r, s, sh, sw, dh, dw) < 1 or min(top, left, bottom, right) < 0:
        raise ValueError(f"expected kernel_size, stride, dilation >= 1 and padding >= 0; found {(r, s)}, {(sh, sw)}, {(dh, dw)}, {(top, left, bottom, right)}")
    oh = (h + top + bottom - dh * (r - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (s - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"expected the dilated kernel {(dh * (r - 1) + 1, dw * (s - 1) + 1)} to fit the padded input {(h + top + bottom, w + left + right)}; found an output plane of {(oh, ow)}")
    return n, out_channels, oh, ow


class _Conv:
    """The checked geometry of one call."""

    def __init__(self, x, out, k_out, kernel_size, stride, padding, dilation, groups):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4):
            raise ValueError(f"x: expected a 4-D float32 array (N, C, H, W); found {_describe(x)}")
        self.N, self.C, self.H, self.W = x.shape
        self.R, self.S = _pair(kernel_size, "kernel_size")
        self.sh, self.sw = _pair(stride, "stride")
        self.dh, self.dw = _pair(dilation, "dilation")
        self.top, self.left, self.bottom, self.right = _padding(padding)
        self.G = int(groups)
        if self.G < 1 or self.C % self.G or k_out % self.G:
            raise ValueError(f"groups: expected >= 1 and dividing C = {self.C} and K = {k_out}; found {groups}")
        self.K, self.Cg, self.Kg = k_out, self.C // self.G, k_out // self.G
        self.RS = self.R * self.S
        self.cols = self.Cg * self.RS
        shape = conv2d_output_shape(x.shape, k_out, (self.R, self.S), (self.sh, self.sw), padding, (self.dh, self.dw))
        self.OH, self.OW = shape[2], shape[3]
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
                and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out: expected a writeable C-contiguous float32 array of shape {shape}; found {_describe(out)}")

    def vector(self, a, name):
        """A float32[K] array, or an empty one for None (the kernels' "absent")."""
        if a is None:
            return _readonly(np.empty(0, np.float32))
        a = _readonly(np.ascontiguousarray(a, dtype=np.float32))
        if a.shape != (self.K,):
            raise ValueError(f"{name}: expected None or {self.K} float32 values; found shape {a.shape}")
        return a

    def phase_planes(self, x):
        """(xbuf, taps, P, wq): the padded input as phase planes (module doc),
        ``xbuf[(n*C + c)*P + plane offset]``, followed by NR floats of slack
        that vector loads past the last plane may touch; ``taps[r*S + s]`` is
        the offset of tap (r, s) inside a channel's P floats."""
        hq = -(-(self.H + self.top + self.bottom) // self.sh)
        wq = -(-(self.W + self.left + self.right) // self.sw)
        P = self.sh * self.sw * hq * wq
        xbuf = np.empty(self.N * self.C * P + NR, np.float32)
        xbuf[self.N * self.C * P:] = 0.0
        with threads_for(xbuf.size):
            _phase_planes(_readonly(np.ascontiguousarray(x)), self.top, self.left, self.sh, self.sw, hq, wq, xbuf)
        taps = np.empty(self.RS, np.int64)
        for r in range(self.R):
            ro, py = divmod(r * self.dh, self.sh)
            for s in range(self.S):
                so, px = divmod(s * self.dw, self.sw)
                taps[r * self.S + s] = ((py * self.sw + px) * hq + ro) * wq + so
        return xbuf, taps, P, wq


def _readonly(a):
    # Numba compiles a kernel once per argument type, and read-only arrays
    # (entries memory-mapped from a file) are a type of their own: every
    # input goes in as a read-only view, so each kernel compiles once.
    v = a.view()
    v.flags.writeable = False
    return v


def _describe(a):
    return f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _check_stream(a, name, nbytes):
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 1 and a.size >= nbytes):
        raise ValueError(f"{name}: expected a 1-D uint8 array of at least {nbytes} bytes; found {_describe(a)}")
    return _readonly(np.ascontiguousarray(a))


def _check_codebook(codebook, bits):
    cb = _readonly(np.ascontiguousarray(codebook, dtype=np.float32))
    if cb.shape != (1 << bits,):
        raise ValueError(f"codebook: expected 2**{bits} float32 values; found shape {cb.shape}")
    return cb


def _out_channels(out):
    return out.shape[1] if isinstance(out, np.ndarray) and out.ndim == 4 else -1


# --------------------------------------------------------------- shared loops


@nb.njit(inline="always")
def _field(buf, e, width, last):
    # Field e of an LSB-first stream of width-bit fields (spec §6.4); widths
    # 8 and 16 are one byte / one little-endian u16.  A field of <= 16 bits
    # at bit offset < 8 spans <= 3 bytes; byte indices past the stream's
    # last byte (``last``) are clamped to it, which only feeds bits above
    # the field.  Branch-free on purpose: with branches here Numba kept a
    # reference-count increment and decrement of buf per call (6x slower).
    if width == 8:
        return np.int64(buf[e])
    if width == 16:
        return np.int64(buf[2 * e]) | (np.int64(buf[2 * e + 1]) << 8)
    bit = e * width
    k = bit >> 3
    v = np.int64(buf[k]) | (np.int64(buf[min(k + 1, last)]) << 8) | (np.int64(buf[min(k + 2, last)]) << 16)
    return (v >> (bit & 7)) & ((1 << width) - 1)


@nb.njit(parallel=True, cache=True)
def _phase_planes(x, top, left, sh, sw, hq, wq, xbuf):
    # Flat uint64 indices: Numba adds a negative-index fix-up to signed ones,
    # which keeps these short row copies from vectorising.
    N, C, H, W = x.shape
    P = sh * sw * hq * wq
    xf = x.reshape(N * C * H * W)
    u = np.uint64
    for t in nb.prange(N * C):
        s0 = u(t) * u(H * W)
        d0 = u(t) * u(P)
        for i in range(P):
            xbuf[d0 + u(i)] = 0.0
        for py in range(sh):
            for px in range(sw):
                # input column j*sw + px - left inside [0, W) for j in [j0, j1)
                j0 = min(wq, max(0, -((px - left) // sw)))
                j1 = min(wq, max(j0, -((px - left - W) // sw)))
                for i in range(hq):
                    ih = i * sh + py - top
                    if ih < 0 or ih >= H:
                        continue
                    d = d0 + u(((py * sw + px) * hq + i) * wq)
                    s = s0 + u(ih * W + px - left)  # + j*sw, >= 0 for j >= j0
                    if sw == 1:
                        for j in range(j0, j1):
                            xbuf[d + u(j)] = xf[s + u(j)]
                    elif sw == 2:  # a constant stride LLVM vectorises
                        for j in range(j0, j1):
                            xbuf[d + u(j)] = xf[s + u(2 * j)]
                    else:
                        for j in range(j0, j1):
                            xbuf[d + u(j)] = xf[s + u(j * sw)]


@nb.njit(inline="always")
def _add_taps(acc, xbuf, offs, vals, m):
    """acc[i] += sum_t vals[t] * xbuf[offs[t] + i] for t < m, four taps per
    pass over acc (their products summed first, then added: less rounding
    than adding each to a large running sum), in whole vectors: acc.size is
    a multiple of VW, and reads past a plane's end stay in xbuf's slack."""
    L = acc.size
    t = 0
    while t + 4 <= m:
        o0, o1, o2, o3 = offs[t], offs[t + 1], offs[t + 2], offs[t + 3]
        v0, v1, v2, v3 = _vsplat(vals[t]), _vsplat(vals[t + 1]), _vsplat(vals[t + 2]), _vsplat(vals[t + 3])
        for i in range(0, L, VW):
            a = _vmul(v0, _vload(xbuf, o0 + i))
            a = _vfma(v1, _vload(xbuf, o1 + i), a)
            a = _vfma(v2, _vload(xbuf, o2 + i), a)
            a = _vfma(v3, _vload(xbuf, o3 + i), a)
            _vstore(acc, i, _vadd(_vload(acc, i), a))
        t += 4
    if m - t == 3:
        o0, o1, o2 = offs[t], offs[t + 1], offs[t + 2]
        v0, v1, v2 = _vsplat(vals[t]), _vsplat(vals[t + 1]), _vsplat(vals[t + 2])
        for i in range(0, L, VW):
            a = _vmul(v0, _vload(xbuf, o0 + i))
            a = _vfma(v1, _vload(xbuf, o1 + i), a)
            a = _vfma(v2, _vload(xbuf, o2 + i), a)
            _vstore(acc, i, _vadd(_vload(acc, i), a))
    elif m - t == 2:
        o0, o1 = offs[t], offs[t + 1]
        v0, v1 = _vsplat(vals[t]), _vsplat(vals[t + 1])
        for i in range(0, L, VW):
            a = _vfma(v1, _vload(xbuf, o1 + i), _vmul(v0, _vload(xbuf, o0 + i)))
            _vstore(acc, i, _vadd(_vload(acc, i), a))
    elif m - t == 1:
        o0 = offs[t]
        v0 = _vsplat(vals[t])
        for i in range(0, L, VW):
            _vstore(acc, i, _vfma(v0, _vload(xbuf, o0 + i), _vload(acc, i)))


@nb.njit(inline="always")
def _store_plane(acc, wq, scales, bias, k, out, n):
    s = scales[k] if scales.size else np.float32(1.0)
    b = bias[k] if bias.size else np.float32(0.0)
    _, _, OH, OW = out.shape
    for oh in range(OH):
        row = acc[oh * wq:oh * wq + OW]
        dst = out[n, k, oh]
        for ow in range(OW):
            dst[ow] = row[ow] * s + b


# --------------------------------------------------------------- sparse


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _sparse_direct(entries, width, index_bits, pointers, codebook, scales, bias, xbuf, poff, P, wq, C, cg, kg, out):
    # poff[p]: offset of row position p = (c, r, s) in a group's phase planes.
    N, K, OH, OW = out.shape
    L = (OH - 1) * wq + OW
    dmask = (1 << index_bits) - 1
    last = entries.size - 1
    for t in nb.prange(N * K):
        n = t // K
        k = t - n * K
        cbase = (n * C + (k // kg) * cg) * P
        acc = np.zeros((L + VW - 1) // VW * VW, np.float32)
        offs = np.empty(TAPS_PER_PASS, np.int64)
        vals = np.empty(TAPS_PER_PASS, np.float32)
        m = 0
        pos = 0  # row position of the next entry's first covered element
        for e in range(pointers[k], pointers[k + 1]):
            f = _field(entries, e, width, last)
            pos += f & dmask
            code = f >> index_bits
            if code != 0:  # code 0: a filler
                offs[m] = cbase + poff[pos]
                vals[m] = codebook[code]
                m += 1
                if m == TAPS_PER_PASS:
                    _add_taps(acc, xbuf, offs, vals, m)
                    m = 0
            pos += 1
        _add_taps(acc, xbuf, offs, vals, m)
        _store_plane(acc, wq, scales, bias, k, out, n)


def sparse_conv2d(entries, n_entries, width, index_bits, pointers, codebook, scales, bias, x, out,
                  kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Convolution with row-order sparse weights, straight from the entries.

    Output channel ``k`` walks its entries ``pointers[k] .. pointers[k+1] -
    1``; an entry with a non-zero code at row position ``p`` names input
    channel ``g*Cg + p // (R*S)`` and tap ``p % (R*S)``, and adds
    ``codebook[code]`` times that shifted input plane to the output plane.
    Parallel over (image, output channel); the input is copied once into
    padded phase planes (module doc); the weight is never expanded.

    Args:
        entries: uint8, the packed stream (spec §6.4) of ``n_entries`` fields
            of ``width`` bits, ``delta | code << index_bits``, fillers
            included, row order.  Validated by the caller (spec §6.6).
        n_entries: entry count.
        width: ``index_bits + bits``, 2..16 (8 and 16 load a byte / a u16).
        index_bits: r, 1..8.
        pointers: ``K + 1`` cumulative entry counts (any integer dtype).
        codebook: float32[2**bits], ``codebook[0] == 0``.
        scales: float32[K] row scales, or None.
        bias: float32[K], or None.
        x: float32 ``(N, C, H, W)``.
        out: float32 ``(N, K, OH, OW)``, C-contiguous; overwritten.
        kernel_size: ``(R, S)`` or an int.
        stride, dilation: ``(h, w)`` or an int.
        padding: ``(top, left, bottom, right)``, ``(ph, pw)`` or an int.
        groups: G; the weight is ``K x C/G x R x S``.

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.

    Example:
        >>> c = f.read_compressed("layer1.conv.weight")        # doctest: +SKIP
        >>> sparse_conv2d(c.entries, c.n_entries, c.width, c.index_bits, c.pointers,
        ...               c.codebook, c.scales, bias, x, out, c.shape[2:], 1, 1)
    """
    g = _Conv(x, out, _out_channels(out), kernel_size, stride, padding, dilation, groups)
    width, index_bits, n_entries = int(width), int(index_bits), int(n_entries)
    if not 1 <= index_bits < width <= 16:
        raise ValueError(f"width, index_bits: expected 1 <= index_bits < width <= 16; found {width}, {index_bits}")
    entries = _check_stream(entries, "entries", -(-n_entries * width // 8))
    ptr = np.asarray(pointers).astype(np.int64)
    if ptr.shape != (g.K + 1,) or ptr[0] != 0 or ptr[-1] != n_entries:
        raise ValueError(f"pointers: expected K + 1 = {g.K + 1} counts from 0 to n_entries = {n_entries}; found {_describe(ptr)}")
    cb = _check_codebook(codebook, width - index_bits)
    scales, bias = g.vector(scales, "scales"), g.vector(bias, "bias")
    if out.size == 0:
        return out
    xbuf, taps, P, wq = g.phase_planes(x)
    # Position -> offset table: no division per entry.
    poff = (np.arange(g.Cg, dtype=np.int64)[:, None] * P + taps[None, :]).reshape(-1)
    # Rows differ in their entry counts: hand out output channels a few at a time.
    with threads_for(g.N * max(n_entries, g.K) * g.OH * wq), nb.parallel_chunksize(CHUNK_PLANES):
        _sparse_direct(entries, width, index_bits, ptr, cb, scales, bias, xbuf, poff, P, wq, g.C, g.Cg, g.Kg, out)
    return out


# --------------------------------------------------------------- depthwise (C/groups == 1)


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _depthwise_direct(codes, bits, codebook, weight, scales, bias, xbuf, taps, P, wq, C, kg, out):
    # Taps of channel k: codebook[codes[k*RS + j]] (bits > 0) or weight[k*RS + j].
    N, K, OH, OW = out.shape
    last = codes.size - 1
    RS = taps.size
    L = (OH - 1) * wq + OW
    for t in nb.prange(N * K):
        n = t // K
        k = t - n * K
        base = (n * C + k // kg) * P
        offs = np.empty(RS, np.int64)
        vals = np.empty(RS, np.float32)
        m = 0
        for j in range(RS):
            v = codebook[_field(codes, k * RS + j, bits, last)] if bits else weight[k * RS + j]
            if v != 0:
                offs[m] = base + taps[j]
                vals[m] = v
                m += 1
        acc = np.zeros((L + VW - 1) // VW * VW, np.float32)
        _add_taps(acc, xbuf, offs, vals, m)
        _store_plane(acc, wq, scales, bias, k, out, n)


def _depthwise(g, codes, bits, codebook, weight, scales, bias, x, out):
    xbuf, taps, P, wq = g.phase_planes(x)
    with threads_for(g.N * g.K * g.RS * g.OH * wq), nb.parallel_chunksize(CHUNK_PLANES):
        _depthwise_direct(codes, bits, codebook, weight, scales, bias, xbuf, taps, P, wq, g.C, g.Kg, out)
    return out


# --------------------------------------------------------------- implicit GEMM


@nb.njit(inline="always", fastmath=_FASTMATH)
def _micro(ap, a0, bp, kc, cs, c0, ldc):
    """C += A @ B over kc positions: A is one packed panel, position p of row
    i at ap[a0 + p*MR + i] (the MR values one step broadcasts are adjacent);
    row p of B is bp[p*NR:(p+1)*NR], row i of C is cs[c0 + i*ldc:][:NR].
    Sums start from zero and are added to cblk at the end, so a long
    reduction is summed in KC-long pieces (smaller rounding error)."""
    c00 = _vzero()
    c01 = _vzero()
    c10 = _vzero()
    c11 = _vzero()
    c20 = _vzero()
    c21 = _vzero()
    c30 = _vzero()
    c31 = _vzero()
    c40 = _vzero()
    c41 = _vzero()
    c50 = _vzero()
    c51 = _vzero()
    for p in range(kc):
        b0 = _vload(bp, p * NR)
        b1 = _vload(bp, p * NR + VW)
        # uint64 indices: a signed one gets Numba's negative-index fix-up
        # (4 integer ops per broadcast, as many as the FMAs they feed).
        q = np.uint64(a0 + p * MR)
        a = _vsplat(ap[q])
        c00 = _vfma(a, b0, c00)
        c01 = _vfma(a, b1, c01)
        a = _vsplat(ap[q + np.uint64(1)])
        c10 = _vfma(a, b0, c10)
        c11 = _vfma(a, b1, c11)
        a = _vsplat(ap[q + np.uint64(2)])
        c20 = _vfma(a, b0, c20)
        c21 = _vfma(a, b1, c21)
        a = _vsplat(ap[q + np.uint64(3)])
        c30 = _vfma(a, b0, c30)
        c31 = _vfma(a, b1, c31)
        a = _vsplat(ap[q + np.uint64(4)])
        c40 = _vfma(a, b0, c40)
        c41 = _vfma(a, b1, c41)
        a = _vsplat(ap[q + np.uint64(5)])
        c50 = _vfma(a, b0, c50)
        c51 = _vfma(a, b1, c51)
    _vstore(cs, c0, _vadd(_vload(cs, c0), c00))
    _vstore(cs, c0 + VW, _vadd(_vload(cs, c0 + VW), c01))
    _vstore(cs, c0 + 1 * ldc, _vadd(_vload(cs, c0 + 1 * ldc), c10))
    _vstore(cs, c0 + 1 * ldc + VW, _vadd(_vload(cs, c0 + 1 * ldc + VW), c11))
    _vstore(cs, c0 + 2 * ldc, _vadd(_vload(cs, c0 + 2 * ldc), c20))
    _vstore(cs, c0 + 2 * ldc + VW, _vadd(_vload(cs, c0 + 2 * ldc + VW), c21))
    _vstore(cs, c0 + 3 * ldc, _vadd(_vload(cs, c0 + 3 * ldc), c30))
    _vstore(cs, c0 + 3 * ldc + VW, _vadd(_vload(cs, c0 + 3 * ldc + VW), c31))
    _vstore(cs, c0 + 4 * ldc, _vadd(_vload(cs, c0 + 4 * ldc), c40))
    _vstore(cs, c0 + 4 * ldc + VW, _vadd(_vload(cs, c0 + 4 * ldc + VW), c41))
    _vstore(cs, c0 + 5 * ldc, _vadd(_vload(cs, c0 + 5 * ldc), c50))
    _vstore(cs, c0 + 5 * ldc + VW, _vadd(_vload(cs, c0 + 5 * ldc + VW), c51))


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _implicit_gemm(codes, bits, codebook, weight, scales, bias, xbuf, taps, P, wq, C, G, tile_rows, n_jchunks, out):
    """out[n, k] = w[k, :] @ im2col(x[n]) for k in tiles of tile_rows rows.

    Work items are (group, row tile, chunk of output positions); each expands
    its tile (codebook[codes], or a copy of weight when bits == 0) into a
    private buffer, then for every image and block of NR
    output positions packs KC x NR blocks of the im2col matrix (the valid
    output columns only, copied from the phase planes) and runs the
    micro-kernel on them."""
    N, K, OH, OW = out.shape
    RS = taps.size
    kg = K // G
    cg = C // G
    cols = cg * RS
    HW = OH * OW
    n_jblocks = (HW + NR - 1) // NR
    n_tiles = (kg + tile_rows - 1) // tile_rows
    out3 = out.reshape(N, K, HW)
    last = codes.size - 1
    for item in nb.prange(G * n_tiles * n_jchunks):
        gi = item // (n_tiles * n_jchunks)
        rest = item - gi * n_tiles * n_jchunks
        ti = rest // n_jchunks
        jc = rest - ti * n_jchunks
        k0 = gi * kg + ti * tile_rows
        m = min(tile_rows, (gi + 1) * kg - k0)
        mb = (m + MR - 1) // MR
        # Expand the tile into packed panels of MR rows (position p of row
        # i at panel i // MR, offset p * MR + i % MR: the micro-kernel reads
        # each panel front to back), rows padded with zeros to a multiple of
        # MR.  uint64 indices: see _phase_planes.
        ap = np.empty(mb * MR * cols, np.float32)
        if m % MR:
            ap[(mb - 1) * MR * cols:] = 0.0
        umr = np.uint64(MR)
        for i in range(m):
            src = np.uint64((k0 + i) * cols)
            dst = np.uint64((i // MR) * MR * cols + i % MR)
            if bits == 8:
                for p in range(cols):
                    ap[dst + np.uint64(p) * umr] = codebook[codes[src + np.uint64(p)]]
            elif bits:
                for p in range(cols):
                    ap[dst + np.uint64(p) * umr] = codebook[_field(codes, (k0 + i) * cols + p, bits, last)]
            else:
                for p in range(cols):
                    ap[dst + np.uint64(p) * umr] = weight[src + np.uint64(p)]
        boffs = np.empty(cols, np.int64)
        for p in range(cols):
            c = p // RS
            boffs[p] = (gi * cg + c) * P + taps[p - c * RS]
        jb0 = jc * n_jblocks // n_jchunks
        jb1 = (jc + 1) * n_jblocks // n_jchunks
        ldc = (jb1 - jb0) * NR
        # The tile's sums for the chunk's output positions: KC-long pieces of
        # the reduction are added in, so one KC-column slice of the tile stays
        # in L2 while every column block uses it.
        cs = np.empty(mb * MR * ldc, np.float32)
        bp = np.zeros(KC * NR + VW, np.float32)  # + VW: the last row's overrun
        # Output positions q0 .. q0 + qn - 1 of column block jb lie in runs
        # along output rows, each contiguous in the phase planes: packing a
        # row of the block is n_vec[j] vector copies (src offset, dst offset).
        # A copy may overrun its run; the next copy, or the next row, is
        # written after it and overwrites the excess.
        n_vec = np.zeros(jb1 - jb0, np.int64)
        vec_src = np.empty((jb1 - jb0, 2 * NR + 2), np.int64)
        vec_dst = np.empty((jb1 - jb0, 2 * NR + 2), np.int64)
        for jb in range(jb0, jb1):
            j = jb - jb0
            q0 = jb * NR
            qn = min(NR, HW - q0)
            oh = q0 // OW
            ow = q0 - oh * OW
            d = 0
            while d < qn:
                ln = min(OW - ow, qn - d)
                for v in range(0, ln, VW):
                    vec_src[j, n_vec[j]] = oh * wq + ow + v
                    vec_dst[j, n_vec[j]] = d + v
                    n_vec[j] += 1
                d += ln
                oh += 1
                ow = 0
        for n in range(N):
            if n:
                for p in range(cols):
                    boffs[p] += C * P
            cs[:] = 0.0
            for p0 in range(0, cols, KC):
                kc = min(KC, cols - p0)
                for jb in range(jb0, jb1):
                    j = jb - jb0
                    # Pack the kc x NR block of the im2col matrix.
                    for p in range(kc):
                        o = boffs[p0 + p]
                        t = p * NR
                        for v in range(n_vec[j]):
                            _vstore(bp, t + vec_dst[j, v], _vload(xbuf, o + vec_src[j, v]))
                    for b in range(mb):
                        _micro(ap, (b * cols + p0) * MR, bp, kc, cs, b * MR * ldc + j * NR, ldc)
            q0 = jb0 * NR
            qn = min(jb1 * NR, HW) - q0
            for i in range(m):
                k = k0 + i
                sk = scales[k] if scales.size else np.float32(1.0)
                bk = bias[k] if bias.size else np.float32(0.0)
                dst = out3[n, k, q0:q0 + qn]
                src = cs[i * ldc:i * ldc + qn]
                for jj in range(qn):
                    dst[jj] = src[jj] * sk + bk


def _gemm(g, codes, bits, codebook, weight, scales, bias, x, out, tile_rows):
    tile_rows = -(-max(1, min(int(tile_rows), g.Kg)) // MR) * MR
    xbuf, taps, P, wq = g.phase_planes(x)
    n_tiles = -(-g.Kg // tile_rows)
    n_jblocks = -(-(g.OH * g.OW) // NR)
    with threads_for(g.N * g.K * g.cols * g.OH * g.OW), nb.parallel_chunksize(1):
        # Split the output positions into chunks when there are fewer items
        # than threads, and when a tile's sums would outgrow CS_BYTES; each
        # chunk expands its own copy of the tile.
        n_jchunks = max(-(-nb.get_num_threads() // (g.G * n_tiles)), -(-tile_rows * n_jblocks * NR * 4 // CS_BYTES))
        n_jchunks = min(n_jblocks, n_jchunks)
        _implicit_gemm(codes, bits, codebook, weight, scales, bias, xbuf, taps, P, wq, g.C, g.G, tile_rows, n_jchunks, out)
    return out


# --------------------------------------------------------------- im2col + BLAS


@nb.njit(parallel=True, cache=True)
def _im2col(x, n, R, S, sh, sw, top, left, dh, dw, OH, OW, col):
    """col[(c, r, s), oh*OW + ow] = padded x[n, c, oh*sh + r*dh, ow*sw + s*dw]."""
    _, C, H, W = x.shape
    RS = R * S
    for row in nb.prange(C * RS):
        c = row // RS
        rs = row - c * RS
        r = rs // S
        a = left - (rs - r * S) * dw  # input column = ow*sw - a
        ow0 = min(OW, max(0, -((-a) // sw)))
        ow1 = min(OW, max(ow0, -((-(a + W)) // sw)))
        for oh in range(OH):
            dst = col[row, oh * OW:(oh + 1) * OW]
            ih = oh * sh - top + r * dh
            if ih < 0 or ih >= H:
                dst[:] = 0.0
                continue
            dst[:ow0] = 0.0
            src = x[n, c, ih]
            if sw == 1:
                dst[ow0:ow1] = src[ow0 - a:ow1 - a]
            else:
                for ow in range(ow0, ow1):
                    dst[ow] = src[ow * sw - a]
            dst[ow1:] = 0.0


@nb.njit(parallel=True, cache=True)
def _expand_rows(codes, bits, codebook, cols, k0, tile):
    """tile[i, j] = codebook[code (k0 + i, j)] of a row-major code matrix."""
    last = codes.size - 1
    for i in nb.prange(tile.shape[0]):
        base = (k0 + i) * cols
        row = tile[i]
        if bits == 8:
            for j in range(cols):
                row[j] = codebook[codes[base + j]]
        else:
            for j in range(cols):
                row[j] = codebook[_field(codes, base + j, bits, last)]


def _blas(g, x, out, rows_of, scales, bias, tile_rows):
    """out[n, rows] = rows_of(k0, k1) @ im2col(x[n], group), a tile at a time.

    The Numba steps run on one thread: OpenMP workers left spinning after a
    parallel region slowed the following BLAS call 3x on 2 cores."""
    x = _readonly(np.ascontiguousarray(x))
    ohw = g.OH * g.OW
    o3 = out.reshape(g.N, g.K, ohw)
    pointwise = g.RS == 1 and g.sh == g.sw == 1 and g.top == g.left == g.bottom == g.right == 0
    col = None if pointwise else np.empty((g.C * g.RS, ohw), np.float32)
    with threads_for(0):
        for n in range(g.N):
            if pointwise:
                cols = x[n].reshape(g.C, ohw)
            else:
                _im2col(x, n, g.R, g.S, g.sh, g.sw, g.top, g.left, g.dh, g.dw, g.OH, g.OW, col)
                cols = col
            for gi in range(g.G):
                cg = cols[gi * g.cols:(gi + 1) * g.cols]
                for k0 in range(gi * g.Kg, (gi + 1) * g.Kg, tile_rows):
                    k1 = min(k0 + tile_rows, (gi + 1) * g.Kg)
                    np.matmul(rows_of(k0, k1), cg, out=o3[n, k0:k1])
    if scales.size:
        o3 *= scales[:, None]
    if bias.size:
        o3 += bias[:, None]
    return out


_GEMMS = ("micro", "blas")


def _check_gemm(gemm):
    if gemm not in _GEMMS:
        raise ValueError(f"gemm: expected one of {_GEMMS}; found {gemm!r}")


def codebook_conv2d(entries, bits, codebook, scales, bias, x, out, kernel_size, stride=1, padding=0,
                    dilation=1, groups=1, tile_rows=TILE_ROWS, gemm="micro"):
    """Convolution with dense codebook weights (one b-bit code per element).

    A thread expands ``tile_rows`` output channels at a time to float32
    (``codebook[code]``; row scales and bias are applied to the sums) into
    its scratch tile and multiplies it with the im2col matrix of each
    image, read in place from the padded phase planes (module doc).  The
    whole expanded weight never exists.  Depthwise convolutions (``C /
    groups == 1``) run direct loops on each channel's ``R*S`` expanded taps.

    Args:
        entries: uint8, the packed codes (spec §6.4): ``K * C/G * R * S``
            fields of ``bits`` bits, C order.
        bits: b, 1..8 (8 loads bytes).
        codebook: float32[2**bits].
        scales: float32[K] row scales, or None.
        bias: float32[K], or None.
        x, out, kernel_size, stride, padding, dilation, groups: as
            :func:`sparse_conv2d`.
        tile_rows: output channels per expanded tile (rounded up to a
            multiple of ``MR``).
        gemm: ``"micro"`` (the Numba micro-kernel) or ``"blas"`` (an im2col
            matrix per image and ``numpy.matmul`` per tile, expanded on one
            thread at a time).

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.

    Example:
        >>> c = f.read_compressed("layer1.conv.weight")        # doctest: +SKIP
        >>> codebook_conv2d(c.entries, c.bits, c.codebook, c.scales, bias, x, out,
        ...                 c.shape[2:], 1, 1)
    """
    g = _Conv(x, out, _out_channels(out), kernel_size, stride, padding, dilation, groups)
    _check_gemm(gemm)
    bits = int(bits)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits: expected 1..8; found {bits}")
    codes = _check_stream(entries, "entries", -(-g.K * g.cols * bits // 8))
    cb = _check_codebook(codebook, bits)
    scales, bias = g.vector(scales, "scales"), g.vector(bias, "bias")
    if out.size == 0:
        return out
    empty = _readonly(np.empty(0, np.float32))
    if g.Cg == 1:
        return _depthwise(g, codes, bits, cb, empty, scales, bias, x, out)
    if gemm == "micro":
        return _gemm(g, codes, bits, cb, empty, scales, bias, x, out, tile_rows)
    tile_rows = max(1, min(int(tile_rows), g.Kg))
    tile = np.empty((tile_rows, g.cols), np.float32)

    def rows_of(k0, k1):
        t = tile[:k1 - k0]
        _expand_rows(codes, bits, cb, g.cols, k0, t)
        return t

    return _blas(g, x, out, rows_of, scales, bias, tile_rows)


def dense_conv2d(weight, bias, x, out, stride=1, padding=0, dilation=1, groups=1, gemm="micro"):
    """Convolution with raw float32 weights ``(K, C/groups, R, S)``.

    The paths of :func:`codebook_conv2d`: the micro-kernel GEMM (or BLAS) on
    the im2col matrix, direct loops for depthwise.

    Args:
        weight: float32 ``(K, C/groups, R, S)``.
        bias: float32[K], or None.
        x, out, stride, padding, dilation, groups: as :func:`sparse_conv2d`.
        gemm: as :func:`codebook_conv2d`.

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.
    """
    if not (isinstance(weight, np.ndarray) and weight.ndim == 4):
        raise ValueError(f"weight: expected a 4-D array (K, C/groups, R, S); found {_describe(weight)}")
    g = _Conv(x, out, weight.shape[0], weight.shape[2:], stride, padding, dilation, groups)
    _check_gemm(gemm)
    if weight.shape[1] != g.Cg:
        raise ValueError(f"weight: expected C/groups = {g.Cg} input channels; found {weight.shape[1]}")
    w2 = _readonly(np.ascontiguousarray(weight, dtype=np.float32).reshape(g.K, g.cols))
    bias = g.vector(bias, "bias")
    if out.size == 0:
        return out
    empty = _readonly(np.empty(0, np.float32))
    no_codes = _readonly(np.empty(0, np.uint8))
    if g.Cg == 1:
        return _depthwise(g, no_codes, 0, empty, w2.reshape(-1), empty, bias, x, out)
    if gemm == "micro":
        return _gemm(g, no_codes, 0, empty, w2.reshape(-1), empty, bias, x, out, TILE_ROWS)
    return _blas(g, x, out, lambda k0, k1: w2[k0:k1], empty, bias, g.Kg)
