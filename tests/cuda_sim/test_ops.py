"""cmodel.kernels.cuda.ops under the CUDA simulator: every op against the
numpy reference (cmodel.runtime.backends.ops_numpy) on tiny shapes, every launch
checked against ``PTX_KERNELS``."""

import numpy as np
import pytest
from numba import cuda

from cmodel.kernels.cuda import ops as gpu
from cmodel.runtime import ops_numpy as ref
from simutil import assert_covered, recorded_launches

TWINS_TESTED = {
    "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "identity",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "reshape", "add", "mul", "cat", "softmax",
    "log_softmax", "batch_norm", "scale_shift", "linear",
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(gpu, "OPS_THREADS", 32)


@pytest.fixture
def launches(monkeypatch):
    with recorded_launches(monkeypatch, gpu) as seen:
        yield seen
    assert_covered(seen, gpu.PTX_KERNELS)


def host(d):
    return d.copy_to_host() if not isinstance(d, np.ndarray) else d


def close(got, want, tol=2e-6):
    got = host(got)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (float(np.nanmax(np.abs(want), initial=0)) + 1.0))


RNG = np.random.default_rng(0)
# 70 elements: more than a block of 32 threads, odd; extremes for the activations
X = np.concatenate([RNG.standard_normal(60) * 4, [0.0, -0.0, 30.0, -30.0, 89.0, -89.0, 3.0, -3.0, 6.0, 1e-3]]).astype(np.float32).reshape(2, 5, 7)

UNARY = [
    ("relu", ()), ("relu6", ()), ("leaky_relu", (0.2,)), ("sigmoid", ()), ("tanh", ()), ("gelu", ("none",)),
    ("gelu", ("tanh",)), ("silu", ()), ("hardswish", ()), ("hardsigmoid", ()),
]


@pytest.mark.parametrize("name,args", UNARY)
def test_unary(name, args, launches):
    close(getattr(gpu, name)(X, *args), getattr(ref, name)(X, *args))


def test_relu_keeps_nan(launches):
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(host(gpu.relu(x)), ref.relu(x))


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("sa,sb", [
    ((2, 3, 4, 5), (2, 3, 4, 5)),  # same shape
    ((2, 3, 4, 5), (2, 3, 1, 1)),  # squeeze-excite style
    ((2, 3, 4, 5), (1, 3, 1, 5)),
    ((2, 1, 4), (1, 3, 1)),  # both broadcast
    ((3, 1), (3, 1)),
    ((1, 1), (1, 1)),
])
def test_binary_broadcasting(op, sa, sb, launches):
    a = RNG.standard_normal(sa).astype(np.float32)
    b = RNG.standard_normal(sb).astype(np.float32)
    close(getattr(gpu, op)(a, b), getattr(ref, op)(a, b))
    close(getattr(gpu, op)(b, a), getattr(ref, op)(b, a))


@pytest.mark.parametrize("op", ["add", "mul"])
def test_scalar(op, launches):
    close(getattr(gpu, op)(X, scalar=-1.5), getattr(ref, op)(X, scalar=-1.5))


def test_binary_bad_shapes():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="b: expected a shape broadcastable with"):
        gpu.add(a, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="b: expected the rank 2 of a"):
        gpu.mul(a, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="add: expected a second input or a scalar"):
        gpu.add(a)


# (kernel, stride, padding, dilation, ceil_mode) on a 2 x 2 x 7 x 6 input
POOLS = [
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), True),
    ((3, 2), (1, 2), (1, 0), (2, 1), False),
    ((2, 3), (3, 2), (1, 1), (1, 2), True),
    ((1, 1), (1, 1), (0, 0), (1, 1), False),
]
XP = RNG.standard_normal((2, 2, 7, 6)).astype(np.float32)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", POOLS)
def test_max_pool2d(kernel, stride, padding, dilation, ceil_mode, launches):
    close(gpu.max_pool2d(XP, kernel, stride, padding, dilation, ceil_mode),
          ref.max_pool2d(XP, kernel, stride, padding, dilation, ceil_mode), tol=0)


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [p for p in POOLS if p[3] == (1, 1)])
def test_avg_pool2d(kernel, stride, padding, dilation, ceil_mode, include, launches):
    close(gpu.avg_pool2d(XP, kernel, stride, padding, ceil_mode, include),
          ref.avg_pool2d(XP, kernel, stride, padding, ceil_mode, include))


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (7, 6), (10, 4)])
def test_adaptive_avg_pool2d(size, launches):
    close(gpu.adaptive_avg_pool2d(XP, size), ref.adaptive_avg_pool2d(XP, size))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (1, 3, 7)])
def test_batch_norm_and_scale_shift(shape, launches):
    x = RNG.standard_normal(shape).astype(np.float32)
    c = shape[1]
    mean, var = RNG.standard_normal(c).astype(np.float32), RNG.uniform(0.1, 2, c).astype(np.float32)
    w, b = RNG.standard_normal(c).astype(np.float32), RNG.standard_normal(c).astype(np.float32)
    close(gpu.batch_norm(x, mean, var, w, b, 1e-3), ref.batch_norm(x, mean, var, w, b, 1e-3))
    close(gpu.batch_norm(x, mean, var, eps=1e-5), ref.batch_norm(x, mean, var, eps=1e-5))
    scale, shift = ref.batch_norm_coefficients(mean, var, w, b, 1e-3)
    close(gpu.scale_shift(x, scale, shift), ref.scale_shift(x, scale, shift))


@pytest.mark.parametrize("dim", [1, 2, 3, -1])
def test_cat(dim, launches):
    shapes = [(2, 3, 4, 5), (2, 3, 4, 5)]
    shapes[1] = tuple(s + 2 if i == dim % 4 else s for i, s in enumerate(shapes[1]))
    xs = [RNG.standard_normal(s).astype(np.float32) for s in shapes + [shapes[0]]]
    close(gpu.cat(xs, dim), ref.cat(xs, dim % 4), tol=0)
    close(gpu.cat(xs[:1], dim), ref.cat(xs[:1], dim % 4), tol=0)


def test_cat_bad_shapes():
    with pytest.raises(ValueError, match=r"xs\[1\]: expected the shape \(2, 3\) but along dim 1"):
        gpu.cat([np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32)], 1)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [1, 2, -1])
def test_softmax(name, dim, launches):
    x = (RNG.standard_normal((2, 5, 7)) * 10).astype(np.float32)
    close(getattr(gpu, name)(x, dim), getattr(ref, name)(x, dim % 3))


@pytest.mark.parametrize("lead,with_bias", [((1,), True), ((2, 2), False)])
def test_linear(lead, with_bias, launches):
    w = RNG.standard_normal((3, 70)).astype(np.float32)  # 70 inputs: each thread sums 2 or 3
    b = RNG.standard_normal(3).astype(np.float32) if with_bias else None
    x = RNG.standard_normal(lead + (70,)).astype(np.float32)
    close(gpu.linear(x, w, b), ref.linear(x, w, b), tol=1e-5)


def test_views_share_memory():
    d = cuda.to_device(XP)
    f = gpu.flatten(d, 1, -1)
    assert f.shape == (2, 84)
    np.testing.assert_array_equal(host(f), ref.flatten(XP, 1, -1))
    np.testing.assert_array_equal(host(gpu.flatten(d, 2, 3)), ref.flatten(XP, 2, 3))
    r = gpu.reshape(d, [None, 4, -1])
    assert r.shape == (2, 4, 21)
    np.testing.assert_array_equal(host(r), ref.reshape(XP, [None, 4, 21]))
    assert gpu.identity(d) is d
    # views: writing through them writes the input
    f.copy_to_device(np.zeros((2, 84), np.float32))
    np.testing.assert_array_equal(host(d), np.zeros_like(XP))
    r.copy_to_device(np.ones((2, 4, 21), np.float32))
    np.testing.assert_array_equal(host(d), np.ones_like(XP))
    np.testing.assert_array_equal(host(gpu.identity(XP)), XP)


def test_device_input_and_stream(launches):
    s = cuda.stream()
    d = cuda.to_device(X, stream=s)
    y = gpu.sigmoid(gpu.relu(d, stream=s), stream=s)
    got = y.copy_to_host(stream=s)
    s.synchronize()
    close(got, ref.sigmoid(ref.relu(X)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="x: expected a C-contiguous float32 array; found float64"):
        gpu.relu(X.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a numpy array or a CUDA device array; found list"):
        gpu.tanh([1.0])
    with pytest.raises(ValueError, match="x: expected a 4-D float32 array"):
        gpu.max_pool2d(X, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="approximate: expected 'none' or 'tanh'"):
        gpu.gelu(X, "erf")
    with pytest.raises(ValueError, match="x: expected a last dimension of 70"):
        gpu.linear(X, np.zeros((5, 70), np.float32))
