"""Numba kernels for the chunked canonical Huffman streams (spec: huffman coding).

Callers (``cmodel.codecs.huffman``) validate the code lengths and the chunk offsets
first; these kernels then touch memory only inside ``stream`` and ``out`` on
any input that passed those checks, and report bad data per chunk through a
status array instead of raising.

Bit order is DEFLATE's: bytes are read LSB first, so ``load64(p) >> (bit & 7)``
holds the next stream bits from bit 0 up, and the decode tables are indexed by
the next ``PEEK_BITS`` stream bits (bit-reversed canonical codes).

Decode tables, built by ``cmodel.codecs.huffman``:

* ``multi`` (uint32[4096]): up to three whole codes that fit in the 12 peeked
  bits.  Bits 0..23 hold the symbols (first in the low byte), bits 24..27 the
  bits they take, bits 28..29 how many symbols (1..3).
* ``single`` (uint16[4096]): one code: symbol in bits 0..7, its length above.

All index arithmetic is uint64: Numba adds a negative-index fix-up to every
signed index, and mixing signed with unsigned integers gives floats.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

# Status per chunk, reported to the caller.
OK = 0
OVERRUN = 1  # the codes run past the chunk's last byte
TRAILING_BYTES = 2  # the chunk has a whole byte after its last code
PADDING = 3  # bits after the last code in the last byte are not zero

PEEK_BITS = 12

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U3 = np.uint64(3)
_U4 = np.uint64(4)
_U7 = np.uint64(7)
_U8 = np.uint64(8)
_U15 = np.uint64(15)
_U16 = np.uint64(16)
_U24 = np.uint64(24)
_U28 = np.uint64(28)
_U32 = np.uint64(32)
_PEEK_MASK = np.uint64((1 << PEEK_BITS) - 1)
# Fast loops: one refill gives >= 57 bits, enough for 4 lookups of <= 12 bits
# (48 bits = at most 6 bytes of input); 4 lookups write at most 4 * 3
# symbols, and the last 4-byte store reaches 3 bytes past its first symbol.
_LOOKUPS = 4
_IN_STEP = np.uint64(6)
_OUT_STEP = np.uint64(12)
_OUT_SLACK = np.uint64(13)
LANES = 4  # chunks decoded in lockstep by one thread


@njit(cache=True, inline="always")
def _load64(a, p):
    # Little-endian 8-byte load; LLVM merges it into one unaligned load.
    return (np.uint64(a[p]) | (np.uint64(a[p + _U1]) << _U8)
            | (np.uint64(a[p + np.uint64(2)]) << _U16) | (np.uint64(a[p + _U3]) << _U24)
            | (np.uint64(a[p + _U4]) << _U32) | (np.uint64(a[p + np.uint64(5)]) << np.uint64(40))
            | (np.uint64(a[p + np.uint64(6)]) << np.uint64(48)) | (np.uint64(a[p + _U7]) << np.uint64(56)))


@intrinsic
def _store32(typingctx, a, p, v):
    """Store the low 4 bytes of uint64 ``v`` little-endian at ``a[p]``, as one
    unaligned store (LLVM does not merge four byte stores inside the loops)."""

    def codegen(context, builder, sig, args):
        ary, i, val = args
        i32 = context.get_value_type(types.uint32)
        val = builder.trunc(val, i32)
        if not np.little_endian:
            val = builder.bswap(val)
        ptr = builder.gep(context.make_array(sig.args[0])(context, builder, ary).data, [i])
        builder.store(val, builder.bitcast(ptr, i32.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(a, p, v), codegen


@njit(cache=True, inline="always")
def _safe_iters(bit, in_end, o, out_end):
    """Refills the fast loop can do without reading or writing out of bounds."""
    p = bit >> _U3
    if p + _U8 > in_end or o + _OUT_SLACK > out_end:
        return _U0
    return min((in_end - _U8 - p) // _IN_STEP, (out_end - _OUT_SLACK - o) // _OUT_STEP) + _U1


@njit(cache=True, inline="always")
def _refill(stream, bit):
    return _load64(stream, bit >> _U3) >> (bit & _U7)


@njit(cache=True, inline="always")
def _lookup(multi, out, v, bit, o):
    e = np.uint64(multi[v & _PEEK_MASK])
    _store32(out, o, e)
    n = (e >> _U24) & _U15
    return v >> n, bit + n, o + (e >> _U28)


@njit(cache=True)
def _fast1(stream, multi, out, bit, in_end, o, out_end):
    k = _safe_iters(bit, in_end, o, out_end)
    while k:
        for _ in range(k):
            v = _refill(stream, bit)
            for _ in range(_LOOKUPS):
                v, bit, o = _lookup(multi, out, v, bit, o)
        k = _safe_iters(bit, in_end, o, out_end)
    return bit, o


@njit(cache=True)
def _fast4(stream, multi, out, b0, b1, b2, b3, e0, e1, e2, e3, o0, o1, o2, o3, f0, f1, f2, f3):
    # Four independent chunks interleaved, so the CPU overlaps their
    # dependency chains (table load -> shift -> next table index).
    k = min(min(_safe_iters(b0, e0, o0, f0), _safe_iters(b1, e1, o1, f1)),
            min(_safe_iters(b2, e2, o2, f2), _safe_iters(b3, e3, o3, f3)))
    while k:
        for _ in range(k):
            v0 = _refill(stream, b0)
            v1 = _refill(stream, b1)
            v2 = _refill(stream, b2)
            v3 = _refill(stream, b3)
            for _ in range(_LOOKUPS):
                v0, b0, o0 = _lookup(multi, out, v0, b0, o0)
                v1, b1, o1 = _lookup(multi, out, v1, b1, o1)
                v2, b2, o2 = _lookup(multi, out, v2, b2, o2)
                v3, b3, o3 = _lookup(multi, out, v3, b3, o3)
        k = min(min(_safe_iters(b0, e0, o0, f0), _safe_iters(b1, e1, o1, f1)),
                min(_safe_iters(b2, e2, o2, f2), _safe_iters(b3, e3, o3, f3)))
    return b0, b1, b2, b3, o0, o1, o2, o3


@njit(cache=True)
def _finish(stream, single, out, bit, in_end, o, out_end):
    """Decode the rest of a chunk one code at a time, reading no byte at or
    past ``in_end`` (those read as zero), then check how the chunk ends."""
    while o < out_end:
        p = bit >> _U3
        if p + _U8 <= in_end:
            v = _load64(stream, p)
        else:
            v = _U0
            s = _U0
            while p < in_end:
                v |= np.uint64(stream[p]) << s
                p += _U1
                s += _U8
        t = single[(v >> (bit & _U7)) & _PEEK_MASK]
        out[o] = t
        bit += np.uint64(t >> np.uint16(8))
        o += _U1
    if bit > in_end * _U8:
        return OVERRUN
    if (bit + _U7) >> _U3 < in_end:
        return TRAILING_BYTES
    if bit & _U7 and stream[bit >> _U3] >> (bit & _U7):
        return PADDING
    return OK


@njit(cache=True)
def _decode_group(stream, offsets, multi, single, chunk_symbols, out, status, g):
    # Chunks LANES * g .. LANES * g + LANES - 1: in lockstep while all have
    # room for the fast loop, then each on its own.
    n_chunks = np.uint64(offsets.size - 1)
    c = np.uint64(g * LANES)
    m = min(np.uint64(LANES), n_chunks - c)
    bits = np.empty(LANES, np.uint64)
    ends = np.empty(LANES, np.uint64)
    outs = np.empty(LANES, np.uint64)
    out_ends = np.empty(LANES, np.uint64)
    for j in range(m):
        i = c + np.uint64(j)
        bits[j] = offsets[i] * _U8
        ends[j] = offsets[i + _U1]
        outs[j] = i * chunk_symbols
        out_ends[j] = min(outs[j] + chunk_symbols, np.uint64(out.size))
    if m == LANES:
        (bits[0], bits[1], bits[2], bits[3], outs[0], outs[1], outs[2], outs[3]) = _fast4(
            stream, multi, out, bits[0], bits[1], bits[2], bits[3], ends[0], ends[1], ends[2], ends[3],
            outs[0], outs[1], outs[2], outs[3], out_ends[0], out_ends[1], out_ends[2], out_ends[3])
    for j in range(m):
        bit, o = _fast1(stream, multi, out, bits[j], ends[j], outs[j], out_ends[j])
        status[c + np.uint64(j)] = _finish(stream, single, out, bit, ends[j], o, out_ends[j])


@njit(cache=True, parallel=True)
def decode_chunks(stream, offsets, multi, single, chunk_symbols, out, status):
    """Decode every chunk of a validated stream into ``out``, groups of
    ``LANES`` chunks in parallel.

    Args:
        stream: uint8, the whole stream.
        offsets: uint64[n_chunks + 1], validated chunk byte offsets.
        multi, single: the decode tables (module docstring).
        chunk_symbols: uint64, symbols per chunk (the last may have fewer).
        out: uint8[n_symbols], written in place.
        status: uint8[n_chunks], set to OK or the problem of each chunk.
    """
    for g in prange((offsets.size - 1 + LANES - 1) // LANES):
        _decode_group(stream, offsets, multi, single, chunk_symbols, out, status, g)


@njit(cache=True)
def decode_chunks_serial(stream, offsets, multi, single, chunk_symbols, out, status):
    """:func:`decode_chunks` on the calling thread only (no thread pool)."""
    for g in range((offsets.size - 1 + LANES - 1) // LANES):
        _decode_group(stream, offsets, multi, single, chunk_symbols, out, status, g)


@njit(cache=True, parallel=True)
def chunk_bits(symbols, lengths, chunk_symbols, bits):
    """``bits[i]`` = total code length of the symbols of chunk ``i``."""
    n = symbols.size
    for i in prange(bits.size):
        s = 0
        for j in range(i * chunk_symbols, min((i + 1) * chunk_symbols, n)):
            s += lengths[symbols[j]]
        bits[i] = s


@njit(cache=True, parallel=True)
def encode_chunks(symbols, codes, lengths, chunk_symbols, offsets, out):
    """Write each chunk's codes LSB first from ``offsets[i]``.

    ``codes`` are the bit-reversed canonical codes (uint64), so that writing
    them LSB first puts the code's most significant bit first (RFC 1951
    §3.1.1).  ``out`` must be zeroed: padding bits are left as found.
    """
    n = symbols.size
    for i in prange(offsets.size - 1):
        p = offsets[i]
        acc = _U0
        k = _U0
        for j in range(i * chunk_symbols, min((i + 1) * chunk_symbols, n)):
            s = symbols[j]
            acc |= codes[s] << k
            k += np.uint64(lengths[s])
            if k >= _U32:
                _store32(out, p, acc)
                acc >>= _U32
                k -= _U32
                p += _U4
        while k > _U0:
            out[p] = acc
            acc >>= _U8
            k -= min(k, _U8)
            p += _U1
