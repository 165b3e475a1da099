"""CUDA twins of the graph's other ops (:mod:`cmodel.runtime.backends.ops_numpy`,
spec §10.4): activations, pools, batch norm, broadcasting add/mul, cat,
softmax, and a dense ``linear`` for raw weights (issue 5).

Same names, argument order and semantics as the numpy reference, plus a
``stream`` keyword; each function takes a numba device array, any
``__cuda_array_interface__`` object or a host numpy array (copied to the
device, see :mod:`._host`), and returns a new float32 device array (or
a view, for the shape ops ``flatten``, ``reshape`` and ``identity``, listed
in ``VIEWS``).  Inputs are never written to.

Kernels (``T`` = ``OPS_THREADS`` threads per block, grid-stride loops over
flat C-order indices, so any size runs on a bounded grid):

* ``_unary_kernel`` -- every elementwise op and ``add``/``mul`` with a
  scalar: one kernel with the op as an int64 code (a uniform branch per
  launch) and one float32 parameter (slope or scalar).
* ``_binary_kernel`` -- ``add``/``mul`` of two arrays with broadcasting:
  the host merges adjacent dimensions that broadcast alike (same-shape
  operands become one dimension), uploads the output shape and both
  operands' element strides (0 where a size-1 dimension is broadcast) once
  per shape pair (cached), and each thread turns its output index into the
  two input offsets.
* ``_pool_kernel`` -- ``max_pool2d`` / ``avg_pool2d``, a thread per output
  element; window positions outside the input are skipped (max: the
  reference's −∞ padding; avg: its zeros), and the average divides by the
  reference's clipped window size.
* ``_adaptive_kernel`` -- ``adaptive_avg_pool2d``, a thread per output cell
  summing its ``floor(i·H/OH) .. ceil((i+1)·H/OH)`` window.
* ``_scale_shift_kernel`` -- unfolded ``batch_norm`` as ``x·scale + shift``
  per channel (coefficients computed once on the host in float64 by the
  reference's ``batch_norm_coefficients``).
* ``_cat_kernel`` -- ``cat``, one launch per input copying it into its slice.
* ``_softmax_kernel`` -- ``softmax`` / ``log_softmax``, a thread per line
  along ``dim`` (max, sum of exponentials, write): lines are short (class
  scores) and there are ``N × (other dims)`` of them.
* ``_linear_kernel`` -- ``linear`` with a raw float32 weight, a block per
  (output feature, input row): the threads stride over the inputs (coalesced
  weight and input loads) and a shared-memory tree sums their parts.

Arithmetic is float32 (sums in any order, spec §10.3); ``gelu`` uses
``erfc`` (exact in relative terms for x ≪ 0, as the reference).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from ._host import MAX_THREADS, as_device, blocks, check, describe, launch

# Threads per block of every launch here (<= MAX_THREADS, a power of two for
# the tree sum of the linear kernel).
OPS_THREADS = 128

# Shape ops: views of their input, no kernel.
VIEWS = ("flatten", "reshape", "identity")

# Op codes of _unary_kernel.
RELU, RELU6, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, HARDSWISH, HARDSIGMOID, ADD_SCALAR, MUL_SCALAR = range(12)
# Op codes of _binary_kernel.
ADD, MUL = 0, 1

_SQRT1_2 = 0.7071067811865476
_SQRT2_PI = 0.7978845608028654


# --------------------------------------------------------------- device code


@cuda.jit(device=True, inline="always")
def _sigmoid(v):
    e = math.exp(-abs(v))
    return np.float32(1.0) / (np.float32(1.0) + e) if v >= 0 else e / (np.float32(1.0) + e)


@cuda.jit(device=True, inline="always")
def _relu6(v):
    return min(max(v, np.float32(0.0)), np.float32(6.0))


def _unary_kernel(x, out, n, op, alpha):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        v = x[i]
        if op == RELU:
            r = np.float32(0.0) if v < 0 else v
        elif op == RELU6:
            r = _relu6(v)
        elif op == LEAKY_RELU:
            r = v if v > 0 else v * alpha
        elif op == SIGMOID:
            r = _sigmoid(v)
        elif op == TANH:
            r = math.tanh(v)
        elif op == GELU:
            r = np.float32(0.5) * v * math.erfc(-v * np.float32(_SQRT1_2))
        elif op == GELU_TANH:
            r = np.float32(0.5) * v * (np.float32(1.0) + math.tanh(np.float32(_SQRT2_PI) * (v + np.float32(0.044715) * v * v * v)))
        elif op == SILU:
            r = v * _sigmoid(v)
        elif op == HARDSWISH:
            r = v * _relu6(v + np.float32(3.0)) / np.float32(6.0)
        elif op == HARDSIGMOID:
            r = _relu6(v + np.float32(3.0)) / np.float32(6.0)
        elif op == ADD_SCALAR:
            r = v + alpha
        else:
            r = v * alpha
        out[i] = r


def _binary_kernel(a, b, out, n, ndim, meta, op):
    # meta: out shape, a strides, b strides (elements; 0 = broadcast), ndim each.
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        rem = i
        ia = 0
        ib = 0
        for d in range(ndim - 1, -1, -1):
            size = meta[d]
            c = rem % size
            rem = rem // size
            ia += c * meta[ndim + d]
            ib += c * meta[2 * ndim + d]
        if op == ADD:
            out[i] = a[ia] + b[ib]
        else:
            out[i] = a[ia] * b[ib]


def _pool_kernel(x, out, n, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, is_max, include_pad):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        ow = i % OW
        t = i // OW
        oh = t % OH
        base = (t // OH) * H * W
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        if is_max:
            acc = -np.inf
            for r in range(kh):
                ih = h0 + r * dh
                if ih >= 0 and ih < H:
                    for s in range(kw):
                        iw = w0 + s * dw
                        if iw >= 0 and iw < W:
                            v = x[base + ih * W + iw]
                            if v > acc or v != v:  # NaN propagates, as numpy.maximum
                                acc = v
            out[i] = acc
        else:
            acc = np.float32(0.0)
            for r in range(kh):
                ih = h0 + r
                if ih >= 0 and ih < H:
                    for s in range(kw):
                        iw = w0 + s
                        if iw >= 0 and iw < W:
                            acc += x[base + ih * W + iw]
            he = min(h0 + kh, H + ph)
            we = min(w0 + kw, W + pw)
            if include_pad:
                cnt = (he - h0) * (we - w0)
            else:
                cnt = (min(he, H) - max(h0, 0)) * (min(we, W) - max(w0, 0))
            out[i] = acc / np.float32(cnt)


def _adaptive_kernel(x, out, n, H, W, OH, OW):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        ow = i % OW
        t = i // OW
        oh = t % OH
        base = (t // OH) * H * W
        hs = (oh * H) // OH
        he = ((oh + 1) * H + OH - 1) // OH
        ws = (ow * W) // OW
        we = ((ow + 1) * W + OW - 1) // OW
        acc = np.float32(0.0)
        for ih in range(hs, he):
            for iw in range(ws, we):
                acc += x[base + ih * W + iw]
        out[i] = acc / np.float32((he - hs) * (we - ws))


def _scale_shift_kernel(x, scale, shift, out, n, C, inner):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        c = (i // inner) % C
        out[i] = x[i] * scale[c] + shift[c]


def _cat_kernel(x, out, n, inner_in, inner_out, offset):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        o = i // inner_in
        out[o * inner_out + offset + (i - o * inner_in)] = x[i]


def _softmax_kernel(x, out, lines, L, inner, log):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for t in range(start, lines, step):
        o = t // inner
        base = o * L * inner + (t - o * inner)
        m = -np.inf
        for j in range(L):
            v = x[base + j * inner]
            if v > m or v != v:
                m = v
        s = np.float32(0.0)
        for j in range(L):
            s += math.exp(x[base + j * inner] - m)
        if log:
            ls = math.log(s)
            for j in range(L):
                out[base + j * inner] = x[base + j * inner] - m - ls
        else:
            for j in range(L):
                out[base + j * inner] = math.exp(x[base + j * inner] - m) / s


def _linear_kernel(x, w, bias, has_bias, out, I, O):
    part = cuda.shared.array(MAX_THREADS, types.float32)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    o = cuda.blockIdx.x
    row = cuda.blockIdx.y
    acc = np.float32(0.0)
    for i in range(t, I, nt):
        acc += x[row * I + i] * w[o * I + i]
    part[t] = acc
    cuda.syncthreads()
    half = nt // 2
    while half > 0:
        if t < half:
            part[t] += part[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        out[row * O + o] = part[0] + (bias[o] if has_bias else np.float32(0.0))


_unary = cuda.jit(_unary_kernel)
_binary = cuda.jit(_binary_kernel)
_pool = cuda.jit(_pool_kernel)
_adaptive = cuda.jit(_adaptive_kernel)
_scale_shift_k = cuda.jit(_scale_shift_kernel)
_cat = cuda.jit(_cat_kernel)
_softmax = cuda.jit(_softmax_kernel)
_linear = cuda.jit(_linear_kernel)

_F = types.float32[::1]
_I = types.int64
_F32 = types.float32

# Every kernel and signature the wrappers launch (tests/test_cuda_ptx.py
# compiles each for sm_80 and sm_90; the simulator tests check every launch
# against this list).
PTX_KERNELS = [
    (_unary_kernel, [(_F, _F, _I, _I, _F32)]),
    (_binary_kernel, [(_F, _F, _F, _I, _I, types.int64[::1], _I)]),
    (_pool_kernel, [(_F, _F) + (_I,) * 15]),
    (_adaptive_kernel, [(_F, _F, _I, _I, _I, _I, _I)]),
    (_scale_shift_kernel, [(_F, _F, _F, _F, _I, _I, _I)]),
    (_cat_kernel, [(_F, _F, _I, _I, _I, _I)]),
    (_softmax_kernel, [(_F, _F, _I, _I, _I, _I)]),
    (_linear_kernel, [(_F, _F, _F, _I, _F, _I, _I)]),
]


# --------------------------------------------------------------- host side


def _threads() -> int:
    t = max(1, min(int(OPS_THREADS), MAX_THREADS))
    return 1 << (t.bit_length() - 1)  # a power of two (the linear tree sum)


def _input(x, name, stream):
    d = as_device(x, name, stream)
    check(d, name, np.float32, what="a C-contiguous float32 array")
    return d


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _flat(d):
    return d.reshape(_size(d.shape)) if len(d.shape) != 1 else d


def _new(shape, stream):
    return cuda.device_array(tuple(int(s) for s in shape), np.float32, stream=stream)


def _grid_stride(kernel, n, stream, *args):
    if n:
        nt = _threads()
        launch(kernel, blocks(n, nt), nt, stream, *args)


def _map(x, op, alpha, stream, name="x"):
    d = _input(x, name, stream)
    out = _new(d.shape, stream)
    n = _size(d.shape)
    _grid_stride(_unary, n, stream, _flat(d), _flat(out), n, op, np.float32(alpha))
    return out


def relu(x, *, stream=0):
    """``max(x, 0)`` (NaN stays NaN), a new device array.  Like every
    function here: ``x`` is a float32 device array, ``__cuda_array_interface__``
    object or numpy array, C-contiguous; ``stream`` a numba stream or 0;
    raises ``ValueError`` for anything else."""
    return _map(x, RELU, 0.0, stream)


def relu6(x, *, stream=0):
    """``min(max(x, 0), 6)``."""
    return _map(x, RELU6, 0.0, stream)


def leaky_relu(x, negative_slope: float = 0.01, *, stream=0):
    """``x`` where ``x > 0``, else ``x * negative_slope``."""
    return _map(x, LEAKY_RELU, negative_slope, stream)


def sigmoid(x, *, stream=0):
    """``1 / (1 + exp(-x))`` without overflow."""
    return _map(x, SIGMOID, 0.0, stream)


def tanh(x, *, stream=0):
    return _map(x, TANH, 0.0, stream)


def gelu(x, approximate: str = "none", *, stream=0):
    """``0.5·x·erfc(−x/√2)``, or the tanh approximation (``approximate="tanh"``)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh'; found {approximate!r}")
    return _map(x, GELU_TANH if approximate == "tanh" else GELU, 0.0, stream)


def silu(x, *, stream=0):
    return _map(x, SILU, 0.0, stream)


def hardswish(x, *, stream=0):
    return _map(x, HARDSWISH, 0.0, stream)


def hardsigmoid(x, *, stream=0):
    return _map(x, HARDSIGMOID, 0.0, stream)


def identity(x, *, stream=0):
    """``x`` itself (as a device array; a numpy ``x`` is copied)."""
    return as_device(x, "x", stream)


def flatten(x, start_dim: int = 1, end_dim: int = -1, *, stream=0):
    """A view with dimensions ``start_dim .. end_dim`` merged (C order)."""
    d = _input(x, "x", stream)
    shape = tuple(int(v) for v in d.shape)
    s, e = start_dim % len(shape), end_dim % len(shape)
    return d.reshape(shape[:s] + (_size(shape[s:e + 1]),) + shape[e + 1:])


def reshape(x, shape, *, stream=0):
    """A view of shape ``(x.shape[0],) + shape[1:]`` (one −1 allowed)."""
    d = _input(x, "x", stream)
    rest = [int(v) for v in shape[1:]]
    if rest.count(-1) == 1:
        known = _size([v for v in rest if v != -1])
        rest[rest.index(-1)] = _size(d.shape[1:]) // max(known, 1)
    new = (int(d.shape[0]),) + tuple(rest)
    if _size(new) != _size(d.shape):
        raise ValueError(f"shape: expected {_size(d.shape)} elements like the input {tuple(d.shape)}; found {new}")
    return d.reshape(new)


# Broadcast metadata per (a shape, b shape) on the device, uploaded once.
_META: dict = {}
_META_MAX = 256


def _broadcast_meta(sa, sb):
    if len(sa) != len(sb):
        raise ValueError(f"b: expected the rank {len(sa)} of a (spec §10.4); found shape {tuple(sb)}")
    dims = []  # (size, a stride unit?, b stride unit?) with merged runs
    for x, y in zip(sa, sb):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"b: expected a shape broadcastable with {tuple(sa)}; found {tuple(sb)}")
        size = max(x, y)
        if size == 1:
            continue
        fa, fb = x == size, y == size  # does the operand run along this dimension
        if dims and dims[-1][1] == fa and dims[-1][2] == fb:
            dims[-1][0] *= size
        else:
            dims.append([size, fa, fb])
    if not dims:
        dims = [[1, True, True]]
    shape = [d[0] for d in dims]
    sa_, sb_ = [0] * len(dims), [0] * len(dims)
    ra = rb = 1
    for i in range(len(dims) - 1, -1, -1):
        if dims[i][1]:
            sa_[i], ra = ra, ra * shape[i]
        if dims[i][2]:
            sb_[i], rb = rb, rb * shape[i]
    return np.array(shape + sa_ + sb_, np.int64), len(dims)


def _binary_op(a, b, op, stream):
    da, db = _input(a, "a", stream), _input(b, "b", stream)
    sa, sb = tuple(int(v) for v in da.shape), tuple(int(v) for v in db.shape)
    key = (sa, sb)
    if key not in _META:
        meta, ndim = _broadcast_meta(sa, sb)
        if len(_META) >= _META_MAX:
            _META.clear()
        _META[key] = (cuda.to_device(meta), ndim)
    meta, ndim = _META[key]
    shape = tuple(max(x, y) for x, y in zip(sa, sb))
    out = _new(shape, stream)
    n = _size(shape)
    _grid_stride(_binary, n, stream, _flat(da), _flat(db), _flat(out), n, ndim, meta, op)
    return out


def add(a, b=None, scalar: float | None = None, *, stream=0):
    """``a + b`` with broadcasting (same rank, sizes equal or 1), or
    ``a + float32(scalar)``."""
    if b is None:
        if scalar is None:
            raise ValueError("add: expected a second input or a scalar; found neither")
        return _map(a, ADD_SCALAR, scalar, stream, "a")
    return _binary_op(a, b, ADD, stream)


def mul(a, b=None, scalar: float | None = None, *, stream=0):
    """``a * b`` with broadcasting, or ``a * float32(scalar)``."""
    if b is None:
        if scalar is None:
            raise ValueError("mul: expected a second input or a scalar; found neither")
        return _map(a, MUL_SCALAR, scalar, stream, "a")
    return _binary_op(a, b, MUL, stream)


def _nchw(x, stream):
    d = _input(x, "x", stream)
    if len(d.shape) != 4:
        raise ValueError(f"x: expected a 4-D float32 array (N, C, H, W); found {describe(d)}")
    return d


def _pool_out(size, k, s, p, dil, ceil_mode):
    out = (size + 2 * p - dil * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    if out < 1:
        raise ValueError(f"expected the pooling window to fit the padded input; found an output length of {out}")
    return out


def _pool2d(x, kernel, stride, padding, dilation, ceil_mode, is_max, include_pad, stream):
    d = _nchw(x, stream)
    n, c, h, w = (int(v) for v in d.shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(int(v) for v in p) for p in (kernel, stride, padding, dilation))
    oh, ow = _pool_out(h, kh, sh, ph, dh, ceil_mode), _pool_out(w, kw, sw, pw, dw, ceil_mode)
    out = _new((n, c, oh, ow), stream)
    m = n * c * oh * ow
    _grid_stride(_pool, m, stream, _flat(d), _flat(out), m, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                 int(is_max), int(include_pad))
    return out


def max_pool2d(x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode: bool = False, *, stream=0):
    """Max over each window; padding counts as −∞ (PyTorch ``max_pool2d``)."""
    return _pool2d(x, kernel, stride, padding, dilation, ceil_mode, True, False, stream)


def avg_pool2d(x, kernel, stride, padding=(0, 0), ceil_mode: bool = False, count_include_pad: bool = True, *, stream=0):
    """Mean over each window (PyTorch ``avg_pool2d`` without divisor_override)."""
    return _pool2d(x, kernel, stride, padding, (1, 1), ceil_mode, False, count_include_pad, stream)


def adaptive_avg_pool2d(x, output_size, bounds=None, *, stream=0):
    """PyTorch ``adaptive_avg_pool2d``.  ``bounds`` is accepted for parity
    with the reference; the kernel computes the same windows itself."""
    d = _nchw(x, stream)
    n, c, h, w = (int(v) for v in d.shape)
    oh, ow = (int(v) for v in output_size)
    out = _new((n, c, oh, ow), stream)
    m = n * c * oh * ow
    _grid_stride(_adaptive, m, stream, _flat(d), _flat(out), m, h, w, oh, ow)
    return out


def scale_shift(x, scale, shift, *, stream=0):
    """``x·scale + shift`` with per-channel (axis 1) float32 vectors."""
    d = _input(x, "x", stream)
    if len(d.shape) < 2:
        raise ValueError(f"x: expected a float32 array of rank >= 2; found {describe(d)}")
    c = int(d.shape[1])
    vs = []
    for a, name in ((scale, "scale"), (shift, "shift")):
        v = as_device(np.asarray(a, np.float32) if isinstance(a, np.ndarray) else a, name, stream)
        check(v, name, np.float32, shape=(c,), what=f"{c} float32 values")
        vs.append(v)
    out = _new(d.shape, stream)
    n = _size(d.shape)
    _grid_stride(_scale_shift_k, n, stream, _flat(d), vs[0], vs[1], _flat(out), n, c, _size(d.shape[2:]))
    return out


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5, *, stream=0):
    """Eval-mode batch norm over axis 1: per-channel ``scale, shift`` on the
    host in float64, rounded once to float32 (the formula of
    ``cmodel.runtime.backends.ops_numpy.batch_norm_coefficients``, which kernels may
    not import; the simulator test checks they agree), then
    :func:`scale_shift`.  The statistics are host arrays."""
    alpha = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    if weight is not None:
        alpha = alpha * np.asarray(weight, np.float64)
    beta = -np.asarray(running_mean, np.float64) * alpha
    if bias is not None:
        beta = beta + np.asarray(bias, np.float64)
    return scale_shift(x, alpha.astype(np.float32), beta.astype(np.float32), stream=stream)


def cat(xs, dim: int, *, stream=0):
    """Inputs of the same rank, equal but along ``dim``, joined along it."""
    ds = [_input(x, f"xs[{i}]", stream) for i, x in enumerate(xs)]
    if not ds:
        raise ValueError("xs: expected at least one array; found none")
    first = tuple(int(v) for v in ds[0].shape)
    dim = dim % len(first)
    for i, d in enumerate(ds):
        s = tuple(int(v) for v in d.shape)
        if len(s) != len(first) or s[:dim] + s[dim + 1:] != first[:dim] + first[dim + 1:]:
            raise ValueError(f"xs[{i}]: expected the shape {first} but along dim {dim}; found {s}")
    total = sum(int(d.shape[dim]) for d in ds)
    shape = first[:dim] + (total,) + first[dim + 1:]
    out = _new(shape, stream)
    tail = _size(first[dim + 1:])
    offset = 0
    for d in ds:
        inner_in = int(d.shape[dim]) * tail
        n = _size(d.shape)
        _grid_stride(_cat, n, stream, _flat(d), _flat(out), n, inner_in, total * tail, offset)
        offset += inner_in
    return out


def _softmax_op(x, dim, log, stream):
    d = _input(x, "x", stream)
    shape = tuple(int(v) for v in d.shape)
    dim = dim % len(shape)
    inner = _size(shape[dim + 1:])
    lines = _size(shape[:dim]) * inner
    out = _new(shape, stream)
    _grid_stride(_softmax, lines, stream, _flat(d), _flat(out), lines, shape[dim], inner, int(log))
    return out


def softmax(x, dim: int, *, stream=0):
    """``exp(x − max) / Σ exp(x − max)`` along ``dim``."""
    return _softmax_op(x, dim, False, stream)


def log_softmax(x, dim: int, *, stream=0):
    """``x − max − log Σ exp(x − max)`` along ``dim``."""
    return _softmax_op(x, dim, True, stream)


def linear(x, weight, bias=None, *, stream=0):
    """``x @ weight.T + bias`` over the last axis, with a raw float32
    ``weight`` ``[O, I]`` (compressed weights go to
    :mod:`cmodel.kernels.cuda.linear`)."""
    d = _input(x, "x", stream)
    w = as_device(np.asarray(weight, np.float32) if isinstance(weight, np.ndarray) else weight, "weight", stream)
    check(w, "weight", np.float32, 2, what="a 2-D float32 array [O, I]")
    o, i = (int(v) for v in w.shape)
    if len(d.shape) < 1 or tuple(d.shape)[-1] != i:
        raise ValueError(f"x: expected a last dimension of {i} (the weight's inputs); found {describe(d)}")
    if bias is not None:
        b = as_device(np.asarray(bias, np.float32) if isinstance(bias, np.ndarray) else bias, "bias", stream)
        check(b, "bias", np.float32, shape=(o,), what=f"None or {o} float32 values")
    lead = tuple(int(v) for v in d.shape)[:-1]
    rows = _size(lead)
    out = _new(lead + (o,), stream)
    if rows and o:
        nt = _threads()
        flat_w = _flat(w)
        launch(_linear, (o, rows), nt, stream, _flat(d), flat_w, b if bias is not None else flat_w,
               int(bias is not None), _flat(out), i, o)
    return out
