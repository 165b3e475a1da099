"""Shared by the CUDA linear kernels (:mod:`.sparse_linear`, :mod:`.codebook_linear`):
launch constants, device functions (codebook in shared memory, the batch
accumulate, the row store and epilogue) and host-side operand checks.

Absent row scales or bias: the kernels take ``has_scales`` / ``has_bias``
flags and a stand-in float32 array they never read (the codebook), as the
conv kernels do.

Callers validate compressed data first (spec §6.6); the kernels do no bounds
checks on entries, codes or pointers.  The wrappers check shapes and dtypes
(``ValueError`` "expected …; found …"); pointer values only when the
pointers come from the host (reading them back from the device would
synchronise).
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda, types

from . import _warp
from ._host import Output, as_device, blocks, check, describe, flat, launch

# Threads per block of every launch here: 4 warps, one row (or column) each.
LINEAR_THREADS = 128
# Batch rows whose sums a lane keeps in registers (row order, dense codebook).
BATCH_TILE = 8
# Codebook entries held in shared memory: value bits 1..8 (spec §6.3).
MAX_CODEBOOK = 256
# Grid limits (grid-stride loops cover the rest); tests lower MAX_BLOCKS so
# the strides run under the simulator.
MAX_BLOCKS = 65535
_WARPS = LINEAR_THREADS // _warp.WARP

_POINTER_DTYPES = (np.uint16, np.uint32, np.uint64)
_SIM = bool(config.ENABLE_CUDASIM)


# --------------------------------------------------------------- device code


@cuda.jit(device=True)
def _field(buf8, buf16, e, width, last):
    """Entry ``e`` of the packed stream: a byte at width 8, a u16 at width
    16, else ``width`` bits from bit ``e * width`` (a field of <= 16 bits at
    a bit offset < 8 spans <= 3 bytes; indices past the last byte are
    clamped, they only feed bits above the field)."""
    if width == 8:
        return np.int64(buf8[e])
    if width == 16:
        return np.int64(buf16[e])
    bit = e * width
    k = bit >> 3
    v = np.int64(buf8[k]) | (np.int64(buf8[min(k + 1, last)]) << 8) | (np.int64(buf8[min(k + 2, last)]) << 16)
    return (v >> (bit & 7)) & ((np.int64(1) << width) - 1)


@cuda.jit(device=True)
def _code(codes, idx, bits, last):
    """Code ``idx`` of a dense stream of ``bits``-bit codes (1..8: <= 2 bytes)."""
    if bits == 8:
        return np.int64(codes[idx])
    bit = idx * bits
    k = bit >> 3
    v = np.int64(codes[k]) | (np.int64(codes[min(k + 1, last)]) << 8)
    return (v >> (bit & 7)) & ((np.int64(1) << bits) - 1)


@cuda.jit(device=True)
def _epilogue(v, i, scales, has_scales, bias, has_bias):
    if has_scales:
        v *= scales[i]
    if has_bias:
        v += bias[i]
    return v


@cuda.jit(device=True)
def _load_codebook(s_cb, codebook, n_codes, t):
    # The block's threads copy the codebook to shared memory (caller syncs).
    for c in range(t, n_codes, cuda.blockDim.x):
        s_cb[c] = codebook[c]


@cuda.jit(device=True)
def _accumulate(a, acc, nb, v, x, g, cols, j):
    """Add weight ``v`` of column ``j`` times the ``nb`` batch rows from ``g``:
    into ``a`` (returned) for one row, else into ``acc``."""
    if nb == 1:
        a += v * x[g * cols + j]
    else:
        for i in range(nb):
            acc[i] += v * x[(g + i) * cols + j]
    return a


@cuda.jit(device=True)
def _store_row(a, acc, nb, g, row, rows, lane, out, scales, has_scales, bias, has_bias):
    # The warp's sums of one row for the nb batch rows from g; lane 0 writes.
    if nb == 1:
        a = _warp.warp_sum(a)
        if lane == 0:
            out[g * rows + row] = _epilogue(a, row, scales, has_scales, bias, has_bias)
    else:
        for i in range(nb):
            a = _warp.warp_sum(acc[i])
            if lane == 0:
                out[(g + i) * rows + row] = _epilogue(a, row, scales, has_scales, bias, has_bias)


def _finish_kernel(out, total, rows, keep, scales, has_scales, bias, has_bias):
    # out[k] = (out[k] if keep else 0) * scale[row] + bias[row], k = b * rows + row.
    k = cuda.grid(1)
    while k < total:
        v = out[k] if keep else np.float32(0.0)
        out[k] = _epilogue(v, k % rows, scales, has_scales, bias, has_bias)
        k += cuda.gridsize(1)


_finish = cuda.jit(_finish_kernel)

_F32 = types.float32[::1]
_U8 = types.uint8[::1]
_U16 = types.uint16[::1]
_I = types.int64


def _operands(x, out, stream):
    """(x flat on the device, Output, batch, rows, cols), checked as the CPU
    twin checks them."""
    xd = as_device(x, "x", stream)
    xs = tuple(int(v) for v in getattr(xd, "shape", ()))  # a tuple: the simulator's shapes take no negative index
    if getattr(xd, "dtype", None) != np.float32 or len(xs) not in (1, 2):
        raise ValueError(f"x: expected a C-contiguous float32 array [batch, cols] or [cols]; found {describe(x)}")
    shape = getattr(out, "shape", None)
    shape = None if shape is None else tuple(int(v) for v in shape)
    if shape is None or len(shape) != len(xs) or getattr(out, "dtype", None) != np.float32:
        raise ValueError(f"out: expected a writable C-contiguous float32 array with x's {len(xs)} dims; found {describe(out)}")
    batch = 1 if len(xs) == 1 else xs[0]
    if len(shape) == 2 and shape[0] != batch:
        raise ValueError(f"out: expected batch {batch} (as x); found {shape[0]}")
    rows, cols = shape[-1], xs[-1]
    o = Output(out, xs[:-1] + (rows,), stream)
    return flat(xd), o, batch, rows, cols


def _flags(a, stand_in):
    return (stand_in, 0) if a is None else (a, 1)


def _codebook(codebook, bits, stream):
    d = as_device(codebook, "codebook", stream)
    check(d, "codebook", np.float32, shape=(1 << bits,), what=f"float32[{1 << bits}]")
    return d


def _grid(lines, batch_groups):
    return (blocks(lines, _WARPS, MAX_BLOCKS), max(1, min(MAX_BLOCKS, batch_groups)))


def _fill(o, rows, keep, scales, has_s, bias, has_b, stream):
    total = o.size
    launch(_finish, blocks(total, LINEAR_THREADS, MAX_BLOCKS), LINEAR_THREADS, stream,
           o.flat(), total, rows, keep, scales, has_s, bias, has_b)


def _stream(entries, name, nbytes, stream):
    d = as_device(entries, name, stream)
    if not (getattr(d, "dtype", None) == np.uint8 and len(d.shape) == 1 and d.shape[0] >= nbytes):
        raise ValueError(f"{name}: expected a 1-D uint8 stream of at least {nbytes} bytes; found {describe(entries)}")
    return d
