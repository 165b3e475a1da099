"""cmodel.kernels.conv: every convolution kernel against torch's conv2d.

The reference is ``torch.nn.functional.conv2d`` in float64 on the decoded
weight (``Compressed.dense()``), with the asymmetric padding applied by
``F.pad``.  Shapes are small and cover strides 1/2/3, asymmetric padding,
dilation, groups and depthwise (with a channel multiplier), 1x1 / 3x3 / 5x5 /
1x3 kernels, batches of 1 and 3, inputs smaller than the kernel, all-pruned
and all-filler rows, entry widths 8, 16 and odd ones, with and without row
scales and bias.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cmodel.format.encodings import Compressed
from cmodel.kernels import conv
from cmodel.codecs.entries import pack_bits, pack_entries, pointer_dtype, validate_entries

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (N, C, K, H, W, (R, S), stride, (top, left, bottom, right), dilation, groups)
CASES = [
    (1, 4, 6, 7, 7, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    (3, 6, 8, 9, 11, (3, 3), 2, (0, 1, 2, 1), 1, 2),
    (1, 5, 7, 10, 8, (5, 5), 3, (2, 2, 2, 2), (2, 1), 1),
    (3, 8, 8, 6, 6, (3, 3), 1, (1, 1, 1, 1), 2, 8),  # depthwise, dilated
    (1, 4, 8, 7, 5, (3, 3), (2, 1), (1, 0, 0, 1), 1, 4),  # depthwise, multiplier 2
    (1, 6, 12, 5, 5, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # pointwise
    (3, 6, 9, 4, 6, (1, 1), 2, (1, 0, 0, 1), 1, 3),  # strided 1x1, padded, groups
    (2, 4, 5, 2, 3, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # input smaller than the kernel
    (1, 3, 4, 1, 1, (5, 5), 1, (2, 2, 2, 2), 1, 1),  # 1x1 input, 5x5 kernel
    (1, 6, 6, 8, 9, (1, 3), (1, 2), (0, 1, 0, 1), 1, 3),
    (1, 3, 16, 12, 12, (3, 3), 2, (0, 0, 1, 1), 1, 1),  # TF "same", stride 2
    (1, 8, 140, 6, 7, (3, 3), 1, (1, 2, 0, 1), 1, 1),  # several row tiles, K % MR != 0
    (3, 16, 20, 9, 9, (3, 3), 3, (1, 1, 1, 1), 2, 2),
    (1, 2, 3, 30, 40, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # output wider than NR
    (1, 2, 130, 40, 40, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # a tile's sums split over column chunks
]
# (index_bits, bits): widths 8, 16 and odd ones
WIDTHS = [(4, 4), (8, 8), (3, 4), (1, 2), (5, 6), (8, 5), (2, 8), (4, 5), (7, 8), (6, 1)]


def reference(x, w, bias, stride, padding, dilation, groups):
    top, left, bottom, right = padding
    xt = F.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    b = None if bias is None else torch.from_numpy(bias).double()
    return F.conv2d(xt, torch.from_numpy(w).double(), b, stride=stride, dilation=dilation, groups=groups).numpy()


def sparse_tensor(rng, K, Cg, R, S, index_bits, bits, scaled):
    """A row-order sparse Compressed with all-pruned rows, rows of fillers only,
    long gaps (fillers before codes) and dense stretches."""
    cols = Cg * R * S
    density = rng.uniform(0.05, 0.9)
    codes = np.where(rng.random((K, cols)) < density, rng.integers(1, 2**bits, (K, cols)), 0).astype(np.uint8)
    codes[0] = 0  # all pruned: no entries
    if K > 2:
        codes[2] = 0  # all pruned, but stored as fillers only (below)
    if K > 3:
        codes[3] = 0
        codes[3, -1] = 2**bits - 1  # one code after the longest gap
    fill = 2**index_bits - 1
    deltas, ecodes, pointers = [], [], [0]
    for k in range(K):
        nxt = 0
        if k == 2:
            n = cols // (fill + 1)
            deltas += [fill] * n
            ecodes += [0] * n
        for j in np.flatnonzero(codes[k]):
            fillers, delta = divmod(int(j) - nxt, fill + 1)
            deltas += [fill] * fillers + [delta]
            ecodes += [0] * fillers + [int(codes[k, j])]
            nxt = int(j) + 1
        pointers.append(len(deltas))
    deltas, ecodes = np.array(deltas, np.uint8), np.array(ecodes, np.uint8)
    pointers = np.array(pointers, pointer_dtype(len(deltas)))
    validate_entries(pointers, deltas, ecodes, (K, cols), index_bits, "row", 2**bits)
    codebook = rng.standard_normal(2**bits).astype(np.float32)
    codebook[0] = 0.0
    scales = rng.uniform(0.1, 3.0, K).astype(np.float32) if scaled else None
    entries = pack_entries(deltas, ecodes, index_bits, bits)
    return Compressed("w", (K, Cg, R, S), "float32", "sparse", K, cols, bits, index_bits, "row", codebook, scales, pointers, entries, len(deltas))


def codebook_tensor(rng, K, Cg, R, S, bits, scaled):
    cols = Cg * R * S
    codes = rng.integers(0, 2**bits, K * cols).astype(np.uint8)
    codebook = rng.standard_normal(2**bits).astype(np.float32)
    scales = rng.uniform(0.1, 3.0, K).astype(np.float32) if scaled else None
    return Compressed("w", (K, Cg, R, S), "float32", "codebook", K, cols, bits, 0, "row", codebook, scales, None, pack_bits(codes, bits), K * cols)


def setup(case, seed):
    n, c, k, h, w, ks, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32) if seed % 2 else None
    shape = conv.conv2d_output_shape(x.shape, k, ks, stride, padding, dilation)
    out = np.full(shape, np.nan, np.float32)  # every element must be written
    return rng, x, bias, out


def run_check(out, x, wd, bias, case):
    *_, stride, padding, dilation, groups = case
    ref = reference(x, wd, bias, stride, padding, dilation, groups)
    # float32 sums of up to C*R*S products: scale the tolerance by the sum of |terms|.
    bound = reference(np.abs(x), np.abs(wd), None, stride, padding, dilation, groups)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * (bound.max() + 1.0))


@pytest.mark.parametrize("i", range(len(CASES)))
def test_sparse_conv2d(i):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    for j, (index_bits, bits) in enumerate(WIDTHS[i % 3::3]):
        rng, x, bias, out = setup(case, 10 * i + j)
        t = sparse_tensor(rng, k, c // groups, r, s, index_bits, bits, scaled=(i + j) % 2 == 0)
        conv.sparse_conv2d(t.entries, t.n_entries, t.width, t.index_bits, t.pointers, t.codebook, t.scales, bias,
                           x, out, (r, s), stride, padding, dilation, groups)
        run_check(out, x, t.dense(), bias, case)


@pytest.mark.parametrize("gemm", ["micro", "blas"])
@pytest.mark.parametrize("i", range(len(CASES)))
def test_codebook_conv2d(i, gemm):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    for j, (bits, tile_rows) in enumerate([(8, conv.TILE_ROWS), (1 + i % 7, 5)]):
        rng, x, bias, out = setup(case, 10 * i + j)
        t = codebook_tensor(rng, k, c // groups, r, s, bits, scaled=(i + j) % 2 == 1)
        conv.codebook_conv2d(t.entries, t.bits, t.codebook, t.scales, bias, x, out, (r, s), stride, padding,
                             dilation, groups, tile_rows=tile_rows, gemm=gemm)
        run_check(out, x, t.dense(), bias, case)


@pytest.mark.parametrize("gemm", ["micro", "blas"])
@pytest.mark.parametrize("i", range(len(CASES)))
def test_dense_conv2d(i, gemm):
    case = CASES[i]
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    rng, x, bias, out = setup(case, i)
    wt = rng.standard_normal((k, c // groups, r, s)).astype(np.float32)
    wt[0] = 0.0
    conv.dense_conv2d(wt, bias, x, out, stride, padding, dilation, groups, gemm=gemm)
    run_check(out, x, wt, bias, case)


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    c = groups * cg
    k = groups * draw(st.integers(1, 4))
    r, s = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + padding[0] + padding[2] >= dilation[0] * (r - 1) + 1)
    assume(w + padding[1] + padding[3] >= dilation[1] * (s - 1) + 1)
    return (draw(st.sampled_from([1, 3])), c, k, h, w, (r, s), stride, padding, dilation, groups)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(geometries(), st.sampled_from(WIDTHS), st.integers(0, 2**32 - 1))
def test_random_geometries(case, width, seed):
    n, c, k, h, w, (r, s), stride, padding, dilation, groups = case
    index_bits, bits = width
    rng, x, bias, out = setup(case, seed)
    t = sparse_tensor(rng, k, c // groups, r, s, index_bits, bits, scaled=seed % 3 == 0)
    conv.sparse_conv2d(t.entries, t.n_entries, t.width, t.index_bits, t.pointers, t.codebook, t.scales, bias,
                       x, out, (r, s), stride, padding, dilation, groups)
    run_check(out, x, t.dense(), bias, case)
    out[:] = np.nan
    t = codebook_tensor(rng, k, c // groups, r, s, bits, scaled=seed % 3 == 1)
    conv.codebook_conv2d(t.entries, t.bits, t.codebook, t.scales, bias, x, out, (r, s), stride, padding, dilation,
                         groups, tile_rows=1 + seed % 8)
    run_check(out, x, t.dense(), bias, case)


def test_encoder_round_trip(tmp_path):
    """Weights from the real encoder (row scales on, Huffman decoded to packed)."""
    import cmodel

    rng = np.random.default_rng(7)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32) * rng.uniform(0.01, 10, (24, 1, 1, 1)).astype(np.float32)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    case = (2, 16, 24, 9, 9, (3, 3), 2, (1, 1, 1, 1), 1, 1)
    for rule in ({"sparsity": 0.8, "bits": 5, "index_bits": 4, "order": "row"},
                 {"sparsity": 0.5, "bits": 8, "index_bits": 8, "order": "row", "coding": "packed"},
                 {"bits": 8}):
        path = tmp_path / "w.cmz"
        cmodel.save_file({"w": w}, path, rules={"*": {"compress": True, **rule}})
        with cmodel.open(path) as f:
            t = f.read_compressed("w")
        out = np.empty((2, 24, 5, 5), np.float32)
        if t.encoding == "sparse":
            conv.sparse_conv2d(t.entries, t.n_entries, t.width, t.index_bits, t.pointers, t.codebook, t.scales, bias,
                               x, out, (3, 3), 2, 1)
        else:
            conv.codebook_conv2d(t.entries, t.bits, t.codebook, t.scales, bias, x, out, (3, 3), 2, 1)
        run_check(out, x, t.dense(), bias, case)


def test_strided_input_and_empty_batch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 10, 20)).astype(np.float32)[:, :, :, ::2]  # not contiguous
    wt = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    out = np.empty((2, 6, 10, 10), np.float32)
    conv.dense_conv2d(wt, None, x, out, 1, 1)
    run_check(out, np.ascontiguousarray(x), wt, None, (2, 8, 6, 10, 10, (3, 3), 1, (1, 1, 1, 1), 1, 1))
    empty = np.empty((0, 6, 10, 10), np.float32)
    assert conv.dense_conv2d(wt, None, x[:0], empty, 1, 1) is empty


def test_output_shape():
    assert conv.conv2d_output_shape((1, 3, 224, 224), 32, 3, 2, (0, 0, 1, 1)) == (1, 32, 112, 112)
    assert conv.conv2d_output_shape((2, 3, 7, 9), 4, (1, 3), (2, 1), 1, (1, 2)) == (2, 4, 5, 7)
    with pytest.raises(ValueError, match="to fit the padded input"):
        conv.conv2d_output_shape((1, 3, 2, 2), 4, 3, 1, 0)


def test_bad_arguments():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    wt = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous float32 array of shape"):
        conv.dense_conv2d(wt, None, x, np.empty((1, 6, 5, 5), np.float32), 1, 0)
    with pytest.raises(ValueError, match="x: expected a 4-D float32 array"):
        conv.dense_conv2d(wt, None, x.astype(np.float64), np.empty((1, 6, 3, 3), np.float32))
    with pytest.raises(ValueError, match="groups: expected >= 1 and dividing"):
        conv.dense_conv2d(wt, None, x, np.empty((1, 6, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="bias: expected None or 6 float32 values"):
        conv.dense_conv2d(wt, np.ones(5, np.float32), x, np.empty((1, 6, 3, 3), np.float32))
    with pytest.raises(ValueError, match="gemm: expected one of"):
        conv.dense_conv2d(wt, None, x, np.empty((1, 6, 3, 3), np.float32), gemm="mkl")
    t = codebook_tensor(rng, 6, 4, 3, 3, 4, False)
    with pytest.raises(ValueError, match="entries: expected a 1-D uint8 array of at least 108 bytes"):
        conv.codebook_conv2d(t.entries[:-1], 4, t.codebook, None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match=r"codebook: expected 2\*\*4 float32 values"):
        conv.codebook_conv2d(t.entries, 4, t.codebook[:8], None, None, x, np.empty((1, 6, 3, 3), np.float32), 3)
    s = sparse_tensor(rng, 6, 4, 3, 3, 4, 4, False)
    with pytest.raises(ValueError, match="pointers: expected K \\+ 1 = 7 counts"):
        conv.sparse_conv2d(s.entries, s.n_entries, 8, 4, s.pointers[:-1], s.codebook, None, None, x,
                           np.empty((1, 6, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="expected 1 <= index_bits < width <= 16"):
        conv.sparse_conv2d(s.entries, s.n_entries, 17, 9, s.pointers, s.codebook, None, None, x,
                           np.empty((1, 6, 3, 3), np.float32), 3)
