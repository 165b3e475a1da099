"""SIMD selection, LLVM-IR helpers and packed-field loads shared by the
CPU kernels (owns no kernel of its own; imports only numpy, numba, llvmlite).

* The SIMD level: ``avx512``, ``avx2`` or ``portable``, chosen once from the
  CPU's features and ``CMODEL_SIMD`` (``auto`` by default), published as
  :data:`SIMD` and :data:`SIMD_OK` (the levels this CPU has).
* Packed fields (spec §6.4): LSB-first fields of any width 1..16 read with
  one unaligned load (:func:`_field_at`), whole entries (:func:`_entry`,
  :func:`_entries4`), and software prefetch of an entry range.
* LLVM-IR building blocks for the intrinsics of
  :mod:`cmodel.kernels.codebook_linear` (vector types, loads, loops, byte
  and word unpacks).
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

__all__ = ["SIMD", "SIMD_OK"]


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
