"""CUDA twin of :mod:`cmodel.kernels.codebook_linear`: ``Y = X @ W.T + bias``
on packed b-bit codes held on the device (spec §6.2, §6.4); same
conventions as :mod:`.sparse_linear`.

* Dense codebook, ``_codebook_kernel``: a warp per row, a block per tile
  of 4 rows; the lanes read consecutive codes of the row (coalesced) and
  the matching x values, the codebook in shared memory, sums as in row
  order.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from ._host import launch, vector
from ._linear import _F32, _I, _U8, BATCH_TILE, LINEAR_THREADS, MAX_CODEBOOK, _accumulate, _code, _codebook, _fill, _flags, _grid, _load_codebook, _operands, _store_row, _stream

__all__ = ["codebook_matmul"]


def _codebook_kernel(codes, bits, codebook, n_codes, scales, has_scales, bias, has_bias, x, batch, cols, out, rows):
    s_cb = cuda.shared.array(MAX_CODEBOOK, types.float32)
    acc = cuda.local.array(BATCH_TILE, types.float32)
    t = cuda.threadIdx.x
    _load_codebook(s_cb, codebook, n_codes, t)
    cuda.syncthreads()
    lane = t & 31
    warps = cuda.blockDim.x >> 5
    last = codes.shape[0] - 1
    for g in range(cuda.blockIdx.y * BATCH_TILE, batch, cuda.gridDim.y * BATCH_TILE):
        nb = min(BATCH_TILE, batch - g)
        row = cuda.blockIdx.x * warps + (t >> 5)
        while row < rows:  # warp-uniform: one row per warp
            base = np.int64(row) * cols
            a = np.float32(0.0)
            for i in range(BATCH_TILE):
                acc[i] = 0.0
            for c in range(lane, cols, 32):
                a = _accumulate(a, acc, nb, s_cb[_code(codes, base + c, bits, last)], x, g, cols, c)
            _store_row(a, acc, nb, g, row, rows, lane, out, scales, has_scales, bias, has_bias)
            row += cuda.gridDim.x * warps


_codebook_gemv = cuda.jit(_codebook_kernel)


def codebook_matmul(entries, bits, codebook, scales, bias, x, out, *, simd=None, stream=0):
    """``out = x @ W.T + bias`` for a packed dense codebook matrix on the
    device (twin of :func:`cmodel.kernels.codebook_linear.codebook_matmul`).

    A warp per row, 4 rows per block, coalesced code loads, the codebook in
    shared memory, each code decoded once per ``BATCH_TILE`` batch rows
    (module doc).

    Args:
        entries: uint8 stream of ``rows * cols`` codes of ``bits`` bits.
        bits: b, 1..8.
        codebook: float32[2**bits].
        scales: float32[rows], or None.
        bias: float32[rows], or None.
        x: C-contiguous float32 [batch, cols] (or [cols]).
        out: C-contiguous float32 [batch, rows] (or [rows]), overwritten.
        simd: accepted for the CPU twin's signature and ignored (no SIMD
            choice on the device).
        stream: a numba CUDA stream, or 0 (the default stream).

    Returns:
        ``out``.

    Raises:
        ValueError: inconsistent shapes, dtypes or sizes.

    Example:
        >>> c = f.read_compressed("fc.weight")                   # doctest: +SKIP
        >>> codebook_matmul(c.entries, c.bits, c.codebook, c.scales, bias, x_dev, out_dev)
    """
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
        raise ValueError(f"bits: expected 1..8; found {bits!r}")
    bits = int(bits)
    xf, o, batch, rows, cols = _operands(x, out, stream)
    codes = _stream(entries, "entries", -(-rows * cols * bits // 8), stream)
    cb = _codebook(codebook, bits, stream)
    sc, has_s = _flags(vector(scales, "scales", rows, stream), cb)
    bi, has_b = _flags(vector(bias, "bias", rows, stream), cb)
    if batch == 0 or rows == 0:
        return out
    if cols == 0:
        _fill(o, rows, 0, sc, 0, bi, has_b, stream)
        return o.finish()
    launch(_codebook_gemv, _grid(rows, -(-batch // BATCH_TILE)), LINEAR_THREADS, stream,
           codes, bits, cb, 1 << bits, sc, has_s, bi, has_b, xf, batch, cols, o.flat(), rows)
    return o.finish()


# Every kernel and signature the wrapper launches (tests/test_cuda_ptx.py
# compiles each for sm_80 and sm_90).
PTX_KERNELS = [
    (_codebook_kernel, [(_U8, _I, _F32, _I, _F32, _I, _F32, _I, _F32, _I, _I, _F32, _I)]),
]
