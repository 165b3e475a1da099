"""cmodel.kernels.linear: sparse and dense codebook GEMV/GEMM on packed weights.

Every kernel is checked against a float64 reference built from the decoded
matrix (``Compressed.dense()``), on weights made by the real encoder.  The
tolerance is relative to ``|x| @ |W|.T + |bias|`` (the scale of the terms
summed), so cancellation in a sum does not make a correct result fail.
"""

import contextlib
import os

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cmodel
from cmodel.kernels import codebook_linear, simd, sparse_linear

RTOL = 1e-5
ORDERS = ("row", "col")
# Every dense codebook path: the SIMD levels this CPU lacks are skipped.
SIMD_MODES = [
    pytest.param(level, marks=pytest.mark.skipif(not simd.SIMD_OK[level], reason=f"this CPU lacks {level}"))
    for level in ("portable", "avx2", "avx512")
]

# (index_bits r, code bits b) giving every entry width 2..16, plus the
# extremes of r at width 8.
WIDTHS = [(max(1, min(8, w // 2)), w - max(1, min(8, w // 2))) for w in range(2, 17)] + [(1, 7), (7, 1)]


def encode(tmp_path, w, **rule):
    """``w`` through the real encoder (packed), read back as kernels see it."""
    path = tmp_path / f"t{np.random.default_rng().integers(1 << 62)}.cmz"
    cmodel.save_file({"w": w}, path, rules={"*": {"compress": True, "coding": "packed", **rule}}, producer=None)
    with cmodel.open(path) as f:
        return f.read_compressed("w")


def reference(c, x, bias):
    w = c.dense().reshape(c.rows, c.cols).astype(np.float64)
    x64 = x.astype(np.float64)
    ref = x64 @ w.T
    mag = np.abs(x64) @ np.abs(w).T
    if bias is not None:
        ref = ref + bias
        mag = mag + np.abs(bias)
    return ref, mag


def run(c, x, bias, **kw):
    out = np.full(x.shape[:-1] + (c.rows,), np.nan, np.float32)
    if c.encoding == "sparse":
        res = sparse_linear.sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers, c.codebook, c.scales, bias, x, out, c.order)
    else:
        res = codebook_linear.codebook_matmul(c.entries, c.bits, c.codebook, c.scales, bias, x, out, **kw)
    assert res is out
    return out


def check(c, x, bias=None, **kw):
    out = run(c, x, bias, **kw)
    ref, mag = reference(c, x, bias)
    assert out.shape == ref.shape
    err = np.abs(out - ref)
    bad = ~(err <= RTOL * mag)
    assert not bad.any(), f"max error {err.max():.3g} at {np.argwhere(bad)[:3].tolist()}, scale {mag[bad][:3]}"
    return out


@contextlib.contextmanager
def numba_threads(n):
    """Numba on ``n`` threads (at most as many as it started)."""
    saved = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def inputs(rng, batch, cols, zero_fraction=0.0):
    x = rng.standard_normal((batch, cols), dtype=np.float32)
    x[rng.random(x.shape) < zero_fraction] = 0.0
    return x


# ------------------------------------------------------------------- sparse


@pytest.mark.parametrize("r,b", WIDTHS, ids=[f"w{r + b}-r{r}" for r, b in WIDTHS])
@pytest.mark.parametrize("order", ORDERS)
def test_sparse_every_width_matches_reference(tmp_path, r, b, order):
    rng = np.random.default_rng(r * 100 + b)
    rows, cols = int(rng.integers(1, 40)), int(rng.integers(1, 300))
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w[rng.integers(0, rows)] = 0.0  # an empty row
    for scale in ("row", "none"):
        c = encode(tmp_path, w, sparsity=0.85, bits=b, index_bits=r, order=order, scale=scale)
        assert (c.width, c.order) == (r + b, order)
        bias = rng.standard_normal(rows, dtype=np.float32)
        for batch in (1, 5):
            check(c, inputs(rng, batch, cols, 0.3), bias)
            check(c, inputs(rng, batch, cols), None)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (3, 1000)])
def test_sparse_degenerate_shapes(tmp_path, order, shape):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(shape, dtype=np.float32)
    for r, b in ((1, 1), (4, 4), (8, 8)):
        c = encode(tmp_path, w, sparsity=0.5 if w.size > 1 else 0.0, bits=b, index_bits=r, order=order)
        for batch in (1, 5):
            check(c, inputs(rng, batch, shape[1]), rng.standard_normal(shape[0], dtype=np.float32))
    x = inputs(rng, 1, shape[1])[0]  # 1-D input gives 1-D output
    assert run(c, x, None).shape == (shape[0],)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [1, 2, 4])
def test_sparse_all_filler_lines(tmp_path, order, r):
    # Each line's only weight is at its far end: the line is a long run of
    # fillers (2**r - 1, 0) with small r, then one entry.
    n = 300
    w = np.zeros((n, n), np.float32)
    if order == "row":
        w[:, -1] = np.linspace(1, 2, n)
    else:
        w[-1, :] = np.linspace(1, 2, n)
    w[5, 7] = 3.0
    c = encode(tmp_path, w, sparsity=0.5, bits=2, index_bits=r, order=order)  # prunes only zeros
    assert c.fillers() > n * ((n - 1) >> r) - n
    rng = np.random.default_rng(r)
    for batch in (1, 5):
        check(c, inputs(rng, batch, n), rng.standard_normal(n, dtype=np.float32))


@pytest.mark.parametrize("order", ORDERS)
def test_sparse_all_zero_matrix(tmp_path, order):
    w = np.zeros((20, 70), np.float32)
    c = encode(tmp_path, w, sparsity=0.5, bits=4, index_bits=4, order=order)
    assert c.n_entries == 0
    bias = np.arange(20, dtype=np.float32)
    for batch in (1, 5):
        out = check(c, inputs(np.random.default_rng(0), batch, 70), bias)
        assert (out == bias).all()
        assert (run(c, inputs(np.random.default_rng(0), batch, 70), None) == 0).all()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r,b", [(4, 4), (4, 5), (8, 8)])
def test_sparse_large_parallel(tmp_path, order, r, b):
    # Big enough for several threads (and several column-order accumulators).
    rng = np.random.default_rng(11)
    w = rng.standard_normal((600, 900), dtype=np.float32)
    c = encode(tmp_path, w, sparsity=0.5, bits=b, index_bits=r, order=order)
    assert c.n_entries >= 1 << 18
    for batch in (1, 3):
        check(c, inputs(rng, batch, 900, 0.5), rng.standard_normal(600, dtype=np.float32))


def test_col_order_skips_zero_activations(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 256), dtype=np.float32)
    c = encode(tmp_path, w, sparsity=0.7, bits=4, index_bits=3, order="col")
    for batch in (1, 4):
        for zf in (0.5, 0.95, 1.0):
            check(c, inputs(rng, batch, 256, zf), None)
    # A column zero in some batch rows only is still used for the others.
    x = inputs(rng, 4, 256)
    x[:3, ::2] = 0.0
    check(c, x, rng.standard_normal(64, dtype=np.float32))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [3, 4, 5, 6, 7])
def test_sparse_byte_entries_at_the_largest_deltas(tmp_path, order, r):
    # Width-8 entries: in column order r <= 6 takes the loop that sums four
    # deltas inside the bytes of a u32 (4 * 63 = 252 at r = 6, one carry
    # away from wrong), r = 7 the general one.  Lines whose weights sit
    # exactly 2**r apart (every delta the largest, 2**r - 1), then further
    # apart (fillers), longer than a few groups of eight entries.
    n = 40 << r
    w = np.zeros((48, n), np.float32)
    rng = np.random.default_rng(r)
    for i in range(48):
        step = (1 << r) if i % 2 == 0 else (1 << r) + 1 + i  # fillers on odd lines
        w[i, i % 3 :: step] = rng.uniform(1, 2, len(range(i % 3, n, step))) * rng.choice([-1, 1])
    if order == "col":
        w = np.ascontiguousarray(w.T)
    zeros = float((w == 0).mean())
    c = encode(tmp_path, w, sparsity=zeros - 1e-6, bits=8 - r, index_bits=r, order=order)  # prunes only zeros
    assert (c.width, c.n_entries - c.fillers()) == (8, int((w != 0).sum()))
    for batch in (1, 3):
        check(c, inputs(rng, batch, w.shape[1]), rng.standard_normal(w.shape[0], dtype=np.float32))
        check(c, inputs(rng, batch, w.shape[1], 0.5), None)


def test_col_order_splits_the_active_work(tmp_path):
    # Zeros in runs (a dead half, dead blocks): the parts split the entries
    # of the active columns, not of all columns; every split must still add
    # up to the whole product, for every part count.
    rng = np.random.default_rng(5)
    w = rng.standard_normal((600, 1000), dtype=np.float32)
    c = encode(tmp_path, w, sparsity=0.5, bits=4, index_bits=4, order="col")
    assert c.n_entries >= 1 << 18  # big enough to run on several threads
    for batch in (1, 3):
        x = inputs(rng, batch, 1000)
        x[:, :500] = 0.0
        x[:, 700:760] = 0.0
        for threads in (1, 2):
            with numba_threads(threads):
                check(c, x, None)
        x[:, :-1] = 0.0  # one active column: fewer columns than parts
        check(c, x, None)


def test_row_and_col_order_agree(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((50, 120), dtype=np.float32)
    cr = encode(tmp_path, w, sparsity=0.8, bits=5, index_bits=3, order="row")
    cc = encode(tmp_path, w, sparsity=0.8, bits=5, index_bits=3, order="col")
    np.testing.assert_array_equal(cr.dense(), cc.dense())
    x = inputs(rng, 2, 120, 0.5)
    np.testing.assert_allclose(run(cr, x, None), run(cc, x, None), rtol=1e-5, atol=1e-5)


def test_sparse_huffman_decoded_entries(tmp_path):
    # Huffman streams are decoded into writable arrays: another specialisation.
    rng = np.random.default_rng(9)
    w = rng.standard_normal((30, 90), dtype=np.float32)
    path = tmp_path / "h.cmz"
    cmodel.save_file({"w": w}, path, rules={"*": {"compress": True, "sparsity": 0.8, "bits": 4, "index_bits": 4, "coding": "huffman"}})
    with cmodel.open(path) as f:
        c = f.read_compressed("w")
    check(c, inputs(rng, 1, 90), None)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 30),
    cols=st.integers(1, 90),
    r=st.integers(1, 8),
    b=st.integers(1, 8),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    order=st.sampled_from(ORDERS),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_sparse_property(tmp_path_factory, rows, cols, r, b, sparsity, order, batch, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    c = encode(tmp_path_factory.mktemp("p"), w, sparsity=sparsity, bits=b, index_bits=r, order=order)
    check(c, inputs(rng, batch, cols, 0.3), rng.standard_normal(rows, dtype=np.float32))


# ------------------------------------------------------------------- codebook


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("simd", SIMD_MODES)
def test_codebook_every_width_matches_reference(tmp_path, bits, simd):
    rng = np.random.default_rng(bits)
    # Columns: SIMD blocks plus tails, and odd counts (4-bit rows then start
    # mid-byte and take the generic path).
    for rows, cols in ((7, 64 * 3 + 5), (5, 33), (1, 1), (9, 1), (1, 130), (6, 31)):
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        for scale in ("row", "none"):
            c = encode(tmp_path, w, bits=bits, scale=scale)
            assert c.encoding == "codebook" and c.bits == bits
            for batch in (1, 5):
                check(c, inputs(rng, batch, cols), rng.standard_normal(rows, dtype=np.float32), simd=simd)
                check(c, inputs(rng, batch, cols), None, simd=simd)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("simd", SIMD_MODES)
def test_codebook_large_tiles(tmp_path, bits, simd):
    # Several GEMM tiles of GEMM_COLS columns and a ragged last tile, rows not
    # a multiple of the SIMD row groups, enough work for several threads.
    rng = np.random.default_rng(bits + 20)
    rows, cols = 203, 2 * codebook_linear.GEMM_COLS + 70
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    c = encode(tmp_path, w, bits=bits)
    for batch in (1, 4):
        check(c, inputs(rng, batch, cols), rng.standard_normal(rows, dtype=np.float32), simd=simd)


@pytest.mark.parametrize("simd", SIMD_MODES[1:])
@pytest.mark.parametrize("bits", [4, 8])
def test_codebook_simd_and_portable_agree(tmp_path, bits, simd):
    rng = np.random.default_rng(bits + 40)
    w = rng.standard_normal((37, 64 * 5 + 9), dtype=np.float32)
    c = encode(tmp_path, w, bits=bits)
    for batch in (1, 3):
        x = inputs(rng, batch, w.shape[1])
        a = run(c, x, None, simd=simd)
        p = run(c, x, None, simd="portable")
        ref, mag = reference(c, x, None)
        assert (np.abs(a - p) <= 2 * RTOL * mag).all()


def test_codebook_simd_choice_is_published():
    assert simd.SIMD in ("avx512", "avx2", "portable")
    assert simd.SIMD_OK[simd.SIMD]
    # auto picks the best level the CPU has
    best = next(level for level in ("avx512", "avx2", "portable") if simd.SIMD_OK[level])
    assert simd.SIMD == best or os.environ.get(simd.SIMD_ENV, "auto") != "auto"


def test_codebook_simd_level_checked(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 64), dtype=np.float32)
    c = encode(tmp_path, w, bits=4)
    x = inputs(rng, 1, 64)
    with pytest.raises(ValueError, match="simd: expected None or one of avx512, avx2, portable; found 'sse'"):
        run(c, x, None, simd="sse")
    for level, ok in simd.SIMD_OK.items():
        if not ok:
            with pytest.raises(ValueError, match=f"simd={level!r}: the target CPU lacks"):
                run(c, x, None, simd=level)


def test_nibble_lane_orders_are_permutations():
    # x is permuted per block to the lane order the lookups produce: each
    # order must be a permutation of the block's columns.
    for order, n in ((codebook_linear._NIBBLE_ORDER, 32), (codebook_linear._NIBBLE_ORDER_AVX2, 32), (codebook_linear._BYTE_ORDER, 64)):
        assert sorted(order.tolist()) == list(range(n))


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
        sparse_linear.sparse_matmul(*args, x.astype(np.float64), out, "row")
    with pytest.raises(ValueError, match="out: expected batch 2"):
        sparse_linear.sparse_matmul(*args, x, np.empty((3, 8), np.float32), "row")
    with pytest.raises(ValueError, match="pointers: expected"):
        sparse_linear.sparse_matmul(*args, x, out, "col")
    with pytest.raises(ValueError, match="order: expected"):
        sparse_linear.sparse_matmul(*args, x, out, "diagonal")
    with pytest.raises(ValueError, match="entries: expected"):
        sparse_linear.sparse_matmul(s.entries[:1], *args[1:], x, out, "row")
    with pytest.raises(ValueError, match="bias: expected float32"):
        codebook_linear.codebook_matmul(d.entries, 4, d.codebook, None, np.zeros(7, np.float32), x, out)
    with pytest.raises(ValueError, match="codebook: expected float32"):
        codebook_linear.codebook_matmul(d.entries, 4, d.codebook[:8], None, None, x, out)
