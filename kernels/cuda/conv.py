"""CUDA twins of :mod:`cmodel.kernels.conv`: 2-D convolution on compressed
weights held on the device (DESIGN §5, issue 5).

Same names, argument order and semantics as the CPU kernels (PyTorch's
``conv2d`` on NCHW float32, padding per side ``(top, left, bottom, right)``,
the row scale applied once per output channel after its sum; see the CPU
module doc), plus a ``stream`` keyword.  Arrays may be numba device arrays,
any ``__cuda_array_interface__`` object, or host numpy arrays (copied to the
device; a host ``out`` is copied back), see :mod:`._host`.

Kernels and their thread mapping (``T`` = threads per block, ``CONV_THREADS``
at most ``MAX_THREADS``):

* :func:`sparse_conv2d` -- ``_sparse_conv_kernel``, a direct sparse
  convolution on the packed row-order entries (spec §6.3, §6.4).  Grid
  ``(ceil(OH*OW / T), K, N)``: a block per (tile of T output pixels, output
  channel k, image n), one output pixel per thread.  The block walks row k's
  entries T at a time: each thread decodes one entry, then sums the chunk's
  ``delta + 1`` up to its entry (a prefix sum by broadcast reads of shared
  memory, O(T) like the tap loop, without the barriers of a log-step scan),
  which gives the entry's row position ``(c, r, s)``; the chunk (codebook value, input-plane offset, ``r*dh``, ``s*dw``) goes to
  shared memory; then every thread adds the chunk's taps to its pixel.
  Fillers (code 0) are marked so the bounds test skips them.  The weight is
  never expanded; each entry is decoded once per block.
* :func:`codebook_conv2d` / :func:`dense_conv2d` -- ``_gemm_conv_kernel``,
  an implicit GEMM.  Grid ``(ceil(OH*OW / T), G * ceil(Kg / KT), N)``: a
  block per (tile of T output pixels, tile of ``KT`` output channels of one
  group, image), one pixel per thread with ``KT`` accumulators.  The
  reduction ``(c, r, s)`` runs in chunks of T positions: the block decodes
  the ``KT x T`` weight tile (``codebook[code]``, or the raw float32 weight)
  into shared memory, each thread reads its pixel's input value for a
  position once and multiplies it into all ``KT`` accumulators.  No dense
  weight exists in global memory.  Depthwise convolutions take the same
  path (a tile holds the ``Kg`` channels of one group).

Absent row scales or bias: the kernels take ``has_scales`` / ``has_bias``
flags (int64 0/1) and, in place of the missing array, a float32 array they
never read (the codebook, or the weight) -- no dummy allocation, one
compiled signature for present and absent.

Callers validate compressed data first (spec §6.6); the kernels do no bounds
checks on entries, codes or pointers.  The wrappers check shapes and dtypes
(``ValueError`` "expected …; found …"); pointer values are checked only when
the pointers come from the host (reading them back from the device would
synchronise).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from ..conv import _padding, _pair, conv2d_output_shape
from ._host import MAX_THREADS, Output, as_device, check, describe, launch, vector

# Threads per block of every conv launch (<= MAX_THREADS); a tile of this
# many output pixels, and reduction chunks of this many positions.
CONV_THREADS = 128

# Output channels per block of the implicit GEMM: one input load feeds KT
# fused multiply-adds, kept in registers (a local array with a constant trip
# count).
KT = 8
# Shared floats of one weight tile (a compile-time constant for cuda.shared.array).
_TILE = KT * MAX_THREADS

# Marks a filler in the shared tap table: an input row offset no pixel can
# reach, so the bounds test drops it without a branch of its own.
_SKIP = -(1 << 30)


# --------------------------------------------------------------- device code


# Device helpers are inlined at the Numba IR level: compile_ptx of a kernel
# that calls a device dispatcher asks for the current device (there is none
# where the PTX test runs).
@cuda.jit(device=True, inline="always")
def _field(buf, e, width, last):
    # Field e of an LSB-first stream of width-bit fields (spec §6.4): a field
    # of <= 16 bits at a bit offset < 8 spans <= 3 bytes; indices past the
    # last byte are clamped (they only feed bits above the field).
    bit = e * width
    k = bit >> 3
    v = np.int64(buf[k]) | (np.int64(buf[min(k + 1, last)]) << 8) | (np.int64(buf[min(k + 2, last)]) << 16)
    return (v >> (bit & 7)) & ((np.int64(1) << width) - 1)


def _sparse_conv_kernel(entries, width, index_bits, pointers, codebook, scales, has_scales, bias, has_bias,
                        x, C, H, W, Cg, Kg, R, S, sh, sw, top, left, dh, dw, out, K, OH, OW):
    s_scan = cuda.shared.array(MAX_THREADS, types.int64)
    s_val = cuda.shared.array(MAX_THREADS, types.float32)
    s_off = cuda.shared.array(MAX_THREADS, types.int64)
    s_dy = cuda.shared.array(MAX_THREADS, types.int32)
    s_dx = cuda.shared.array(MAX_THREADS, types.int32)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    k = cuda.blockIdx.y
    n = cuda.blockIdx.z
    HW = H * W
    RS = R * S
    p = cuda.blockIdx.x * nt + t
    valid = p < OH * OW
    oh = p // OW
    ow = p - oh * OW
    ih0 = oh * sh - top
    iw0 = ow * sw - left
    xbase = (n * C + (k // Kg) * Cg) * HW
    e1 = np.int64(pointers[k + 1])
    last = entries.shape[0] - 1
    dmask = (np.int64(1) << index_bits) - 1
    carry = np.int64(0)  # row position covered by the chunk's first entry
    acc = np.float32(0.0)
    for base in range(np.int64(pointers[k]), e1, nt):
        e = base + t
        step = np.int64(0)
        code = np.int64(0)
        if e < e1:
            f = _field(entries, e, width, last)
            step = (f & dmask) + 1
            code = f >> index_bits
        s_scan[t] = step
        cuda.syncthreads()
        # Each thread sums the chunk's covered lengths itself: up to its own
        # entry (its position) and over the whole chunk (the next carry).
        # Broadcast reads of shared memory, O(T) per thread like the tap loop
        # below, and no barrier per step, unlike a log-step scan.
        upto = np.int64(0)
        total = np.int64(0)
        for j in range(nt):
            total += s_scan[j]
            if j == t:
                upto = total
        pos = carry + upto - 1
        if code != 0:
            c = pos // RS
            rs = pos - c * RS
            r = rs // S
            s_val[t] = codebook[code]
            s_off[t] = c * HW
            s_dy[t] = r * dh
            s_dx[t] = (rs - r * S) * dw
        else:
            s_val[t] = 0.0
            s_off[t] = 0
            s_dy[t] = _SKIP
            s_dx[t] = 0
        carry += total
        cuda.syncthreads()
        if valid:
            m = min(nt, e1 - base)
            for j in range(m):
                ih = ih0 + s_dy[j]
                iw = iw0 + s_dx[j]
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    acc += s_val[j] * x[xbase + s_off[j] + ih * W + iw]
        cuda.syncthreads()  # the next chunk overwrites the shared tables
    if valid:
        sk = scales[k] if has_scales else np.float32(1.0)
        bk = bias[k] if has_bias else np.float32(0.0)
        out[(n * K + k) * (OH * OW) + p] = acc * sk + bk


def _gemm_conv_kernel(codes, bits, codebook, weight, scales, has_scales, bias, has_bias,
                      x, C, H, W, Cg, Kg, R, S, sh, sw, top, left, dh, dw, out, K, OH, OW):
    # bits > 0: weight (k, p) is codebook[code k*cols + p]; bits == 0: weight[k*cols + p].
    s_w = cuda.shared.array(_TILE, types.float32)
    s_off = cuda.shared.array(MAX_THREADS, types.int64)
    s_dy = cuda.shared.array(MAX_THREADS, types.int32)
    s_dx = cuda.shared.array(MAX_THREADS, types.int32)
    acc = cuda.local.array(KT, types.float32)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n = cuda.blockIdx.z
    tiles = (Kg + KT - 1) // KT
    g = cuda.blockIdx.y // tiles
    k0 = g * Kg + (cuda.blockIdx.y - g * tiles) * KT
    m = min(KT, (g + 1) * Kg - k0)
    HW = H * W
    RS = R * S
    cols = Cg * RS
    p = cuda.blockIdx.x * nt + t
    valid = p < OH * OW
    oh = p // OW
    ow = p - oh * OW
    ih0 = oh * sh - top
    iw0 = ow * sw - left
    xbase = (n * C + g * Cg) * HW
    last = codes.shape[0] - 1
    for i in range(KT):
        acc[i] = 0.0
    for q0 in range(0, cols, nt):
        q = q0 + t
        if q < cols:
            c = q // RS
            rs = q - c * RS
            r = rs // S
            s_off[t] = c * HW
            s_dy[t] = r * dh
            s_dx[t] = (rs - r * S) * dw
        # Thread t expands column q of the tile's rows: neighbouring threads
        # read neighbouring codes.
        for i in range(KT):
            v = np.float32(0.0)
            if i < m and q < cols:
                idx = (k0 + i) * cols + q
                if bits:
                    v = codebook[_field(codes, idx, bits, last)]
                else:
                    v = weight[idx]
            s_w[i * nt + t] = v
        cuda.syncthreads()
        if valid:
            for j in range(min(nt, cols - q0)):
                ih = ih0 + s_dy[j]
                iw = iw0 + s_dx[j]
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    xv = x[xbase + s_off[j] + ih * W + iw]
                    for i in range(KT):
                        acc[i] += s_w[i * nt + j] * xv
        cuda.syncthreads()
    if valid:
        for i in range(m):
            k = k0 + i
            sk = scales[k] if has_scales else np.float32(1.0)
            bk = bias[k] if has_bias else np.float32(0.0)
            out[(n * K + k) * (OH * OW) + p] = acc[i] * sk + bk


_sparse_conv = cuda.jit(_sparse_conv_kernel)
_gemm_conv = cuda.jit(_gemm_conv_kernel)

_F32 = types.float32[::1]
_U8 = types.uint8[::1]
_I = types.int64
# The geometry tail shared by both kernels: x, C, H, W, Cg, Kg, R, S, sh, sw,
# top, left, dh, dw, out, K, OH, OW.
_GEOM = (_F32,) + (_I,) * 13 + (_F32, _I, _I, _I)

# Every kernel and signature the wrappers launch (tests/test_cuda_ptx.py
# compiles each to PTX for sm_80 and sm_90): the sparse kernel once per
# pointer dtype, the implicit GEMM once (codebook and dense share it).
PTX_KERNELS = [
    (_sparse_conv_kernel, [(_U8, _I, _I, ptr[::1], _F32, _F32, _I, _F32, _I) + _GEOM
                           for ptr in (types.uint16, types.uint32, types.uint64)]),
    (_gemm_conv_kernel, [(_U8, _I, _F32, _F32, _F32, _I, _F32, _I) + _GEOM]),
]

_POINTER_DTYPES = (np.uint16, np.uint32, np.uint64)


# --------------------------------------------------------------- host side


class _Conv:
    """The checked geometry of one call (as the CPU twin's)."""

    def __init__(self, x, out, k_out, kernel_size, stride, padding, dilation, groups, stream):
        self.stream = stream
        x = as_device(x, "x", stream)
        check(x, "x", np.float32, 4, what="a 4-D float32 array (N, C, H, W)")
        self.x = x
        self.N, self.C, self.H, self.W = (int(v) for v in x.shape)
        self.R, self.S = _pair(kernel_size, "kernel_size")
        self.sh, self.sw = _pair(stride, "stride")
        self.dh, self.dw = _pair(dilation, "dilation")
        self.top, self.left, self.bottom, self.right = _padding(padding)
        self.G = int(groups)
        if self.G < 1 or self.C % self.G or k_out % self.G:
            raise ValueError(f"groups: expected >= 1 and dividing C = {self.C} and K = {k_out}; found {groups}")
        self.K, self.Cg, self.Kg = k_out, self.C // self.G, k_out // self.G
        self.cols = self.Cg * self.R * self.S
        shape = conv2d_output_shape(x.shape, k_out, (self.R, self.S), (self.sh, self.sw), padding, (self.dh, self.dw))
        self.OH, self.OW = shape[2], shape[3]
        self.out = Output(out, shape, stream)

    def vector(self, a, name):
        return vector(a, name, self.K, self.stream)

    def geometry(self):
        """The kernels' geometry arguments (see ``_GEOM``)."""
        return (self.x.reshape(self.N * self.C * self.H * self.W), self.C, self.H, self.W, self.Cg, self.Kg,
                self.R, self.S, self.sh, self.sw, self.top, self.left, self.dh, self.dw,
                self.out.flat(), self.K, self.OH, self.OW)

    def threads(self):
        return max(1, min(int(CONV_THREADS), MAX_THREADS))


def _out_channels(out):
    shape = getattr(out, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 4 else -1


def _stream_bytes(a, name, nbytes, stream):
    d = as_device(a, name, stream)
    if not (getattr(d, "dtype", None) == np.uint8 and len(d.shape) == 1 and d.shape[0] >= nbytes):
        raise ValueError(f"{name}: expected a 1-D uint8 array of at least {nbytes} bytes; found {describe(a)}")
    return d


def _codebook(codebook, bits, stream):
    d = as_device(np.asarray(codebook, np.float32) if isinstance(codebook, np.ndarray) else codebook, "codebook", stream)
    check(d, "codebook", np.float32, shape=(1 << bits,), what=f"2**{bits} float32 values")
    return d


def _flags(a, stand_in):
    return (stand_in, 0) if a is None else (a, 1)


def sparse_conv2d(entries, n_entries, width, index_bits, pointers, codebook, scales, bias, x, out,
                  kernel_size, stride=1, padding=0, dilation=1, groups=1, stream=0):
    """Convolution with row-order sparse weights, straight from the packed
    entries on the device (twin of :func:`cmodel.kernels.conv.sparse_conv2d`).

    Output channel ``k`` walks entries ``pointers[k] .. pointers[k+1] - 1``;
    an entry with a non-zero code at row position ``p`` names input channel
    ``g*Cg + p // (R*S)`` and tap ``p % (R*S)``.  See the module doc for the
    thread mapping.

    Args:
        entries: uint8, the packed stream (spec §6.4) of ``n_entries`` fields
            of ``width`` bits, ``delta | code << index_bits``, fillers
            included, row order.  Validated by the caller (spec §6.6).
        n_entries: entry count.
        width: ``index_bits + bits``, 2..16.
        index_bits: r, 1..8.
        pointers: ``K + 1`` cumulative entry counts, uint16, uint32 or
            uint64 on the device (a host array of any integer dtype is
            checked like the CPU twin's and copied).
        codebook: float32[2**bits], ``codebook[0] == 0``.
        scales: float32[K] row scales, or None.
        bias: float32[K], or None.
        x: float32 ``(N, C, H, W)``, C-contiguous.
        out: float32 ``(N, K, OH, OW)``, C-contiguous; overwritten.
        kernel_size: ``(R, S)`` or an int.
        stride, dilation: ``(h, w)`` or an int.
        padding: ``(top, left, bottom, right)``, ``(ph, pw)`` or an int.
        groups: G; the weight is ``K x C/G x R x S``.
        stream: a numba CUDA stream, or 0 (the default stream).

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.

    Example:
        >>> c = f.read_compressed("layer1.conv.weight")        # doctest: +SKIP
        >>> sparse_conv2d(c.entries, c.n_entries, c.width, c.index_bits, c.pointers,
        ...               c.codebook, c.scales, bias, x_dev, out_dev, c.shape[2:], 1, 1)
    """
    g = _Conv(x, out, _out_channels(out), kernel_size, stride, padding, dilation, groups, stream)
    width, index_bits, n_entries = int(width), int(index_bits), int(n_entries)
    if not 1 <= index_bits < width <= 16:
        raise ValueError(f"width, index_bits: expected 1 <= index_bits < width <= 16; found {width}, {index_bits}")
    ent = _stream_bytes(entries, "entries", -(-n_entries * width // 8), stream)
    if isinstance(pointers, np.ndarray):
        ptr = np.asarray(pointers)
        if not (np.issubdtype(ptr.dtype, np.integer) and ptr.shape == (g.K + 1,) and ptr[0] == 0 and ptr[-1] == n_entries):
            raise ValueError(f"pointers: expected K + 1 = {g.K + 1} counts from 0 to n_entries = {n_entries}; found {describe(ptr)}")
        if ptr.dtype not in _POINTER_DTYPES:
            ptr = ptr.astype(np.uint64)
        ptr = as_device(ptr, "pointers", stream)
    else:
        ptr = as_device(pointers, "pointers", stream)
        check(ptr, "pointers", _POINTER_DTYPES, shape=(g.K + 1,),
              what=f"K + 1 = {g.K + 1} uint16/uint32/uint64 counts")
    cb = _codebook(codebook, width - index_bits, stream)
    sc, has_s = _flags(g.vector(scales, "scales"), cb)
    bi, has_b = _flags(g.vector(bias, "bias"), cb)
    if g.out.size == 0:
        return g.out.finish()
    nt = g.threads()
    grid = (-(-(g.OH * g.OW) // nt), g.K, g.N)
    launch(_sparse_conv, grid, nt, stream, ent, width, index_bits, ptr, cb, sc, has_s, bi, has_b, *g.geometry())
    return g.out.finish()


def _gemm(g, codes, bits, codebook, weight, scales, has_s, bias, has_b):
    if g.out.size == 0:
        return g.out.finish()
    nt = g.threads()
    grid = (-(-(g.OH * g.OW) // nt), g.G * -(-g.Kg // KT), g.N)
    launch(_gemm_conv, grid, nt, g.stream, codes, bits, codebook, weight, scales, has_s, bias, has_b, *g.geometry())
    return g.out.finish()


def codebook_conv2d(entries, bits, codebook, scales, bias, x, out, kernel_size, stride=1, padding=0,
                    dilation=1, groups=1, stream=0):
    """Convolution with dense codebook weights (one b-bit code per element),
    on the device (twin of :func:`cmodel.kernels.conv.codebook_conv2d`).

    An implicit GEMM that expands one ``KT x T`` tile of weights at a time
    into shared memory (module doc); no dense weight in global memory.

    Args:
        entries: uint8, the packed codes (spec §6.4): ``K * C/G * R * S``
            fields of ``bits`` bits, C order.
        bits: b, 1..8.
        codebook: float32[2**bits].
        scales: float32[K] row scales, or None.
        bias: float32[K], or None.
        x, out, kernel_size, stride, padding, dilation, groups, stream: as
            :func:`sparse_conv2d`.

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.
    """
    g = _Conv(x, out, _out_channels(out), kernel_size, stride, padding, dilation, groups, stream)
    bits = int(bits)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits: expected 1..8; found {bits}")
    codes = _stream_bytes(entries, "entries", -(-g.K * g.cols * bits // 8), stream)
    cb = _codebook(codebook, bits, stream)
    sc, has_s = _flags(g.vector(scales, "scales"), cb)
    bi, has_b = _flags(g.vector(bias, "bias"), cb)
    return _gemm(g, codes, bits, cb, cb, sc, has_s, bi, has_b)


def dense_conv2d(weight, bias, x, out, stride=1, padding=0, dilation=1, groups=1, stream=0):
    """Convolution with raw float32 weights ``(K, C/groups, R, S)`` on the
    device (twin of :func:`cmodel.kernels.conv.dense_conv2d`): the implicit
    GEMM of :func:`codebook_conv2d`, reading the weight tile from the array.

    Args:
        weight: float32 ``(K, C/groups, R, S)``, C-contiguous.
        bias: float32[K], or None.
        x, out, stride, padding, dilation, groups, stream: as
            :func:`sparse_conv2d`.

    Returns:
        ``out``.

    Raises:
        ValueError: shapes, dtypes or sizes that do not fit together.
    """
    if isinstance(weight, np.ndarray) and weight.dtype != np.float32:
        weight = weight.astype(np.float32)
    w = as_device(weight, "weight", stream)
    if not (len(w.shape) == 4 and w.dtype == np.float32):
        raise ValueError(f"weight: expected a 4-D float32 array (K, C/groups, R, S); found {describe(weight)}")
    g = _Conv(x, out, int(w.shape[0]), tuple(int(v) for v in w.shape[2:]), stride, padding, dilation, groups, stream)
    if w.shape[1] != g.Cg:
        raise ValueError(f"weight: expected C/groups = {g.Cg} input channels; found {w.shape[1]}")
    wf = w.reshape(g.K * g.cols)
    bi, has_b = _flags(g.vector(bias, "bias"), wf)
    # bits 0: the kernel reads wf; the codes and codebook arguments are
    # stand-ins of the right types that it never reads.
    return _gemm(g, wf.view(np.uint8), 0, wf, wf, wf, 0, bi, has_b)
