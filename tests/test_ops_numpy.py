"""runtime/backends/ops_numpy.py against PyTorch, op by op (spec §10.4).

Property tests draw shapes and attributes (asymmetric padding, dilation,
groups incl. depthwise and channel multipliers, ceil_mode, count_include_pad)
and compare with the PyTorch equivalent the spec names.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from cmodel.runtime.backends import ops_numpy as ops
from graph_torch import assert_close

SETTINGS = settings(max_examples=40, deadline=None)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@st.composite
def conv_cases(draw):
    g = draw(st.sampled_from(["dense", "grouped", "depthwise", "multiplier"]))
    c = draw(st.integers(1, 6))
    if g == "dense":
        groups, k = 1, draw(st.integers(1, 6))
    elif g == "grouped":
        groups = draw(st.integers(1, 3))
        c, k = c * groups, groups * draw(st.integers(1, 3))
    elif g == "depthwise":
        groups, k = c, c
    else:
        groups, k = c, c * draw(st.integers(2, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    pad = [draw(st.integers(0, 3)) for _ in range(4)]
    h = draw(st.integers(max(1, dil[0] * (r - 1) + 1 - pad[0] - pad[2]), 12))
    w = draw(st.integers(max(1, dil[1] * (s - 1) + 1 - pad[1] - pad[3]), 12))
    n = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return n, c, h, w, k, groups, r, s, stride, pad, dil, bias


@SETTINGS
@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_conv2d(case, seed):
    n, c, h, w, k, groups, r, s, stride, pad, dil, bias = case
    rng = np.random.default_rng(seed)
    x, wt = rand(rng, n, c, h, w), rand(rng, k, c // groups, r, s)
    b = rand(rng, k) if bias else None
    y = ops.conv2d(x, wt, b, stride, pad, dil, groups)
    t, l, bo, ri = pad
    ref = F.conv2d(F.pad(torch.from_numpy(x), (l, ri, t, bo)), torch.from_numpy(wt), None if b is None else torch.from_numpy(b), stride, 0, dil, groups).numpy()
    assert_close(y, ref)


@st.composite
def pool_cases(draw, max_pool):
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))] if max_pool else [1, 1]
    h = draw(st.integers(max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]), 11))
    w = draw(st.integers(max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1]), 11))
    return k, s, p, d, draw(st.booleans()), draw(st.booleans()), h, w


@SETTINGS
@given(pool_cases(True), st.integers(0, 2**32 - 1))
def test_max_pool2d(case, seed):
    k, s, p, d, ceil, _, h, w = case
    x = rand(np.random.default_rng(seed), 2, 3, h, w)
    y = ops.max_pool2d(x, k, s, p, d, ceil)
    ref = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil).numpy()
    np.testing.assert_array_equal(y, ref)  # a max is exact


@SETTINGS
@given(pool_cases(False), st.integers(0, 2**32 - 1))
def test_avg_pool2d(case, seed):
    k, s, p, _, ceil, include_pad, h, w = case
    x = rand(np.random.default_rng(seed), 2, 3, h, w)
    y = ops.avg_pool2d(x, k, s, p, ceil, include_pad)
    ref = F.avg_pool2d(torch.from_numpy(x), k, s, p, ceil, include_pad).numpy()
    assert_close(y, ref)


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12), st.integers(1, 12))
def test_adaptive_avg_pool2d(h, w, oh, ow):
    x = rand(np.random.default_rng(h * 100 + w), 2, 3, h, w)
    y = ops.adaptive_avg_pool2d(x, (oh, ow))
    assert_close(y, F.adaptive_avg_pool2d(torch.from_numpy(x), (oh, ow)).numpy())


EXTREMES = np.array([-1e4, -100, -20, -5, -3, -1, -1e-3, 0, 1e-3, 1, 3, 5, 20, 100, 1e4], np.float32)


@pytest.mark.parametrize(
    "name, ref",
    [
        ("relu", F.relu),
        ("relu6", F.relu6),
        ("sigmoid", torch.sigmoid),
        ("tanh", torch.tanh),
        ("silu", F.silu),
        ("hardswish", F.hardswish),
        ("hardsigmoid", F.hardsigmoid),
    ],
)
def test_elementwise(name, ref):
    x = np.concatenate([EXTREMES, rand(np.random.default_rng(0), 200, scale=4)]).reshape(5, -1)
    y = getattr(ops, name)(x)
    r = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, r, rtol=1e-6, atol=1e-7)
    assert y.dtype == np.float32


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = np.concatenate([EXTREMES, rand(np.random.default_rng(1), 200, scale=4)]).reshape(5, -1)
    y = ops.gelu(x, approximate)
    r = F.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    # PyTorch computes 1 + erf (or 1 + tanh) in float32, which cancels for
    # x ≪ 0: agree with it in absolute terms ...
    np.testing.assert_allclose(y, r, rtol=1e-6, atol=1e-6)
    if approximate == "none":
        # ... and with the exact value in relative terms, tiny outputs included.
        exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64).ravel()]).reshape(x.shape)
        np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-44)


def test_leaky_relu():
    x = EXTREMES.reshape(3, 5)
    np.testing.assert_array_equal(ops.leaky_relu(x, 0.2), F.leaky_relu(torch.from_numpy(x), 0.2).numpy())


@pytest.mark.parametrize("dim", [1, 2, -1])
def test_softmax_and_log_softmax(dim):
    x = rand(np.random.default_rng(2), 2, 5, 7, scale=10)
    assert_close(ops.softmax(x, dim % 3), F.softmax(torch.from_numpy(x), dim).numpy())
    assert_close(ops.log_softmax(x, dim % 3), F.log_softmax(torch.from_numpy(x), dim).numpy())


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (2, 4, 3, 3)])
def test_batch_norm(shape, affine):
    rng = np.random.default_rng(3)
    x = rand(rng, *shape)
    c = shape[1]
    mean, var = rand(rng, c), np.abs(rand(rng, c)) + 0.1
    w, b = (rand(rng, c), rand(rng, c)) if affine else (None, None)
    y = ops.batch_norm(x, mean, var, w, b, 1e-3)
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    assert_close(y, F.batch_norm(t(x), t(mean), t(var), t(w), t(b), False, 0.0, 1e-3).numpy())


def test_linear_any_leading_dims():
    rng = np.random.default_rng(4)
    x, w, b = rand(rng, 2, 3, 5), rand(rng, 4, 5), rand(rng, 4)
    assert_close(ops.linear(x, w, b), F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy())


def test_shape_ops_and_binary():
    rng = np.random.default_rng(5)
    x = rand(rng, 2, 3, 4, 5)
    assert ops.flatten(x, 1, -1).shape == (2, 60)
    assert ops.flatten(x, 2, 3).shape == (2, 3, 20)
    np.testing.assert_array_equal(ops.reshape(x, (None, 12, 5)), x.reshape(2, 12, 5))
    y = rand(rng, 2, 3, 1, 5)
    np.testing.assert_array_equal(ops.add(x, y), (torch.from_numpy(x) + torch.from_numpy(y)).numpy())
    np.testing.assert_array_equal(ops.mul(x, y), (torch.from_numpy(x) * torch.from_numpy(y)).numpy())
    np.testing.assert_array_equal(ops.mul(x, scalar=0.1), torch.mul(torch.from_numpy(x), 0.1).numpy())
    np.testing.assert_array_equal(ops.add(x, scalar=0.1), torch.add(torch.from_numpy(x), 0.1).numpy())
    np.testing.assert_array_equal(ops.cat([x, y], 2), torch.cat([torch.from_numpy(x), torch.from_numpy(y)], 2).numpy())
