"""cmodel.kernels.cuda.conv under the CUDA simulator: parity with the CPU
kernels of cmodel.kernels.conv on tiny shapes.

The cases cover groups, depthwise (with a channel multiplier), strides,
asymmetric padding, dilation, 1x1 kernels and inputs, batches of 1 and 2,
more output pixels than threads (several pixel tiles), rows with more
entries than threads (several entry chunks and the carried prefix sum),
more output channels than a GEMM tile (``KT``), all-pruned and all-filler
rows, every kind of entry width, pointer dtypes, absent and present row
scales and bias.  Launches use 32 threads to keep the simulator fast; every
launch's argument types are checked against ``PTX_KERNELS``.
"""

import numpy as np
import pytest
from numba import cuda

from cmodel.kernels import conv as cpu
from cmodel.kernels.cuda import conv as gpu
from simutil import assert_covered, recorded_launches
from test_conv_kernels import codebook_tensor, sparse_tensor

TWINS_TESTED = {"sparse_conv2d", "codebook_conv2d", "dense_conv2d"}

# (N, C, K, H, W, (R, S), stride, (top, left, bottom, right), dilation, groups)
CASES = [
    (1, 4, 3, 6, 7, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # 42 pixels, 36-entry rows: 2 tiles, 2 chunks
    (2, 4, 6, 5, 6, (3, 3), 2, (0, 1, 2, 1), 1, 2),  # groups, stride, asymmetric padding, batch 2
    (1, 4, 4, 5, 5, (3, 3), 1, (2, 2, 2, 2), 2, 4),  # depthwise, dilated
    (2, 2, 4, 4, 3, (3, 3), (2, 1), (1, 0, 0, 1), 1, 2),  # depthwise, multiplier 2
    (1, 3, 10, 4, 4, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # pointwise, K > KT
    (2, 3, 4, 3, 4, (1, 1), 2, (1, 0, 0, 1), 1, 1),  # strided 1x1, padded
    (1, 2, 3, 1, 1, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # 1x1 input
    (1, 2, 4, 4, 6, (1, 3), (1, 2), (0, 1, 0, 1), (1, 2), 2),
]
# (index_bits, bits): widths 8, 16 and odd ones
WIDTHS = [(4, 4), (8, 8), (3, 4), (1, 2), (5, 6), (8, 5), (2, 8), (6, 1)]
THREADS = 32


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(gpu, "CONV_THREADS", THREADS)


def setup(case, seed):
    n, c, k, h, w, ks, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32) if seed % 2 else None
    shape = cpu.conv2d_output_shape(x.shape, k, ks, stride, padding, dilation)
    return rng, x, bias, shape


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (float(np.abs(want).max()) + 1.0))


@pytest.mark.parametrize("i", range(len(CASES)))
def test_sparse_conv2d(i, monkeypatch):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    with recorded_launches(monkeypatch, gpu) as seen:
        for j, (index_bits, bits) in enumerate((WIDTHS[i], WIDTHS[(i + 3) % len(WIDTHS)])):
            rng, x, bias, shape = setup(case, 10 * i + j)
            t = sparse_tensor(rng, k, c // groups, r, s, index_bits, bits, scaled=(i + j) % 2 == 0)
            want = np.empty(shape, np.float32)
            cpu.sparse_conv2d(t.entries, t.n_entries, t.width, t.index_bits, t.pointers, t.codebook, t.scales, bias,
                              x, want, (r, s), stride, padding, dilation, groups)
            got = np.full(shape, np.nan, np.float32)  # every element must be written
            assert gpu.sparse_conv2d(t.entries, t.n_entries, t.width, t.index_bits, t.pointers, t.codebook, t.scales,
                                     bias, x, got, (r, s), stride, padding, dilation, groups) is got
            close(got, want)
    assert_covered(seen, gpu.PTX_KERNELS)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_codebook_conv2d(i, monkeypatch):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    with recorded_launches(monkeypatch, gpu) as seen:
        for j, bits in enumerate((8, 1 + i % 7)):
            rng, x, bias, shape = setup(case, 10 * i + j)
            t = codebook_tensor(rng, k, c // groups, r, s, bits, scaled=(i + j) % 2 == 1)
            want = np.empty(shape, np.float32)
            cpu.codebook_conv2d(t.entries, t.bits, t.codebook, t.scales, bias, x, want, (r, s), stride, padding,
                                dilation, groups)
            got = np.full(shape, np.nan, np.float32)
            gpu.codebook_conv2d(t.entries, t.bits, t.codebook, t.scales, bias, x, got, (r, s), stride, padding,
                                dilation, groups)
            close(got, want)
    assert_covered(seen, gpu.PTX_KERNELS)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_dense_conv2d(i, monkeypatch):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    rng, x, bias, shape = setup(case, i)
    wt = rng.standard_normal((k, c // groups, r, s)).astype(np.float32)
    wt[0] = 0.0
    want = np.empty(shape, np.float32)
    cpu.dense_conv2d(wt, bias, x, want, stride, padding, dilation, groups)
    got = np.full(shape, np.nan, np.float32)
    with recorded_launches(monkeypatch, gpu) as seen:
        gpu.dense_conv2d(wt, bias, x, got, stride, padding, dilation, groups)
    close(got, want)
    assert_covered(seen, gpu.PTX_KERNELS)


@pytest.mark.parametrize("ptr_dtype", [np.uint32, np.uint64, np.int64])
def test_device_arrays_stream_and_pointer_dtypes(ptr_dtype, monkeypatch):
    """Device inputs and output on a stream; every pointer dtype (host int64
    pointers are checked and widened to uint64)."""
    case = CASES[1]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    rng, x, bias, shape = setup(case, 5)
    t = sparse_tensor(rng, k, c // groups, r, s, 4, 4, scaled=True)
    want = np.empty(shape, np.float32)
    cpu.sparse_conv2d(t.entries, t.n_entries, 8, 4, t.pointers, t.codebook, t.scales, bias, x, want, (r, s), stride,
                      padding, dilation, groups)
    stream = cuda.stream()
    ptr = t.pointers.astype(ptr_dtype)
    dev = [cuda.to_device(a, stream=stream) for a in (t.entries, t.codebook, t.scales, bias, x)]
    ptr_arg = ptr if ptr_dtype == np.int64 else cuda.to_device(ptr, stream=stream)
    out = cuda.device_array(shape, np.float32, stream=stream)
    with recorded_launches(monkeypatch, gpu) as seen:
        res = gpu.sparse_conv2d(dev[0], t.n_entries, 8, 4, ptr_arg, dev[1], dev[2], dev[3], dev[4], out, (r, s),
                                stride, padding, dilation, groups, stream=stream)
    assert res is out
    close(out.copy_to_host(stream=stream), want)
    stream.synchronize()
    assert_covered(seen, gpu.PTX_KERNELS)


def test_empty_batch_launches_nothing(monkeypatch):
    x = np.zeros((0, 2, 4, 4), np.float32)
    wt = np.ones((3, 2, 3, 3), np.float32)
    out = np.empty((0, 3, 2, 2), np.float32)
    with recorded_launches(monkeypatch, gpu) as seen:
        assert gpu.dense_conv2d(wt, None, x, out) is out
    assert seen == []


def test_bad_arguments():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    wt = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous float32 array of shape"):
        gpu.dense_conv2d(wt, None, x, np.empty((1, 6, 5, 5), np.float32), 1, 0)
    with pytest.raises(ValueError, match="x: expected a 4-D float32 array"):
        gpu.dense_conv2d(wt, None, x.astype(np.float64), np.empty((1, 6, 3, 3), np.float32))
    with pytest.raises(ValueError, match="groups: expected >= 1 and dividing"):
        gpu.dense_conv2d(wt, None, x, np.empty((1, 6, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="bias: expected None or 6 float32 values"):
        gpu.dense_conv2d(wt, np.ones(5, np.float32), x, np.empty((1, 6, 3, 3), np.float32))
    with pytest.raises(ValueError, match="x: expected a numpy array or a CUDA device array; found list"):
        gpu.dense_conv2d(wt, None, x.tolist(), np.empty((1, 6, 3, 3), np.float32))
    t = codebook_tensor(rng, 6, 4, 3, 3, 4, False)
    with pytest.raises(ValueError, match="entries: expected a 1-D uint8 array of at least 108 bytes"):
        gpu.codebook_conv2d(t.entries[:-1], 4, t.codebook, None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match=r"codebook: expected 2\*\*4 float32 values"):
        gpu.codebook_conv2d(t.entries, 4, t.codebook[:8], None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="bits: expected 1..8"):
        gpu.codebook_conv2d(t.entries, 9, t.codebook, None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    s = sparse_tensor(rng, 6, 4, 3, 3, 4, 4, False)
    with pytest.raises(ValueError, match="pointers: expected K \\+ 1 = 7 counts"):
        gpu.sparse_conv2d(s.entries, s.n_entries, 8, 4, s.pointers[:-1], s.codebook, None, None, x,
                          np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="pointers: expected K \\+ 1 = 7 uint16/uint32/uint64 counts"):
        gpu.sparse_conv2d(s.entries, s.n_entries, 8, 4, cuda.to_device(s.pointers.astype(np.int32)), s.codebook,
                          None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="width, index_bits: expected 1 <= index_bits < width <= 16"):
        gpu.sparse_conv2d(s.entries, s.n_entries, 17, 4, s.pointers, s.codebook, None, None, x,
                          np.empty((1, 6, 3, 3), np.float32), 3)
