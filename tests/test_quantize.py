"""Tests for cmodel.codecs.quantize: pruning, row scales, 1-D k-means, codebooks."""

from __future__ import annotations

import doctest
import itertools
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cmodel.codecs.quantize as qz
from cmodel.errors import CmzError
from cmodel.codecs.quantize import build_codebook, kmeans_1d, prune_mask, quantize, row_scales

SETTINGS = settings(max_examples=60, deadline=None)


def test_docstring_examples():
    assert doctest.testmod(qz).failed == 0


# --------------------------------------------------------------------------
# prune_mask


def reference_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """The documented rule, by a full stable sort: (|w|, flat index) ascending."""
    flat = np.abs(w.reshape(-1)).astype(np.float64)
    n = flat.size
    k = min(n, math.floor(sparsity * n + 0.5))
    keep = np.ones(n, dtype=bool)
    keep[np.lexsort((np.arange(n), flat))[:k]] = False
    return keep.reshape(w.shape)


def test_prune_ties_broken_by_flat_index():
    w = np.array([3.0, 1.0, -1.0, 1.0, 2.0], dtype=np.float32)
    # k = floor(0.4 * 5 + 0.5) = 2: of the three weights of magnitude 1, the
    # two lowest indices go.
    assert prune_mask(w, sparsity=0.4).tolist() == [True, False, False, True, True]


def test_prune_count_is_sparsity_times_n_rounded_half_up():
    assert np.count_nonzero(~prune_mask(np.ones(3), sparsity=0.5)) == 2  # 1.5 -> 2
    assert np.count_nonzero(~prune_mask(np.ones(4), sparsity=0.125)) == 1  # 0.5 -> 1
    assert np.count_nonzero(~prune_mask(np.ones(4), sparsity=0.1)) == 0  # 0.4 -> 0
    assert np.count_nonzero(~prune_mask(np.ones(5), sparsity=0.7)) == 4  # fl(3.5) -> 4
    assert prune_mask(np.ones((2, 3)), sparsity=0.0).all()
    assert not prune_mask(np.ones((2, 3)), sparsity=1.0).any()


def test_prune_existing_zeros_go_first():
    w = np.array([0.5, 0.0, -0.0, 0.1, 0.0, 2.0])
    assert prune_mask(w, sparsity=0.5).tolist() == [True, False, False, True, False, True]
    # Fewer pruned than there are zeros: the lowest-index zeros go.
    assert prune_mask(w, sparsity=2 / 6).tolist() == [True, False, False, True, True, True]


def test_prune_keeps_shape_and_handles_empty_and_scalar():
    assert prune_mask(np.ones((2, 3, 4)), sparsity=0.5).shape == (2, 3, 4)
    assert prune_mask(np.ones((0, 3)), sparsity=0.5).shape == (0, 3)
    assert prune_mask(np.float32(2.0), threshold=1.0).shape == ()
    # A non-contiguous view prunes the same as its copy.
    w = np.arange(24.0).reshape(4, 6)[:, ::2]
    assert np.array_equal(prune_mask(w, sparsity=0.5), prune_mask(w.copy(), sparsity=0.5))


def test_threshold_prunes_at_or_below():
    w = np.array([0.1, -0.2, 0.2, 0.3, 0.0, -0.0])
    assert prune_mask(w, threshold=0.2).tolist() == [False, False, False, True, False, False]
    assert prune_mask(w, threshold=0).tolist() == [True, True, True, True, False, False]


@pytest.mark.parametrize("dtype, x", [(np.float16, 0.7), (np.float32, 0.1)])
def test_threshold_compares_exactly_not_after_rounding(dtype, x):
    # dtype(x) > x (float32(0.1) = 0.10000000149..., float16(0.7) = 0.70019...),
    # so it is kept at threshold x, although x rounded to dtype would equal it.
    w = np.array([x, x / 2], dtype=dtype)
    assert float(w[0]) > x
    assert prune_mask(w, threshold=x).tolist() == [True, False]
    assert prune_mask(w, threshold=float(w[0])).tolist() == [False, False]
    assert not prune_mask(w, threshold=1e300).any()


@SETTINGS
@given(
    w=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
        elements=st.one_of(
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0]),
            st.floats(-1e3, 1e3, width=32),
        ),
    ),
    sparsity=st.floats(0.0, 1.0),
    chunk=st.sampled_from([1, 2, 3, 7, 1 << 20]),
)
def test_prune_matches_the_documented_order(w, sparsity, chunk):
    with mock.patch.object(qz, "_CHUNK_ELEMENTS", chunk):
        keep = prune_mask(w, sparsity=sparsity)
    assert np.array_equal(keep, reference_prune(w, sparsity))
    n = w.size
    assert np.count_nonzero(~keep) == min(n, math.floor(sparsity * n + 0.5))
    if keep.any() and (~keep).any():
        assert np.abs(w[keep]).min() >= np.abs(w[~keep]).max()


@SETTINGS
@given(
    w=hnp.arrays(np.float32, st.integers(0, 40), elements=st.floats(-10, 10, width=32)),
    threshold=st.floats(0.0, 12.0),
)
def test_threshold_property(w, threshold):
    keep = prune_mask(w, threshold=threshold)
    assert np.array_equal(keep, np.abs(w).astype(np.float64) > threshold)


@pytest.mark.parametrize(
    "w, kwargs",
    [
        (np.array([1.0, np.nan]), {"sparsity": 0.5}),
        (np.array([1.0, np.inf]), {"threshold": 0.5}),
        (np.array([1.0, 2.0]), {}),
        (np.array([1.0, 2.0]), {"sparsity": 0.5, "threshold": 0.5}),
        (np.array([1.0, 2.0]), {"sparsity": -0.1}),
        (np.array([1.0, 2.0]), {"sparsity": 1.5}),
        (np.array([1.0, 2.0]), {"sparsity": float("nan")}),
        (np.array([1.0, 2.0]), {"sparsity": True}),
        (np.array([1.0, 2.0]), {"threshold": -1.0}),
        (np.array([1.0, 2.0]), {"threshold": float("inf")}),
        (np.array([1, 2]), {"sparsity": 0.5}),
    ],
)
def test_prune_rejects_bad_arguments(w, kwargs):
    with pytest.raises(CmzError) as e:
        prune_mask(w, **kwargs)
    assert e.value.check == "encoder_options"


def test_prune_names_the_nonfinite_weight():
    with pytest.raises(CmzError, match=r"found 1 NaN/infinite \(first at flat index 2\)"):
        prune_mask(np.array([1.0, 2.0, np.nan]), sparsity=0.5)


# --------------------------------------------------------------------------
# row_scales


def test_row_scales_are_rms_of_kept_weights():
    w = np.array([[3.0, -4.0, 100.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    mask = np.array([[True, True, False], [True, True, False], [False, False, False]])
    assert row_scales(w, None).tolist() == np.float32(
        [math.sqrt(10025 / 3), 5 / math.sqrt(3), 1.0]).tolist()
    # Kept weights only; all-zero kept weights and no kept weights give 1.0.
    assert row_scales(w, mask).tolist() == [np.float32(math.sqrt(12.5)), 1.0, 1.0]
    s16 = row_scales(w, mask, dtype=np.float16)
    assert s16.dtype == np.float16 and s16.tolist() == [np.float16(math.sqrt(12.5)), 1.0, 1.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_row_scales_underflow_becomes_the_smallest_subnormal(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    # A subnormal scale is kept as rounded (the encoder divides by the stored value).
    assert row_scales(np.array([[3 * float(tiny)]]), None, dtype)[0] == 3 * tiny
    # An RMS below half the smallest subnormal would round to 0.
    w = np.array([[float(tiny), 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert row_scales(w, None, dtype).tolist() == [float(tiny), 1.0]
    result = build_codebook(w.astype(np.float32), 2, False, None, scale_dtype=dtype)
    assert result.scales[0] == tiny
    check_result(w.astype(np.float32), result, 2, False, np.ones(w.shape, dtype=bool))


def test_row_scales_overflow_is_an_error():
    w = np.array([[1.0], [1e5]], dtype=np.float32)
    with pytest.raises(CmzError, match="use float32 scales") as e:
        row_scales(w, None, np.float16)
    assert e.value.check == "encoder_options"
    assert "row 1" in str(e.value)
    assert row_scales(w, None).tolist() == [1.0, 1e5]


def test_row_scales_float32_range():
    with pytest.raises(CmzError, match="outside the range float32"):
        row_scales(np.array([[1e300]]), None)


def test_row_scales_blocks_match_unblocked():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 13)).astype(np.float32)
    mask = rng.random((5, 13)) < 0.5
    whole = row_scales(w, mask)
    for chunk in (1, 4, 13, 40):
        with mock.patch.object(qz, "_CHUNK_ELEMENTS", chunk):
            np.testing.assert_allclose(row_scales(w, mask), whole, rtol=1e-7)


@pytest.mark.parametrize(
    "args",
    [
        (np.ones(3), None),
        (np.ones((2, 2), dtype=np.int32), None),
        (np.ones((2, 2)), np.ones((2, 3), dtype=bool)),
        (np.ones((2, 2)), np.ones((2, 2))),
        (np.ones((2, 2)), None, np.float64),
        (np.array([[1.0, np.nan]]), None),
    ],
)
def test_row_scales_rejects_bad_arguments(args):
    with pytest.raises(CmzError):
        row_scales(*args)


# --------------------------------------------------------------------------
# kmeans_1d


def test_kmeans_hand_example():
    v = np.array([20.0, 0, 1, 2, 3, 10, 11, 12])
    # Linear initialisation: k = 3 points from min 0 to max 20.
    assert kmeans_1d(v, 3, iterations=0).tolist() == [0.0, 10.0, 20.0]
    # One Lloyd step: midpoints 5 and 15 give the clusters {0, 1, 2, 3},
    # {10, 11, 12}, {20}, whose means are 1.5, 11, 20.
    assert kmeans_1d(v, 3, iterations=1).tolist() == [1.5, 11.0, 20.0]
    # Midpoints 6.25 and 15.5 give the same clusters: converged.
    assert kmeans_1d(v, 3).tolist() == [1.5, 11.0, 20.0]


def test_kmeans_empty_clusters_are_refilled_by_splitting():
    v = np.array([0.0, 0.25, 0.5, 0.75, 10.0])
    # Initialisation 0, 10/3, 20/3, 10: the middle two clusters are empty.
    # Clusters {0, .25, .5, .75} (mean .375, SSE .3125) and {10} (SSE 0).
    # Split the first at .375: {0, .25} (mean .125) and {.5, .75} (mean .625),
    # both SSE .03125.  Tie: split the lower one at .125: {0} and {.25}.
    assert kmeans_1d(v, 4, iterations=1).tolist() == [0.0, 0.25, 0.625, 10.0]
    # Midpoints .125, .4375, 5.3125 reproduce those clusters: converged.
    assert kmeans_1d(v, 4).tolist() == [0.0, 0.25, 0.625, 10.0]


def test_kmeans_at_most_k_distinct_values_is_exact():
    v = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
    assert kmeans_1d(v, 3).tolist() == [1.0, 2.0, 3.0]
    assert kmeans_1d(v, 200, iterations=0).tolist() == [1.0, 2.0, 3.0]
    v32 = np.array([0.1, 0.1, -0.3], dtype=np.float32)
    assert kmeans_1d(v32, 2).tolist() == [float(v32[2]), float(v32[0])]
    c = kmeans_1d(np.array([-0.0, 0.0, 1.0]), 2)
    assert c.tolist() == [0.0, 1.0] and not np.signbit(c[0])


def test_kmeans_small_cases():
    assert kmeans_1d(np.array([]), 4).shape == (0,)
    assert kmeans_1d(np.array([1.0, 2.0, 6.0]), 1).tolist() == [3.0]
    assert kmeans_1d(np.array([[5.0, 5.0], [5.0, 5.0]]), 4).tolist() == [5.0]
    assert kmeans_1d(np.array([1, 2, 3, 10], dtype=np.int64), 2).tolist() == [2.0, 10.0]


def sse(values: np.ndarray, centroids: np.ndarray) -> float:
    return float(np.sum((values - centroids[quantize(values, centroids)]) ** 2))


@SETTINGS
@given(
    v=hnp.arrays(np.float64, st.integers(1, 300),
                 elements=st.one_of(st.floats(-100, 100), st.sampled_from([0.0, 1.0, 50.0]))),
    k=st.integers(1, 20),
)
def test_kmeans_properties(v, k):
    c = kmeans_1d(v, k)
    assert c.dtype == np.float64
    assert c.size == min(k, np.unique(v).size)
    assert np.all(np.diff(c) > 0)
    assert np.array_equal(kmeans_1d(v, k), c)
    # The SSE never increases from one iteration to the next.
    errors = [sse(v, kmeans_1d(v, k, iterations=t)) for t in range(8)]
    scale = float(np.sum(v * v)) + 1.0
    for before, after in itertools.pairwise(errors):
        assert after <= before + 1e-12 * scale


@SETTINGS
@given(v=hnp.arrays(np.float64, st.integers(2, 200), elements=st.floats(-1e3, 1e3)),
       k=st.integers(2, 12))
def test_kmeans_one_step_matches_naive_lloyd(v, k):
    if np.unique(v).size <= k:
        return
    c0 = kmeans_1d(v, k, iterations=0)
    np.testing.assert_allclose(c0, np.linspace(v.min(), v.max(), k), rtol=1e-12, atol=1e-9)
    # The documented assignment: a value on a float64 midpoint joins the lower cluster.
    labels = np.searchsorted((c0[:-1] + c0[1:]) / 2, v, side="left")
    if np.unique(labels).size < k:
        return  # empty clusters: covered by the hand example
    expected = np.array([v[labels == j].mean() for j in range(k)])
    np.testing.assert_allclose(kmeans_1d(v, k, iterations=1), expected, rtol=1e-12, atol=1e-9)


def test_kmeans_is_deterministic_and_block_size_independent():
    rng = np.random.default_rng(7)
    v = rng.standard_t(3, size=20_000).astype(np.float32)
    c = kmeans_1d(v, 31)
    assert kmeans_1d(v.copy(), 31).tobytes() == c.tobytes()
    assert c.size == 31
    # Cluster sums from blocks of 16 values agree with blocks of 4096 up to rounding.
    with mock.patch.object(qz, "_PREFIX_BLOCK", 16), mock.patch.object(qz, "_CHUNK_ELEMENTS", 100):
        blocked = kmeans_1d(v, 31, iterations=1)
    np.testing.assert_allclose(blocked, kmeans_1d(v, 31, iterations=1), rtol=1e-12)


@pytest.mark.parametrize(
    "v, k, iterations",
    [
        (np.array([1.0, np.nan]), 2, 5),
        (np.array([1.0, -np.inf]), 2, 5),
        (np.array([1.0, 2.0]), 0, 5),
        (np.array([1.0, 2.0]), 2.0, 5),
        (np.array([1.0, 2.0]), 2, -1),
        (np.array([1.0, 1e300]), 2, 5),
        (np.array([True, False]), 2, 5),
    ],
)
def test_kmeans_rejects_bad_arguments(v, k, iterations):
    with pytest.raises(CmzError):
        kmeans_1d(v, k, iterations=iterations)


# --------------------------------------------------------------------------
# quantize


def test_quantize_ties_go_to_the_lower_index():
    c = np.array([0.0, 1.0, 2.0])
    v = np.array([0.5, 1.5, -5.0, 5.0, 1.0, 0.5000001])
    assert quantize(v, c).tolist() == [0, 1, 0, 2, 1, 1]
    assert quantize(v.astype(np.float32), c).tolist() == [0, 1, 0, 2, 1, 1]
    # -0.0 equals the midpoint 0.0 of -1 and 1: lower index.
    zeros = np.array([-0.0, 0.0], dtype=np.float32)
    assert quantize(zeros, np.array([-1.0, 1.0])).tolist() == [0, 0]
    assert quantize(np.array([[0.2, 1.9]]), c).shape == (1, 2)


@SETTINGS
@given(
    v=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64, np.int32]),
                 st.integers(0, 50), elements=st.integers(-60, 60)),
    c=st.lists(st.integers(-50, 50), min_size=1, max_size=20),
)
def test_quantize_is_nearest_with_lower_ties(v, c):
    centroids = np.unique(np.array(c, dtype=np.float64))
    expected = np.abs(v.astype(np.float64)[:, None] - centroids[None, :]).argmin(axis=1)
    got = quantize(v, centroids)
    assert got.dtype == np.intp
    assert np.array_equal(got, expected)


def test_quantize_crowded_centroids_use_the_fallback():
    base = np.float32(1.0)
    c = np.array([base + i * np.finfo(np.float32).eps for i in range(10)], dtype=np.float64)
    assert qz._Nearest(c, np.dtype(np.float32)).table is None
    rng = np.random.default_rng(3)
    v = (base + rng.integers(-3, 14, 500) * np.finfo(np.float32).eps / 2).astype(np.float32)
    expected = np.abs(v.astype(np.float64)[:, None] - c[None, :]).argmin(axis=1)
    assert np.array_equal(quantize(v, c), expected)


def test_quantize_bucket_table_matches_searchsorted():
    rng = np.random.default_rng(4)
    c = np.sort(rng.standard_normal(255) * 3)
    v = np.concatenate([rng.standard_normal(20_000) * 4, c, (c[:-1] + c[1:]) / 2,
                        [0.0, -0.0, 1e-40, -1e-40, 3e38, -3e38]]).astype(np.float32)
    nearest = qz._Nearest(c, np.dtype(np.float32))
    assert nearest.table is not None
    assert np.array_equal(nearest(v), np.searchsorted(nearest.midpoints, v, side="left"))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(v=hnp.arrays(np.float32, st.integers(0, 200),
                    elements=st.one_of(finite32, st.floats(-3, 3, width=32))),
       c=st.lists(st.one_of(finite32, st.floats(-3, 3)), min_size=1, max_size=40))
def test_bucket_search_matches_searchsorted(v, c):
    nearest = qz._Nearest(np.unique(np.array(c, dtype=np.float64)), np.dtype(np.float32))
    assert np.array_equal(nearest(v), np.searchsorted(nearest.midpoints, v, side="left"))


@pytest.mark.parametrize(
    "v, c",
    [
        (np.array([1.0]), np.array([])),
        (np.array([1.0]), np.array([[1.0]])),
        (np.array([1.0]), np.array([2.0, 1.0])),
        (np.array([1.0]), np.array([1.0, 1.0])),
        (np.array([1.0]), np.array([1.0, np.nan])),
        (np.array([np.nan]), np.array([1.0])),
        (np.array(["a"]), np.array([1.0])),
    ],
)
def test_quantize_rejects_bad_arguments(v, c):
    with pytest.raises(CmzError):
        quantize(v, c)


# --------------------------------------------------------------------------
# build_codebook


def normalised(w, scales, kept):
    """The documented normalised kept values: float32(w) / float32(scale) in float32."""
    v = w.astype(np.float32)[kept]
    if scales is not None:
        v /= np.broadcast_to(scales.astype(np.float32)[:, None], w.shape)[kept]
    return v.astype(np.float64)


def check_result(w, result, bits, sparse, kept, cb_dtype=np.float32):
    """Every invariant build_codebook documents."""
    cb, codes, scales, size = result.codebook, result.codes, result.scales, result.size
    assert cb.dtype == cb_dtype and cb.shape == (2**bits,)
    assert codes.dtype == np.uint8 and codes.shape == w.shape
    assert np.all(codes < size) and np.all(cb[size:] == 0)
    first = 1 if sparse else 0
    used = cb[first:size].astype(np.float64)
    assert np.all(np.diff(used) > 0) and not np.any(np.signbit(used) & (used == 0))
    if sparse:
        assert cb[0] == 0 and not np.signbit(cb[0])
        assert np.all(codes[~kept] == 0) and np.all(codes[kept] >= 1)
    if scales is not None:
        assert scales.shape == (w.shape[0],) and np.all(scales > 0) and np.all(np.isfinite(scales))
    # Each kept weight's code is a nearest stored centroid to its normalised value.
    v = normalised(w, scales, kept)
    if v.size:
        dist = np.abs(v[:, None] - used[None, :])
        chosen = dist[np.arange(v.size), codes[kept].astype(np.intp) - first]
        assert np.all(chosen <= dist.min(axis=1) * (1 + 1e-12))
    # dequantize() is exactly the decoder's formula.
    expected = cb.astype(np.float32)[codes]
    if scales is not None:
        expected = scales.astype(np.float32)[:, None] * expected
    deq = result.dequantize()
    assert deq.dtype == np.float32 and deq.tobytes() == expected.tobytes()
    if sparse:
        assert np.all(deq[~kept] == 0)
    return deq


weights = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, max_side=7),
    elements=st.one_of(st.floats(-100, 100, width=32), st.sampled_from([0.0, 1.0, -2.5])),
)


@SETTINGS
@given(w=weights, bits=st.integers(1, 8), scale=st.sampled_from(["row", "none"]),
       cb_dtype=st.sampled_from([np.float32, np.float16]), data=st.data())
def test_build_codebook_sparse_invariants(w, bits, scale, cb_dtype, data):
    mask = data.draw(hnp.arrays(np.bool_, w.shape))
    result = build_codebook(w, bits, True, mask, scale=scale, codebook_dtype=cb_dtype)
    check_result(w, result, bits, True, mask, cb_dtype)


@SETTINGS
@given(w=weights, bits=st.integers(1, 8), scale=st.sampled_from(["row", "none"]),
       cb_dtype=st.sampled_from([np.float32, np.float16]))
def test_build_codebook_dense_invariants(w, bits, scale, cb_dtype):
    result = build_codebook(w, bits, False, None, scale=scale, codebook_dtype=cb_dtype)
    check_result(w, result, bits, False, np.ones(w.shape, dtype=bool), cb_dtype)


def test_sparse_code_zero_is_reserved():
    w = np.array([[0.0, 1.0, 2.0, 0.01]], dtype=np.float32)
    kept = np.ones(w.shape, dtype=bool)
    result = build_codebook(w, 1, True, kept, scale="none")
    # One centroid for the kept weights; even the exact zero takes code 1.
    assert result.codebook.tolist() == [0.0, np.float32(np.mean(w, dtype=np.float64))]
    assert result.codes.tolist() == [[1, 1, 1, 1]]
    # Without a mask, the nonzero weights are the kept ones.
    result = build_codebook(w, 2, True, None, scale="none")
    assert result.codes[0, 0] == 0 and np.all(result.codes[0, 1:] >= 1)


def test_dense_codebook_treats_zero_as_a_value_and_is_lossless_when_it_can_be():
    w = np.array([[0.0, 1.5, 0.0], [-3.0, 1.5, 0.25]], dtype=np.float32)
    result = build_codebook(w, 2, False, None, scale="none")
    assert result.size == 4 and result.codebook.tolist() == [-3.0, 0.0, 0.25, 1.5]
    assert result.dequantize().tobytes() == w.tobytes()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "w",
    [
        np.array([[2.5]]),
        np.array([[-1.0, 3.0, 3.0, 7.0]]),
        np.array([[-1.0], [3.0], [7.0]]),
        np.zeros((3, 4)),
        np.array([[4.0, 4.0, 4.0], [0.5, -2.0, 1.0]]),
        np.full((2, 3), -0.75),
        np.zeros((0, 3)),
    ],
)
def test_build_codebook_edge_shapes(w, bits, sparse):
    w = w.astype(np.float32)
    kept = w != 0 if sparse else np.ones(w.shape, dtype=bool)
    for scale in ("row", "none"):
        for cb_dtype in (np.float32, np.float16):
            result = build_codebook(w, bits, sparse, None, scale=scale, codebook_dtype=cb_dtype)
            deq = check_result(w, result, bits, sparse, kept, cb_dtype)
            if np.unique(w[kept]).size <= 1:
                # One distinct value (a row's RMS is its magnitude): exact.
                assert deq.tobytes() == w.tobytes()


def test_row_of_equal_values_is_exact_with_row_scales():
    w = np.array([[4.0, 4.0, 4.0], [-0.5, -0.5, -0.5]], dtype=np.float32)
    result = build_codebook(w, 1, False, None)
    assert result.scales.tolist() == [4.0, 0.5] and result.codebook.tolist() == [-1.0, 1.0]
    assert result.dequantize().tobytes() == w.tobytes()


def test_row_scales_equalise_relative_error():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((3, 4000)).astype(np.float32)
    w = base * np.array([[1e-3], [1.0], [1e3]], dtype=np.float32)

    def relative_errors(scale):
        deq = build_codebook(w, 4, False, None, scale=scale).dequantize()
        return np.linalg.norm(deq - w, axis=1) / np.linalg.norm(w, axis=1)

    scaled = relative_errors("row")
    assert scaled.max() < 0.15 and scaled.max() / scaled.min() < 1.2
    unscaled = relative_errors("none")
    assert unscaled[0] > 10 * unscaled[2]


def test_float16_codebook_reproduces_exactly():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((16, 64)) * np.logspace(-2, 2, 16)[:, None]).astype(np.float32)
    mask = prune_mask(w, sparsity=0.5)
    for scale_dtype in (np.float32, np.float16):
        result = build_codebook(w, 5, True, mask, codebook_dtype=np.float16,
                                scale_dtype=scale_dtype)
        cb, scales = result.codebook, result.scales
        assert cb.dtype == np.float16 and scales.dtype == scale_dtype
        decoded = np.float32(scales[:, None]) * np.float32(cb)[result.codes]
        assert result.dequantize().tobytes() == decoded.astype(np.float32).tobytes()
        check_result(w, result, 5, True, mask, np.float16)


def test_build_codebook_is_deterministic_and_block_independent():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((9, 23)).astype(np.float32)
    mask = prune_mask(w, sparsity=0.3)
    for scale in ("row", "none"):
        first = build_codebook(w, 3, True, mask, scale=scale)
        again = build_codebook(w.copy(), 3, True, mask.copy(), scale=scale)
        assert first.codes.tobytes() == again.codes.tobytes()
        assert first.codebook.tobytes() == again.codebook.tobytes()
    # Blocks of whole rows and of row pieces give the same result without
    # scales (row sums are the only thing blocking may round differently).
    whole = build_codebook(w, 4, False, None, scale="none")
    for chunk in (5, 23, 50):
        with mock.patch.object(qz, "_CHUNK_ELEMENTS", chunk):
            part = build_codebook(w, 4, False, None, scale="none")
            check_result(w, build_codebook(w, 4, True, mask), 4, True, mask)
        assert part.codes.tobytes() == whole.codes.tobytes()
        assert part.codebook.tobytes() == whole.codebook.tobytes()


def test_build_codebook_float64_and_float16_weights():
    w = np.array([[0.1, -0.2, 0.3], [1.0, 2.0, 3.0]])
    for dtype in (np.float64, np.float16):
        result = build_codebook(w.astype(dtype), 8, False, None)
        check_result(w.astype(dtype), result, 8, False, np.ones(w.shape, dtype=bool))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": True}, "bits"),
        ({"sparse": 1}, "sparse"),
        ({"scale": "col"}, "scale"),
        ({"codebook_dtype": np.float64}, "codebook dtype"),
        ({"scale_dtype": "bfloat16"}, "scale dtype"),
        ({"iterations": -1}, "iterations"),
        ({"sparse": False, "mask2d": np.ones((2, 2), dtype=bool)}, "dense codebook"),
        ({"mask2d": np.ones((2, 3), dtype=bool)}, "mask"),
        ({"w2d": np.ones(4, dtype=np.float32)}, "2-D"),
        ({"w2d": np.array([[1.0, np.inf], [0.0, 1.0]])}, "finite"),
        ({"w2d": np.array([[1e39, 1.0], [0.0, 1.0]])}, "float32"),
        ({"w2d": np.array([[1e5, 1.0], [0.0, 1.0]]), "scale": "none",
          "codebook_dtype": np.float16}, "float32 codebook"),
        ({"w2d": np.array([[1e5, 0.0], [0.0, 1.0]]), "scale_dtype": np.float16},
         "float32 scales"),
    ],
)
def test_build_codebook_rejects_bad_arguments(kwargs, message):
    args = {"w2d": np.ones((2, 2), dtype=np.float32), "bits": 4, "sparse": True}
    args.update(kwargs)
    with pytest.raises(CmzError, match=message) as e:
        build_codebook(**args)
    assert e.value.check == "encoder_options"
