"""cmodel.kernels.cuda.linear under the CUDA simulator: parity with the CPU
kernels (themselves tested against numpy in tests/test_linear_kernels.py) on
tiny matrices from the real encoder, every entry width, both orders, batch 1
and > 1, and the edge cases of the CPU tests (empty rows, all-filler lines,
an all-zero matrix, degenerate shapes, zero activations in column order).

The simulator runs every CUDA thread as a Python thread, so shapes stay at a
few dozen rows and columns; most tests cap the grid at 2 blocks so that the
grid-stride loops run too.  Every launch's argument types are checked
against ``PTX_KERNELS``.
"""

import numpy as np
import pytest
from numba import cuda

from cmodel.kernels import codebook_linear, sparse_linear
from cmodel.kernels.cuda import _linear, _warp
from cmodel.kernels.cuda import codebook_linear as gpu_codebook
from cmodel.kernels.cuda import sparse_linear as gpu_sparse
from simutil import assert_covered, recorded_launches
from test_linear_kernels import RTOL, WIDTHS, encode, inputs, reference

ORDERS = ("row", "col")


@pytest.fixture(autouse=True)
def launches(monkeypatch):
    """Every launch of every test is checked against ``PTX_KERNELS``."""
    with recorded_launches(monkeypatch, _linear, gpu_sparse, gpu_codebook) as seen:
        yield seen
    if seen:
        assert_covered(seen, gpu_sparse.PTX_KERNELS + gpu_codebook.PTX_KERNELS)


@pytest.fixture
def few_blocks(monkeypatch):
    monkeypatch.setattr(_linear, "MAX_BLOCKS", 2)


def run_both(c, x, bias):
    """(device result, CPU result) for the same call."""
    outs = []
    for sparse, codebook in ((gpu_sparse, gpu_codebook), (sparse_linear, codebook_linear)):
        out = np.full(x.shape[:-1] + (c.rows,), np.nan, np.float32)
        if c.encoding == "sparse":
            res = sparse.sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers, c.codebook, c.scales, bias, x, out, c.order)
        else:
            res = codebook.codebook_matmul(c.entries, c.bits, c.codebook, c.scales, bias, x, out)
        assert res is out
        outs.append(out)
    return outs


def check(c, x, bias=None):
    got, want = run_both(c, x, bias)
    _, mag = reference(c, x, bias)
    assert got.shape == want.shape
    err = np.abs(got - want)
    bad = ~(err <= 2 * RTOL * mag)  # both within RTOL of the float64 reference
    assert not bad.any(), f"max error {err.max():.3g} at {np.argwhere(bad)[:3].tolist()}, scale {mag[bad][:3]}"
    return got


# ------------------------------------------------------------------- sparse


@pytest.mark.parametrize("r,b", WIDTHS, ids=[f"w{r + b}-r{r}" for r, b in WIDTHS])
@pytest.mark.parametrize("order", ORDERS)
def test_sparse_every_width(tmp_path, few_blocks, r, b, order):
    rng = np.random.default_rng(r * 100 + b)
    rows, cols = int(rng.integers(5, 11)), int(rng.integers(20, 70))
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w[rng.integers(0, rows)] = 0.0  # an empty row
    c = encode(tmp_path, w, sparsity=0.6, bits=b, index_bits=r, order=order, scale="row")
    assert (c.width, c.order) == (r + b, order)
    check(c, inputs(rng, 1, cols, 0.3), rng.standard_normal(rows, dtype=np.float32))
    c = encode(tmp_path, w, sparsity=0.6, bits=b, index_bits=r, order=order, scale="none")
    check(c, inputs(rng, 3, cols, 0.3), None)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (37, 1), (3, 100)])
def test_sparse_degenerate_shapes(tmp_path, few_blocks, order, shape):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(shape, dtype=np.float32)
    for (r, b), batch in (((1, 1), 1), ((8, 8), 3)):
        c = encode(tmp_path, w, sparsity=0.5 if w.size > 1 else 0.0, bits=b, index_bits=r, order=order)
        check(c, inputs(rng, batch, shape[1]), rng.standard_normal(shape[0], dtype=np.float32))
    x = inputs(rng, 1, shape[1])[0]  # 1-D input gives 1-D output
    got, want = run_both(c, x, None)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [1, 2])
def test_sparse_all_filler_lines(tmp_path, few_blocks, order, r):
    # Each line's only weight is at its far end: a run of fillers, then one
    # entry (several 32-entry warp chunks per line at r = 1).
    n = 40
    w = np.zeros((n, n), np.float32)
    if order == "row":
        w[:, -1] = np.linspace(1, 2, n)
    else:
        w[-1, :] = np.linspace(1, 2, n)
    w[5, 7] = 3.0
    c = encode(tmp_path, w, sparsity=0.5, bits=2, index_bits=r, order=order)
    assert c.fillers() > n * ((n - 1) >> r) - n
    rng = np.random.default_rng(r)
    for batch in (1, 3):
        check(c, inputs(rng, batch, n), rng.standard_normal(n, dtype=np.float32))


@pytest.mark.parametrize("order", ORDERS)
def test_sparse_all_zero_matrix(tmp_path, order):
    w = np.zeros((20, 30), np.float32)
    c = encode(tmp_path, w, sparsity=0.5, bits=4, index_bits=4, order=order)
    assert c.n_entries == 0
    bias = np.arange(20, dtype=np.float32)
    for batch in (1, 3):
        x = inputs(np.random.default_rng(0), batch, 30)
        assert (check(c, x, bias) == bias).all()
        assert (run_both(c, x, None)[0] == 0).all()


def test_sparse_batch_beyond_one_tile(tmp_path, few_blocks):
    # More batch rows than BATCH_TILE: two groups, the second ragged.
    rng = np.random.default_rng(12)
    w = rng.standard_normal((9, 45), dtype=np.float32)
    batch = _linear.BATCH_TILE + 2
    for order in ORDERS:
        c = encode(tmp_path, w, sparsity=0.5, bits=4, index_bits=3, order=order)
        check(c, inputs(rng, batch, 45, 0.3), rng.standard_normal(9, dtype=np.float32))


def test_sparse_many_blocks(tmp_path):
    # The uncapped grid: a warp per row in 10 blocks (37 rows, 4 per block).
    rng = np.random.default_rng(13)
    w = rng.standard_normal((37, 53), dtype=np.float32)
    for order in ORDERS:
        c = encode(tmp_path, w, sparsity=0.7, bits=5, index_bits=4, order=order)
        check(c, inputs(rng, 1, 53, 0.2), rng.standard_normal(37, dtype=np.float32))


def test_col_order_skips_zero_activations(tmp_path, few_blocks):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 48), dtype=np.float32)
    c = encode(tmp_path, w, sparsity=0.7, bits=4, index_bits=3, order="col")
    for batch in (1, 3):
        for zf in (0.6, 1.0):
            check(c, inputs(rng, batch, 48, zf), None)
    # A column zero in some batch rows only is still used for the others.
    x = inputs(rng, 3, 48)
    x[:2, ::2] = 0.0
    check(c, x, rng.standard_normal(16, dtype=np.float32))


def test_row_and_col_order_agree(tmp_path, few_blocks):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((12, 40), dtype=np.float32)
    cr = encode(tmp_path, w, sparsity=0.8, bits=5, index_bits=3, order="row")
    cc = encode(tmp_path, w, sparsity=0.8, bits=5, index_bits=3, order="col")
    x = inputs(rng, 2, 40, 0.5)
    np.testing.assert_allclose(run_both(cr, x, None)[0], run_both(cc, x, None)[0], rtol=1e-5, atol=1e-5)


def test_device_arrays_in_and_out(tmp_path, few_blocks):
    # Device inputs stay on the device; a device out is written in place.
    rng = np.random.default_rng(8)
    w = rng.standard_normal((10, 33), dtype=np.float32)
    x = inputs(rng, 3, 33)
    bias = rng.standard_normal(10, dtype=np.float32)
    for order in ORDERS:
        c = encode(tmp_path, w, sparsity=0.5, bits=6, index_bits=2, order=order)
        want = np.empty((3, 10), np.float32)
        sparse_linear.sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers, c.codebook, c.scales, bias, x, want, order)
        dev = [cuda.to_device(np.ascontiguousarray(a)) for a in (c.entries, c.pointers.astype(np.uint32), c.codebook, c.scales, bias, x)]
        out = cuda.device_array((3, 10), np.float32)
        res = gpu_sparse.sparse_matmul(dev[0], c.n_entries, c.width, c.index_bits, dev[1], dev[2], dev[3], dev[4], dev[5], out, order)
        assert res is out
        np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- codebook


@pytest.mark.parametrize("bits", range(1, 9))
def test_codebook_every_width(tmp_path, few_blocks, bits):
    rng = np.random.default_rng(bits)
    # Odd column counts: rows start mid-byte for bits < 8.
    for rows, cols in ((7, 37), (1, 1), (9, 1)):
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        c = encode(tmp_path, w, bits=bits, scale="row")
        assert c.encoding == "codebook" and c.bits == bits
        check(c, inputs(rng, 1, cols), rng.standard_normal(rows, dtype=np.float32))
        c = encode(tmp_path, w, bits=bits, scale="none")
        check(c, inputs(rng, 3, cols), None)


def test_codebook_batch_beyond_one_tile_and_many_blocks(tmp_path):
    rng = np.random.default_rng(30)
    w = rng.standard_normal((37, 53), dtype=np.float32)
    c = encode(tmp_path, w, bits=8)
    check(c, inputs(rng, 1, 53), rng.standard_normal(37, dtype=np.float32))
    c = encode(tmp_path, w[:6], bits=3)
    check(c, inputs(rng, _linear.BATCH_TILE + 3, 53), rng.standard_normal(6, dtype=np.float32))


# ------------------------------------------------------------------- arguments


def test_bad_arguments_raise(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 40), dtype=np.float32)
    s = encode(tmp_path, w, sparsity=0.5, bits=4, index_bits=4)
    d = encode(tmp_path, w, bits=4)
    x = inputs(rng, 2, 40)
    out = np.empty((2, 8), np.float32)
    args = (s.entries, s.n_entries, s.width, s.index_bits, s.pointers, s.codebook, s.scales, None)
    with pytest.raises(ValueError, match="x: expected"):
        gpu_sparse.sparse_matmul(*args, x.astype(np.float64), out, "row")
    with pytest.raises(ValueError, match="out: expected batch 2"):
        gpu_sparse.sparse_matmul(*args, x, np.empty((3, 8), np.float32), "row")
    with pytest.raises(ValueError, match="pointers: expected"):
        gpu_sparse.sparse_matmul(*args, x, out, "col")
    with pytest.raises(ValueError, match="order: expected"):
        gpu_sparse.sparse_matmul(*args, x, out, "diagonal")
    with pytest.raises(ValueError, match="entries: expected"):
        gpu_sparse.sparse_matmul(s.entries[:1], *args[1:], x, out, "row")
    with pytest.raises(ValueError, match="width, index_bits: expected"):
        gpu_sparse.sparse_matmul(s.entries, s.n_entries, 14, 4, *args[4:], x, out, "row")
    with pytest.raises(ValueError, match="pointers: expected counts from 0 to n_entries"):
        gpu_sparse.sparse_matmul(s.entries, s.n_entries - 1, *args[2:], x, out, "row")
    with pytest.raises(ValueError, match="bias: expected"):
        gpu_codebook.codebook_matmul(d.entries, 4, d.codebook, None, np.zeros(7, np.float32), x, out)
    with pytest.raises(ValueError, match="codebook: expected float32"):
        gpu_codebook.codebook_matmul(d.entries, 4, d.codebook[:8], None, None, x, out)
    with pytest.raises(ValueError, match="bits: expected 1..8"):
        gpu_codebook.codebook_matmul(d.entries, 9, d.codebook, None, None, x, out)


# ------------------------------------------------------------------- warp primitives


def test_shuffle_scan_and_sum_agree_with_the_simulator_versions():
    # The kernels run _warp's one-exchange scan and sum under the simulator;
    # on a GPU, the shuffle versions.  Both in one kernel, on the same data.
    @cuda.jit
    def kernel(a, f, scan, scan_shfl, total, total_shfl):
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x * cuda.blockDim.x + t
        lane = t & 31
        scan[i] = _warp.inclusive_scan(a[i], lane)
        scan_shfl[i] = _warp._inclusive_scan_shfl(a[i], lane)
        v = _warp.warp_sum(f[i])
        u = _warp._warp_sum_shfl(f[i])
        if lane == 0:
            total[i // 32] = v
            total_shfl[i // 32] = u

    rng = np.random.default_rng(0)
    a = rng.integers(0, 300, 128).astype(np.int64)
    f = rng.standard_normal(128).astype(np.float32)
    scan, scan_shfl = np.zeros(128, np.int64), np.zeros(128, np.int64)
    total, total_shfl = np.zeros(4, np.float32), np.zeros(4, np.float32)
    kernel[2, 64](a, f, scan, scan_shfl, total, total_shfl)
    np.testing.assert_array_equal(scan, np.cumsum(a.reshape(4, 32), axis=1).ravel())
    np.testing.assert_array_equal(scan_shfl, scan)
    np.testing.assert_array_equal(total_shfl, total)
    np.testing.assert_allclose(total, f.reshape(4, 32).sum(axis=1), rtol=1e-5)
