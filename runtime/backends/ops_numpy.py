"""numpy implementations of every graph op (spec §10.4): the reference
semantics that every faster backend is tested against.

Each function takes float32 arrays (NCHW for 2-d ops) and the op's resolved
attributes and returns a new float32 array (or a view, for the shape ops);
inputs are never written to.  Arithmetic is float32 as PyTorch's CPU kernels
do it; only the summation order differs (spec §10.4 allows that).
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def _taps(size: int, k: int, s: int, d: int, out: int):
    """Slices of a padded axis, one per kernel tap: tap ``i`` of output
    position ``o`` reads padded index ``o*s + i*d``."""
    return [slice(i * d, i * d + s * (out - 1) + 1, s) for i in range(k)]


def conv_output_size(size: int, k: int, s: int, d: int, lo: int, hi: int) -> int:
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def pool_output_size(size: int, k: int, s: int, pad: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's ``pooling_output_shape``: with ``ceil_mode`` the last window
    must start inside the input or its left padding."""
    out = (size + 2 * pad - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    return out


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``y = x @ weight.T + bias`` over the last axis."""
    y = np.matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1) -> np.ndarray:
    """2-d cross-correlation, PyTorch's ``conv2d`` after zero padding by
    ``padding = [top, left, bottom, right]``.

    One GEMM per kernel tap (shift-and-multiply): memory stays at the size of
    the output instead of an im2col buffer ``kh·kw`` times the input.
    Depthwise convs (one input and one output channel per group) multiply
    elementwise per tap instead.
    """
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    pt, pl, pb, pr = padding
    (sh, sw), (dh, dw) = stride, dilation
    oh = conv_output_size(h, kh, sh, dh, pt, pb)
    ow = conv_output_size(w, kw, sw, dw, pl, pr)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(padding) else x
    rows, cols = _taps(h, kh, sh, dh, oh), _taps(w, kw, sw, dw, ow)
    g, kg = groups, k // groups
    if cg == 1 and kg == 1:  # depthwise
        out = np.zeros((n, k, oh, ow), F32)
        for i, rs in enumerate(rows):
            for j, cs in enumerate(cols):
                out += xp[:, :, rs, cs] * weight[:, 0, i, j][None, :, None, None]
    else:
        xh = xp.transpose(0, 2, 3, 1)  # NHWC view: each tap is a [pixels, channels] matrix
        m = n * oh * ow
        wg = weight.reshape(g, kg, cg, kh, kw)
        acc = np.zeros((m, g, kg), F32)
        for i, rs in enumerate(rows):
            for j, cs in enumerate(cols):
                tap = np.ascontiguousarray(xh[:, rs, cs, :]).reshape(m, g, cg)
                wt = np.ascontiguousarray(wg[:, :, :, i, j].transpose(0, 2, 1))  # [g, cg, kg]
                if g == 1:
                    acc[:, 0, :] += tap[:, 0, :] @ wt[0]
                else:
                    acc += np.matmul(tap.transpose(1, 0, 2), wt).transpose(1, 0, 2)
        out = acc.reshape(n, oh, ow, k).transpose(0, 3, 1, 2)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return np.ascontiguousarray(out, dtype=F32)


def batch_norm_coefficients(running_mean, running_var, weight, bias, eps: float):
    """Per-channel ``(scale, shift)`` with ``y = x·scale + shift`` equal to
    ``(x − mean) / sqrt(var + eps) · weight + bias`` (computed in float64,
    rounded once to float32)."""
    mean = running_mean.astype(np.float64)
    alpha = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    if weight is not None:
        alpha = alpha * weight.astype(np.float64)
    beta = -mean * alpha
    if bias is not None:
        beta = beta + bias.astype(np.float64)
    return alpha.astype(F32), beta.astype(F32)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode batch norm over axis 1 (the channels) of an input of rank ≥ 2."""
    scale, shift = batch_norm_coefficients(running_mean, running_var, weight, bias, eps)
    return scale_shift(x, scale, shift)


def scale_shift(x, scale, shift) -> np.ndarray:
    """``x·scale + shift`` with per-channel (axis 1) vectors."""
    b = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.reshape(b) + shift.reshape(b)


def relu(x):
    return np.maximum(x, F32(0))


def relu6(x):
    return np.minimum(np.maximum(x, F32(0)), F32(6))


def leaky_relu(x, negative_slope: float = 0.01):
    return np.where(x > 0, x, x * F32(negative_slope))


def sigmoid(x):
    # 1 / (1 + exp(-x)) without overflow: exp of −|x| only.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, F32(1) / (F32(1) + e), e / (F32(1) + e)).astype(F32, copy=False)


def tanh(x):
    return np.tanh(x)


def _erfc(z: np.ndarray) -> np.ndarray:
    """erfc in float64 with relative error < 1.2e-7 everywhere (Numerical
    Recipes' ``erfcc``, a Chebyshev fit); numpy has no erf and scipy is
    optional."""
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    r = t * np.exp(-a * a + poly)
    return np.where(z >= 0, r, 2.0 - r)


def gelu(x, approximate: str = "none"):
    if approximate == "tanh":
        inner = F32(math.sqrt(2 / math.pi)) * (x + F32(0.044715) * x * x * x)
        return F32(0.5) * x * (F32(1) + np.tanh(inner))
    # 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(−x/√2), exact in relative terms for x ≪ 0 too
    x64 = x.astype(np.float64)
    return (0.5 * x64 * _erfc(-x64 / math.sqrt(2.0))).astype(F32)


def silu(x):
    return x * sigmoid(x)


def hardswish(x):
    return x * relu6(x + F32(3)) / F32(6)


def hardsigmoid(x):
    return relu6(x + F32(3)) / F32(6)


def _pad_to(x, fill, pt: int, pl: int, hp: int, wp: int):
    """``x`` placed at (pt, pl) in an [n, c, hp, wp] array of ``fill``
    (cropped when the windows never reach the end)."""
    n, c, h, w = x.shape
    out = np.full((n, c, max(hp, pt + h), max(wp, pl + w)), fill, F32)
    out[:, :, pt : pt + h, pl : pl + w] = x
    return out


def max_pool2d(x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode: bool = False):
    """Max over each window; padding counts as −∞ (PyTorch ``max_pool2d``)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    xp = _pad_to(x, -np.inf, ph, pw, (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1)
    out = None
    for rs in _taps(h, kh, sh, dh, oh):
        for cs in _taps(w, kw, sw, dw, ow):
            tap = xp[:, :, rs, cs]
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


def _avg_divisor(size: int, k: int, s: int, pad: int, out: int, count_include_pad: bool) -> np.ndarray:
    """Per output position: the window size clipped to the padded input
    (``count_include_pad``) or to the input (PyTorch's CPU kernel)."""
    start = np.arange(out) * s - pad
    end = np.minimum(start + k, size + pad)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_pool2d(x, kernel, stride, padding=(0, 0), ceil_mode: bool = False, count_include_pad: bool = True):
    """Mean over each window (PyTorch ``avg_pool2d`` without divisor_override)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh = pool_output_size(h, kh, sh, ph, 1, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, 1, ceil_mode)
    xp = _pad_to(x, 0.0, ph, pw, (oh - 1) * sh + kh, (ow - 1) * sw + kw)
    total = np.zeros((n, c, oh, ow), F32)
    for rs in _taps(h, kh, sh, 1, oh):
        for cs in _taps(w, kw, sw, 1, ow):
            total += xp[:, :, rs, cs]
    div = _avg_divisor(h, kh, sh, ph, oh, count_include_pad)[:, None] * _avg_divisor(w, kw, sw, pw, ow, count_include_pad)[None, :]
    return total / div.astype(F32)


def adaptive_bounds(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Window ``i`` of ``out`` over ``size`` positions: ``start[i] =
    floor(i·size/out)`` to ``end[i] = ceil((i+1)·size/out)`` (exclusive)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _window_means(x: np.ndarray, axis: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    # Means of [start, end) along ``axis`` from float64 prefix sums: O(input +
    # output) work and memory however the windows overlap.
    shape = list(x.shape)
    shape[axis] += 1
    cs = np.zeros(shape, np.float64)
    np.cumsum(x, axis=axis, dtype=np.float64, out=cs[(slice(None),) * axis + (slice(1, None),)])
    sums = np.take(cs, end, axis=axis) - np.take(cs, start, axis=axis)
    count = (end - start).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return sums / count


def adaptive_avg_pool2d(x, output_size, bounds=None):
    """PyTorch ``adaptive_avg_pool2d``; ``bounds`` may hold the window bounds
    (:func:`adaptive_bounds`) precomputed for the input's height and width."""
    n, c, h, w = x.shape
    oh, ow = output_size
    if (oh, ow) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True, dtype=F32)
    (hs, he), (ws, we) = bounds if bounds is not None else (adaptive_bounds(h, oh), adaptive_bounds(w, ow))
    return _window_means(_window_means(x, 3, ws, we), 2, hs, he).astype(F32)


def flatten(x, start_dim: int = 1, end_dim: int = -1):
    r = x.ndim
    s, e = start_dim % r, end_dim % r
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])


def reshape(x, shape):
    return x.reshape((x.shape[0],) + tuple(shape[1:]))


def add(a, b=None, scalar: float | None = None):
    return a + F32(scalar) if b is None else a + b


def mul(a, b=None, scalar: float | None = None):
    return a * F32(scalar) if b is None else a * b


def cat(xs, dim: int):
    return np.concatenate(xs, axis=dim)


def softmax(x, dim: int):
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def log_softmax(x, dim: int):
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


def identity(x):
    return x
