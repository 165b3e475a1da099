"""CUDA twin of :mod:`cmodel.kernels.sparse_linear`: ``Y = X @ W.T + bias``
on packed relative-index entries held on the device (spec §6.3, §6.4).

Same names, argument order and semantics as the CPU kernels (read their
docstrings): ``W[i, j] = scales[i] * codebook[code(i, j)]`` is never
expanded; the row scale is applied once per output after its sum, then the
bias; fillers have code 0 and ``codebook[0] == 0``; fields are packed
LSB-first; entry widths 2..16 (8 and 16 loaded directly as a byte / u16,
the others by bit extraction).  Plus a ``stream`` keyword.  Arrays may be
numba device arrays, any ``__cuda_array_interface__`` object, or host numpy
arrays (copied to the device; a host ``out`` is copied back), see
:mod:`._host`.

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
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from . import _warp
from ._host import as_device, check, is_device, launch, vector
from ._linear import _F32, _I, _POINTER_DTYPES, _SIM, _U8, _U16, BATCH_TILE, LINEAR_THREADS, MAX_CODEBOOK, _accumulate, _codebook, _field, _fill, _finish_kernel, _flags, _grid, _load_codebook, _operands, _store_row, _stream

__all__ = ["sparse_matmul"]


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


_sparse_row = cuda.jit(_sparse_row_kernel)
_sparse_col = cuda.jit(_sparse_col_kernel)



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


def sparse_matmul(entries, n_entries, width, index_bits, pointers, codebook, scales, bias, x, out, order, *, stream=0):
    """``out = x @ W.T + bias`` for a packed sparse codebook matrix on the
    device (twin of :func:`cmodel.kernels.sparse_linear.sparse_matmul`).

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


# Every kernel and signature the wrappers launch (tests/test_cuda_ptx.py
# compiles each for sm_80 and sm_90).
PTX_KERNELS = [
    (_sparse_row_kernel, [(_U8, _U16, _I, _I, p[::1], _F32, _I, _F32, _I, _F32, _I, _F32, _I, _I, _F32, _I)
                          for p in (types.uint16, types.uint32, types.uint64)]),
    (_sparse_col_kernel, [(_U8, _U16, _I, _I, p[::1], _F32, _I, _F32, _I, _I, _F32, _I)
                          for p in (types.uint16, types.uint32, types.uint64)]),
    (_finish_kernel, [(_F32, _I, _I, _I, _F32, _I, _F32, _I)]),
]
