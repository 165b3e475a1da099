"""CUDA twins of :mod:`cmodel.kernels.linear`: ``Y = X @ W.T + bias`` on
packed codebook weights held on the device (spec §6.2-§6.4, issue 5).

Same names, argument order and semantics as the CPU kernels (read their
docstrings): ``W[i, j] = scales[i] * codebook[code(i, j)]`` is never
expanded; the row scale is applied once per output after its sum, then the
bias; fillers have code 0 and ``codebook[0] == 0``; fields are packed
LSB-first; entry widths 2..16 (8 and 16 loaded directly as a byte / u16,
the others by bit extraction).  Plus a ``stream`` keyword.  Arrays may be
numba device arrays, any ``__cuda_array_interface__`` object, or host numpy
arrays (copied to the device; a host ``out`` is copied back), see
:mod:`._convutil`.

Kernels and thread mapping (blocks of ``LINEAR_THREADS`` = 4 warps,
grid-stride loops everywhere, so any grid size is correct):

* Row order, ``_sparse_row_kernel``: a warp per row.  The 32 lanes load 32
  consecutive entries at a time (coalesced), a warp prefix sum of
  ``delta + 1`` (shuffles, :mod:`._warp`) turns them into row positions,
  and each lane adds ``codebook[code] * x[b, pos]`` for the batch rows of
  its group; a warp sum gives the output.  The codebook (at most 256
  float32, value bits 1..8) sits in shared memory.  Fillers are skipped
  (their product is 0; they still advance the position).
* Column order (EIE), ``_sparse_col_kernel``: a warp per column; a column
  whose activation is zero in every batch row is skipped before its
  entries are read, and within a column a batch row whose activation is
  zero adds nothing.  The other columns' entries are decoded as in row
  order and scattered with float32 ``atomic.add`` into ``out`` (zeroed
  first), then ``_finish_kernel`` applies scale and bias.  **Atomics, not
  row partitioning**: with a block per range of rows, every block would
  have to walk every active column's entries to find the ones in its range
  (the entries are ordered by column), multiplying the entry traffic by
  the number of row blocks; with atomics each entry is read once, the
  adds go to different rows within a column (no conflicts inside a warp)
  and float32 ``red.global.add`` is native on sm_60 and later.  The price:
  the order of the additions, and so the last bits of the result, varies
  from run to run.
* Batch > 1 (GEMM) in both orders: each entry is decoded once per group of
  ``BATCH_TILE`` batch rows and applied to all of them (row order keeps the
  group's sums in registers; grid ``y`` strides over the groups).  In
  column order each entry is decoded once for the whole batch.
* Dense codebook, ``_codebook_kernel``: a warp per row, a block per tile
  of 4 rows; the lanes read consecutive codes of the row (coalesced) and
  the matching x values, the codebook in shared memory, sums as in row
  order.

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
from ._convutil import Output, as_device, blocks, check, describe, flat, is_device, launch, vector

__all__ = ["codebook_matmul", "sparse_matmul"]

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
def _entry_step(buf8, buf16, base, e1, lane, width, index_bits, dmask, last, carry):
    """A warp's step over the 32 entries from ``base`` (of a line ending at
    ``e1``): this lane's position in the line and code (0: none or a
    filler), and the carry (the line position after the step)."""
    e = base + lane
    step = np.int64(0)
    code = np.int64(0)
    if e < e1:
        f = _field(buf8, buf16, e, width, last)
        step = (f & dmask) + 1
        code = f >> index_bits
    s = _warp.inclusive_scan(step, lane)
    return carry + s - 1, code, carry + _warp.shfl_idx(s, 31)


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


def _sparse_row_kernel(buf8, buf16, width, index_bits, pointers, codebook, n_codes,
                       scales, has_scales, bias, has_bias, x, batch, cols, out, rows):
    s_cb = cuda.shared.array(MAX_CODEBOOK, types.float32)
    acc = cuda.local.array(BATCH_TILE, types.float32)
    t = cuda.threadIdx.x
    _load_codebook(s_cb, codebook, n_codes, t)
    cuda.syncthreads()
    lane = t & 31
    warps = cuda.blockDim.x >> 5
    dmask = (np.int64(1) << index_bits) - 1
    last = buf8.shape[0] - 1
    for g in range(cuda.blockIdx.y * BATCH_TILE, batch, cuda.gridDim.y * BATCH_TILE):
        nb = min(BATCH_TILE, batch - g)
        row = cuda.blockIdx.x * warps + (t >> 5)
        while row < rows:  # warp-uniform: one row per warp
            e1 = np.int64(pointers[row + 1])
            carry = np.int64(0)  # the row position before this chunk's first entry
            a = np.float32(0.0)
            for i in range(BATCH_TILE):
                acc[i] = 0.0
            for base in range(np.int64(pointers[row]), e1, 32):
                pos, code, carry = _entry_step(buf8, buf16, base, e1, lane, width, index_bits, dmask, last, carry)
                if code != 0:
                    a = _accumulate(a, acc, nb, s_cb[code], x, g, cols, pos)
            _store_row(a, acc, nb, g, row, rows, lane, out, scales, has_scales, bias, has_bias)
            row += cuda.gridDim.x * warps


def _sparse_col_kernel(buf8, buf16, width, index_bits, pointers, codebook, n_codes, x, batch, cols, out, rows):
    # out (batch x rows, zeroed) receives the products by atomic adds.
    s_cb = cuda.shared.array(MAX_CODEBOOK, types.float32)
    t = cuda.threadIdx.x
    _load_codebook(s_cb, codebook, n_codes, t)
    cuda.syncthreads()
    lane = t & 31
    warps = cuda.blockDim.x >> 5
    dmask = (np.int64(1) << index_bits) - 1
    last = buf8.shape[0] - 1
    col = cuda.blockIdx.x * warps + (t >> 5)
    while col < cols:  # warp-uniform: one column per warp
        active = False
        for b in range(batch):
            if x[b * cols + col] != 0:
                active = True
        if active:
            e1 = np.int64(pointers[col + 1])
            carry = np.int64(0)
            for base in range(np.int64(pointers[col]), e1, 32):
                pos, code, carry = _entry_step(buf8, buf16, base, e1, lane, width, index_bits, dmask, last, carry)
                if code != 0:
                    v = s_cb[code]
                    for b in range(batch):
                        xv = x[b * cols + col]
                        if xv != 0:
                            cuda.atomic.add(out, b * rows + pos, v * xv)
        col += cuda.gridDim.x * warps


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


def _finish_kernel(out, total, rows, keep, scales, has_scales, bias, has_bias):
    # out[k] = (out[k] if keep else 0) * scale[row] + bias[row], k = b * rows + row.
    k = cuda.grid(1)
    while k < total:
        v = out[k] if keep else np.float32(0.0)
        out[k] = _epilogue(v, k % rows, scales, has_scales, bias, has_bias)
        k += cuda.gridsize(1)


_sparse_row = cuda.jit(_sparse_row_kernel)
_sparse_col = cuda.jit(_sparse_col_kernel)
_codebook_gemv = cuda.jit(_codebook_kernel)
_finish = cuda.jit(_finish_kernel)

_F32 = types.float32[::1]
_U8 = types.uint8[::1]
_U16 = types.uint16[::1]
_I = types.int64

# Every kernel and signature the wrappers launch (tests/test_cuda_ptx.py
# compiles each for sm_80 and sm_90).
PTX_KERNELS = [
    (_sparse_row_kernel, [(_U8, _U16, _I, _I, p[::1], _F32, _I, _F32, _I, _F32, _I, _F32, _I, _I, _F32, _I)
                          for p in (types.uint16, types.uint32, types.uint64)]),
    (_sparse_col_kernel, [(_U8, _U16, _I, _I, p[::1], _F32, _I, _F32, _I, _I, _F32, _I)
                          for p in (types.uint16, types.uint32, types.uint64)]),
    (_codebook_kernel, [(_U8, _I, _F32, _I, _F32, _I, _F32, _I, _F32, _I, _I, _F32, _I)]),
    (_finish_kernel, [(_F32, _I, _I, _I, _F32, _I, _F32, _I)]),
]


# --------------------------------------------------------------- host side


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


def _stream(entries, name, nbytes, stream):
    d = as_device(entries, name, stream)
    if not (getattr(d, "dtype", None) == np.uint8 and len(d.shape) == 1 and d.shape[0] >= nbytes):
        raise ValueError(f"{name}: expected a 1-D uint8 stream of at least {nbytes} bytes; found {describe(entries)}")
    return d


def _pointers(pointers, lines, n_entries, order, stream):
    if isinstance(pointers, np.ndarray) or not is_device(pointers):
        p = np.asarray(pointers)
        if p.dtype.kind not in "ui" or p.shape != (lines + 1,):
            raise ValueError(f"pointers: expected integers [{lines + 1}] ({order} order); found {p.dtype}{list(p.shape)}")
        if int(p[0]) != 0 or int(p[-1]) != n_entries:
            raise ValueError(f"pointers: expected counts from 0 to n_entries = {n_entries}; found {int(p[0])} .. {int(p[-1])}")
        if p.dtype not in _POINTER_DTYPES:  # signed (non-negative when valid) or non-native
            p = p.astype(np.uint64)
        return as_device(p, "pointers", stream)
    d = as_device(pointers, "pointers", stream)
    check(d, "pointers", _POINTER_DTYPES, shape=(lines + 1,), what=f"[{lines + 1}] uint16/uint32/uint64 counts ({order} order)")
    return d


def _address(d) -> int:
    """Device address of ``d``'s first element (0 under the simulator, whose
    arrays are host memory without the CUDA interface)."""
    cai = getattr(d, "__cuda_array_interface__", None) if not _SIM else None
    return int(cai["data"][0]) if cai else 0


def _grid(lines, batch_groups):
    return (blocks(lines, _WARPS, MAX_BLOCKS), max(1, min(MAX_BLOCKS, batch_groups)))


def _fill(o, rows, keep, scales, has_s, bias, has_b, stream):
    total = o.size
    launch(_finish, blocks(total, LINEAR_THREADS, MAX_BLOCKS), LINEAR_THREADS, stream,
           o.flat(), total, rows, keep, scales, has_s, bias, has_b)


def sparse_matmul(entries, n_entries, width, index_bits, pointers, codebook, scales, bias, x, out, order, *, stream=0):
    """``out = x @ W.T + bias`` for a packed sparse codebook matrix on the
    device (twin of :func:`cmodel.kernels.linear.sparse_matmul`).

    Row order: a warp per row (module doc).  Column order (EIE): a warp per
    column, columns whose activation is zero in every batch row skipped,
    float32 atomic adds into ``out``, then scale and bias (why atomics: module
    doc).  With a batch, each entry is decoded once per ``BATCH_TILE`` batch
    rows (row order) or once (column order).

    Args:
        entries: uint8 stream of ``n_entries`` packed fields of ``width`` bits,
            ``delta | code << index_bits``, LSB-first (device or host).  At
            width 16 a device stream must start on an even address.
        n_entries: stored entries, fillers included.
        width: ``index_bits + bits``, 2..16.
        index_bits: r, 1..8; the value bits ``width - index_bits`` 1..8.
        pointers: ``rows + 1`` (row order) or ``cols + 1`` (col order)
            cumulative entry counts: uint16/uint32/uint64 on the device, or a
            host array of any integer dtype (checked to run from 0 to
            ``n_entries`` and copied).
        codebook: float32[2**bits], ``codebook[0] == 0.0``.
        scales: float32[rows] row scales, or None.
        bias: float32[rows], or None.
        x: C-contiguous float32 [batch, cols] (or [cols]).
        out: C-contiguous float32 [batch, rows] (or [rows]), overwritten.
        order: ``"row"`` or ``"col"``, as the entries were stored.
        stream: a numba CUDA stream, or 0 (the default stream).

    Returns:
        ``out``.

    Raises:
        ValueError: inconsistent shapes, dtypes or sizes.  The entries
            themselves are trusted (validated by the reader, spec §6.6).

    Example:
        >>> c = f.read_compressed("fc.weight")                   # doctest: +SKIP
        >>> sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers,
        ...               c.codebook, c.scales, None, x_dev, out_dev, c.order)
    """
    if order not in ("row", "col"):
        raise ValueError(f"order: expected 'row' or 'col'; found {order!r}")
    if not (isinstance(width, (int, np.integer)) and isinstance(index_bits, (int, np.integer))
            and 1 <= index_bits <= 8 and 1 <= width - index_bits <= 8):
        raise ValueError(f"width, index_bits: expected 1 <= index_bits <= 8 and 1 <= width - index_bits <= 8; found {width}, {index_bits}")
    width, index_bits, n_entries = int(width), int(index_bits), int(n_entries)
    if n_entries < 0:
        raise ValueError(f"n_entries: expected >= 0; found {n_entries}")
    xf, o, batch, rows, cols = _operands(x, out, stream)
    ent = _stream(entries, "entries", -(-n_entries * width // 8), stream)
    lines = rows if order == "row" else cols
    ptr = _pointers(pointers, lines, n_entries, order, stream)
    bits = width - index_bits
    cb = _codebook(codebook, bits, stream)
    sc, has_s = _flags(vector(scales, "scales", rows, stream), cb)
    bi, has_b = _flags(vector(bias, "bias", rows, stream), cb)
    if batch == 0 or rows == 0:
        return out
    if cols == 0 or n_entries == 0:
        _fill(o, rows, 0, sc, 0, bi, has_b, stream)  # bias or 0, as the CPU twin
        return o.finish()
    if width == 16:
        if _address(ent) % 2:
            raise ValueError("entries: expected a stream starting on an even address at width 16 (u16 loads); found an odd one")
        buf16 = ent[: 2 * n_entries].view(np.uint16)
    else:
        buf16 = cb.view(np.uint16)  # a stand-in of the right type, never read
    args = (ent, buf16, width, index_bits, ptr, cb, 1 << bits)
    if order == "row":
        launch(_sparse_row, _grid(rows, -(-batch // BATCH_TILE)), LINEAR_THREADS, stream,
               *args, sc, has_s, bi, has_b, xf, batch, cols, o.flat(), rows)
        return o.finish()
    _fill(o, rows, 0, sc, 0, bi, 0, stream)  # zero the accumulator
    launch(_sparse_col, _grid(cols, 1)[0], LINEAR_THREADS, stream, *args, xf, batch, cols, o.flat(), rows)
    _fill(o, rows, 1, sc, has_s, bi, has_b, stream)
    return o.finish()


def codebook_matmul(entries, bits, codebook, scales, bias, x, out, *, simd=None, stream=0):
    """``out = x @ W.T + bias`` for a packed dense codebook matrix on the
    device (twin of :func:`cmodel.kernels.linear.codebook_matmul`).

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
