"""CUDA twin of :mod:`cmodel.kernels.huffman`: chunked canonical Huffman
decode on the device (spec §6.4 ``huffman`` coding, issue 5).

:func:`decode_chunks` takes the same arrays as the CPU kernel (the stream,
the validated chunk offsets, the ``multi`` and ``single`` tables that
``cmodel.codecs.huffman`` builds, ``chunk_symbols``, ``out`` and ``status``) and
reports the same status code per chunk (``OK``, ``OVERRUN``,
``TRAILING_BYTES``, ``PADDING`` of the CPU module).
:func:`cmodel.codecs.huffman.decode_device` mirrors :func:`cmodel.codecs.huffman.decode`
on top of it: the same checks (the same code), the same ``CmzError``
messages, and a device array as the result.

Thread mapping: a chunk per thread, grid-stride over the chunks, blocks of
``HUFFMAN_THREADS``; chunk ``i`` writes symbols ``i * chunk_symbols`` on
(every chunk but the last holds exactly ``chunk_symbols`` symbols, so no
prefix sum is needed).  The ``multi`` table (16 KB) is copied to shared
memory per block: each step peeks 12 bits and emits up to three symbols
from it; near the chunk's end, where a multi entry would write past it,
one symbol at a time comes from ``single``.  Peeked bytes at or past the
chunk's end read as zero, exactly as in the CPU ``_finish``, so the
symbols, the bits consumed and therefore the status agree with the CPU
decoder on every input.  Parallelism is the number of chunks: the default
``chunk_symbols`` (65536) gives few chunks per tensor, so a GPU wants
files written with small chunks (e.g. 1024-4096 symbols) to fill its
threads.

Like the CPU kernels this module trusts validated input: it reads only
``stream[offsets[i] .. offsets[i + 1] - 1]`` and writes only inside ``out``
for offsets that passed ``cmodel.codecs.huffman``'s checks; the checked decode
on the device is :func:`cmodel.codecs.huffman.decode_device`, which runs those
checks and then this module's :func:`decode_chunks` (kernels never import
``cmodel``, DESIGN §1).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from .. import huffman as _cpu
from ._host import as_device, blocks, check, describe, is_device, launch

__all__ = ["decode_chunks"]

OK = _cpu.OK
OVERRUN = _cpu.OVERRUN
TRAILING_BYTES = _cpu.TRAILING_BYTES
PADDING = _cpu.PADDING
PEEK_BITS = _cpu.PEEK_BITS

# Threads (chunks) per block.
HUFFMAN_THREADS = 64
MAX_BLOCKS = 65535
_TABLE = 1 << PEEK_BITS
_MASK = _TABLE - 1


# --------------------------------------------------------------- device code


@cuda.jit(device=True)
def _peek(stream, bit, end):
    """The stream bits from ``bit`` on (at least PEEK_BITS), bytes at or past
    ``end`` read as zero: 3 bytes hold 12 bits after a shift < 8."""
    p = bit >> 3
    v = np.int64(0)
    if p < end:
        v = np.int64(stream[p])
    if p + 1 < end:
        v |= np.int64(stream[p + 1]) << 8
    if p + 2 < end:
        v |= np.int64(stream[p + 2]) << 16
    return (v >> (bit & 7)) & _MASK


def _decode_kernel(stream, offsets, multi, single, chunk_symbols, out, status):
    s_multi = cuda.shared.array(_TABLE, types.uint32)
    for k in range(cuda.threadIdx.x, _TABLE, cuda.blockDim.x):
        s_multi[k] = multi[k]
    cuda.syncthreads()
    n_chunks = offsets.shape[0] - 1
    n_out = out.shape[0]
    c = cuda.grid(1)
    while c < n_chunks:
        end = np.int64(offsets[c + 1])
        bit = np.int64(offsets[c]) * 8
        o = np.int64(c) * chunk_symbols
        o_end = min(o + chunk_symbols, n_out)
        while o < o_end:
            v = _peek(stream, bit, end)
            e = np.int64(s_multi[v])
            n = e >> 28
            if o + n <= o_end:
                out[o] = e & 255
                if n > 1:
                    out[o + 1] = (e >> 8) & 255
                if n > 2:
                    out[o + 2] = (e >> 16) & 255
                bit += (e >> 24) & 15
                o += n
            else:
                t = np.int64(single[v])
                out[o] = t & 255
                bit += t >> 8
                o += 1
        if bit > end * 8:
            status[c] = OVERRUN
        elif (bit + 7) >> 3 < end:
            status[c] = TRAILING_BYTES
        elif (bit & 7) != 0 and (np.int64(stream[bit >> 3]) >> (bit & 7)) != 0:
            status[c] = PADDING
        else:
            status[c] = OK
        c += cuda.gridsize(1)


_decode = cuda.jit(_decode_kernel)

# Every kernel and signature the wrappers launch (tests/test_cuda_ptx.py).
PTX_KERNELS = [
    (_decode_kernel, [(types.uint8[::1], types.uint64[::1], types.uint32[::1], types.uint16[::1], types.int64,
                       types.uint8[::1], types.uint8[::1])]),
]


# --------------------------------------------------------------- host side


class _Written:
    """A device array written by a kernel, copied back to a host ``out``."""

    def __init__(self, a, name, dtype, n, stream):
        if isinstance(a, np.ndarray):
            if not (a.dtype == dtype and a.shape == (n,) and a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"{name}: expected a writeable C-contiguous {np.dtype(dtype)} array of shape ({n},); found {describe(a)}")
            self.host, self.dev = a, cuda.device_array(n, dtype, stream=stream)
        elif is_device(a):
            self.host, self.dev = None, as_device(a, name, stream)
            check(self.dev, name, dtype, shape=(n,))
        else:
            raise ValueError(f"{name}: expected a {np.dtype(dtype)} array of shape ({n},) (device or numpy); found {describe(a)}")

    def finish(self, stream):
        if self.host is not None:
            self.dev.copy_to_host(self.host, stream=stream)


def decode_chunks(stream, offsets, multi, single, chunk_symbols, out, status, *, cuda_stream=0):
    """Decode every chunk of a validated stream into ``out`` on the device
    (twin of :func:`cmodel.kernels.huffman.decode_chunks`).

    Args:
        stream: uint8, the whole stream (device, or host and copied).
        offsets: uint64[n_chunks + 1], validated chunk byte offsets.
        multi, single: the decode tables (``cmodel.kernels.huffman`` doc),
            uint32[4096] and uint16[4096].
        chunk_symbols: symbols per chunk (the last may have fewer).
        out: uint8[n_symbols], written in place (a device array, or a host
            array the result is copied back into).
        status: uint8[n_chunks], set to OK or the problem of each chunk
            (device or host, as ``out``).
        cuda_stream: a numba CUDA stream, or 0 (the default stream); named
            so because ``stream`` is the Huffman stream.

    Raises:
        ValueError: arrays of the wrong dtype or shape.  Their values are
            trusted: offsets must have passed ``cmodel.codecs.huffman``'s checks.
    """
    s = cuda_stream
    buf = as_device(stream, "stream", s)
    check(buf, "stream", np.uint8, 1)
    off = as_device(offsets, "offsets", s)
    check(off, "offsets", np.uint64, 1)
    n_chunks = int(off.shape[0]) - 1
    mt = as_device(multi, "multi", s)
    check(mt, "multi", np.uint32, shape=(_TABLE,))
    st = as_device(single, "single", s)
    check(st, "single", np.uint16, shape=(_TABLE,))
    chunk = int(chunk_symbols)
    if chunk < 1:
        raise ValueError(f"chunk_symbols: expected >= 1; found {chunk}")
    shape = tuple(int(v) for v in getattr(out, "shape", ()))
    if len(shape) != 1:
        raise ValueError(f"out: expected a 1-D uint8 array; found {describe(out)}")
    o = _Written(out, "out", np.uint8, shape[0], s)
    stt = _Written(status, "status", np.uint8, n_chunks, s)
    if n_chunks > 0 and int(buf.shape[0]) > 0:
        launch(_decode, blocks(n_chunks, HUFFMAN_THREADS, MAX_BLOCKS), HUFFMAN_THREADS, s,
               buf, off, mt, st, chunk, o.dev, stt.dev)
    o.finish(s)
    stt.finish(s)
    if s:
        s.synchronize()
