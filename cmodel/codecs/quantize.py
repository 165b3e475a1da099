"""Pruning, row scales and weight sharing (DESIGN §3 "Row scales", §4 steps 2-3).

This module is the numpy reference for the encoder's lossy steps on one
tensor viewed as a matrix ``[rows, cols]``:

1. :func:`prune_mask` — magnitude pruning, exactly specified so that the
   training code's sensitivity sweeps prune the same weights as the encoder.
2. :func:`row_scales` — one scale per row (the RMS of its kept weights).
3. :func:`kmeans_1d` — deterministic 1-D k-means with linear initialisation
   (Deep Compression's choice).  In 1-D every cluster is an interval of the
   sorted values, so after one sort each Lloyd iteration is a binary search per
   centroid plus a prefix-sum lookup.
4. :func:`quantize` — nearest centroid, ties to the lower index.
5. :func:`build_codebook` — the whole step for one tensor: scales, k-means on
   the normalised kept weights, codes, and the exact float32 dequantisation
   the decoder must reproduce.

Every rule that decides a result bit (tie breaks, rounding, empty clusters,
padding) is stated in the docstring of the function that applies it.  Large
matrices are processed in blocks of at most ``_CHUNK_ELEMENTS`` elements, so
temporaries stay small and nothing makes a float64 copy of a dense matrix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cmodel.errors import CmzError

__all__ = [
    "DEFAULT_ITERATIONS",
    "CodebookResult",
    "build_codebook",
    "kmeans_1d",
    "prune_mask",
    "quantize",
    "row_scales",
]

# Lloyd iterations when the caller does not say; k-means stops earlier as soon
# as no centroid moves.  From linear initialisation Lloyd converges slowly (the
# tail centroids creep inwards): on 10**7 Gaussian values the 31-centroid MSE
# after 30 iterations was 2.0x the converged one, after 300 within 0.5%; with
# 256 centroids 300 iterations cut the MSE by 12% against 30.  An iteration
# costs O(k log n) plus k reads of at most _PREFIX_BLOCK values (~1 ms for
# k = 256), so 300 cost well under a second at any n.
DEFAULT_ITERATIONS = 300

# Code widths of the ``codebook`` and ``sparse`` encodings (DESIGN §3: b is
# 1..8), so a code always fits in a uint8.
_MIN_BITS = 1
_MAX_BITS = 8

# Storage dtypes the format allows for codebook values and row scales.
_STORAGE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

# Weight dtypes accepted by build_codebook / row_scales; the decoded tensor is
# float32, so float64 weights must also lie in the float32 range.
_WEIGHT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Elements per block of the streaming passes: large enough that numpy's
# per-call overhead vanishes, small enough that a block's float64 temporaries
# (8 bytes each) stay at a few MiB.
_CHUNK_ELEMENTS = 1 << 20

# Values per block of k-means' prefix sums: one float64 per block is stored,
# and a cluster-sum lookup reads at most one block.
_PREFIX_BLOCK = 1 << 12

# Nearest-centroid buckets for float32 values: the top 32 - _KEY_SHIFT bits of
# the order key, i.e. 2**16 buckets, 128 per binade.  If more than
# _MAX_PASSES midpoints share a bucket, np.searchsorted is cheaper.
_KEY_SHIFT = 16
_MAX_PASSES = 4

# Largest magnitude kmeans_1d accepts: prefix sums of up to 2**62 values (the
# format's element limit) and differences of two values then stay finite in
# float64.  Weights (float32 at most ~2**128) are far below it.
_MAX_MAGNITUDE = 2.0**960

_CHECK = "encoder_options"


@dataclass(frozen=True, eq=False)
class CodebookResult:
    """One tensor's weight-sharing result, as :func:`build_codebook` returns it.

    Attributes:
        codebook: ``[2**bits]`` array in the codebook dtype.  Entries
            ``[0, size)`` are the used values; entries ``[size, 2**bits)`` are
            padding and are exactly 0.0.  For a sparse codebook ``codebook[0]``
            is the reserved code 0 and is exactly +0.0.
        codes: uint8 matrix ``[rows, cols]``; every code is ``< size``.  For a
            sparse codebook pruned positions hold 0 and kept positions hold
            1..size-1.
        scales: ``[rows]`` row scales in the scale dtype (positive, finite), or
            None when row scaling is off.
        size: number of used codebook entries (including the reserved zero of
            a sparse codebook).
    """

    codebook: np.ndarray
    codes: np.ndarray
    scales: np.ndarray | None
    size: int

    def dequantize(self) -> np.ndarray:
        """Return the float32 matrix the decoder must reproduce bit for bit.

        The decoded weight is ``float32(scales[row]) * float32(codebook[code])``
        computed in float32 (a single IEEE multiplication, round to nearest),
        or ``float32(codebook[code])`` without scales.  Pruned positions of a
        sparse codebook decode to exactly +0.0.

        Returns:
            A new float32 array with the shape of ``codes``.
        """
        values = self.codebook.astype(np.float32)[self.codes]
        if self.scales is not None:
            values *= self.scales.astype(np.float32)[:, None]
        return values


# --------------------------------------------------------------------------
# Pruning


def prune_mask(
    w: np.ndarray,
    sparsity: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Magnitude-prune one tensor: return the mask of the weights that are kept.

    Give exactly one of ``sparsity`` or ``threshold``.

    Sparsity rule: with ``n = w.size`` the number of pruned weights is
    ``k = min(n, floor(fl(fl(sparsity * n) + 0.5)))`` evaluated in IEEE-754
    binary64 (``n`` converted to binary64), i.e. ``sparsity * n`` rounded half
    up.  The pruned weights are the first ``k`` in the order *ascending
    magnitude ``|w|``, then ascending flat C-order index*.  So exact zeros
    (both +0.0 and -0.0) are pruned before anything else, and among weights of
    equal magnitude the lower index is pruned first.  ``sparsity = 1.0``
    prunes everything (an all-pruned tensor is legal).

    Threshold rule: a weight is pruned when ``|w| <= threshold``, compared
    exactly (the mathematical values, not after rounding ``threshold`` to the
    weight dtype).  ``threshold = 0`` prunes exactly the zeros.

    Args:
        w: Weights of any shape, a floating dtype, all finite.
        sparsity: Fraction of weights to prune, ``0 <= sparsity <= 1``.
        threshold: Magnitude at or below which a weight is pruned, finite and
            ``>= 0``.

    Returns:
        A bool array of ``w.shape``; True where the weight is kept.

    Raises:
        CmzError: (check ``"encoder_options"``) when both or neither of
            ``sparsity``/``threshold`` are given, either is out of range,
            ``w`` is not floating point, or ``w`` holds NaN or infinity.

    Example:
        >>> prune_mask(np.array([3.0, -1.0, 1.0, 0.0, 2.0]), sparsity=0.4).tolist()
        [True, False, True, False, True]
        >>> prune_mask(np.array([0.5, -0.25, 0.0]), threshold=0.25).tolist()
        [True, False, False]
    """
    a = np.asarray(w)
    if not np.issubdtype(a.dtype, np.floating):
        raise CmzError(_CHECK, f"weights to prune must be floating point, found dtype {a.dtype}")
    _check_finite(a, "weights to prune")
    if (sparsity is None) == (threshold is None):
        raise CmzError(_CHECK, "pruning needs exactly one of sparsity or threshold, found "
                       + ("both" if sparsity is not None else "neither"))
    flat = a.reshape(-1)
    keep = np.empty(flat.size, dtype=bool)
    if threshold is not None:
        t = _real(threshold, "threshold")
        if not (math.isfinite(t) and t >= 0.0):
            raise CmzError(_CHECK, f"threshold must be finite and >= 0, found {t!r}")
        # |w| <= t  <=>  |w| <= (largest value of w's dtype that is <= t).
        t_w = _round_down(t, a.dtype)
        for a0, a1 in _flat_chunks(flat.size):
            np.greater(np.abs(flat[a0:a1]), t_w, out=keep[a0:a1])
        return keep.reshape(a.shape)

    s = _real(sparsity, "sparsity")
    if not 0.0 <= s <= 1.0:
        raise CmzError(_CHECK, f"sparsity must be in [0, 1], found {s!r}")
    n = flat.size
    k = min(n, math.floor(s * float(n) + 0.5))
    if k == 0 or k == n:
        keep[:] = k == 0
        return keep.reshape(a.shape)

    # The k-th smallest magnitude is the boundary: everything below it is
    # pruned, everything above kept, and of the weights equal to it the
    # lowest-index `ties` are pruned.
    magnitudes = np.abs(flat)
    magnitudes.partition(k - 1)
    boundary = magnitudes[k - 1]
    ties = k - int(np.count_nonzero(magnitudes[: k - 1] < boundary))
    del magnitudes
    for a0, a1 in _flat_chunks(n):
        m = np.abs(flat[a0:a1])
        np.greater(m, boundary, out=keep[a0:a1])
        equal = m == boundary
        if ties == 0:
            keep[a0:a1] |= equal
            continue
        n_equal = int(np.count_nonzero(equal))
        if n_equal <= ties:
            ties -= n_equal
            continue
        first_kept = int(np.flatnonzero(equal)[ties])
        keep[a0 + first_kept : a1] |= equal[first_kept:]
        ties = 0
    return keep.reshape(a.shape)


# --------------------------------------------------------------------------
# Row scales


def row_scales(
    w2d: np.ndarray,
    mask2d: np.ndarray | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """One scale per row: the RMS of the row's kept weights, in the storage dtype.

    ``scale[r] = sqrt(sum(w[r, j]**2 for kept j) / count)``, computed in
    float64 and rounded to nearest in ``dtype``.  A row with no kept weights,
    or whose kept weights are all zero, gets exactly 1.0.  Any positive finite
    value of ``dtype`` is a valid scale, subnormals included: the encoder
    divides by the *stored* scale, so the scale's own precision never reaches
    the decoded weights.  A nonzero RMS that rounds to 0 (below half the
    smallest subnormal, e.g. 3e-8 for float16) is raised to the smallest
    subnormal of ``dtype``; the row's normalised weights are then below
    ``sqrt(count)`` and its absolute error stays below that tiny scale times
    the codebook spacing.  An RMS that rounds to infinity is an error.

    Args:
        w2d: Weight matrix ``[rows, cols]``, float16/float32/float64, finite.
        mask2d: Bool matrix of the same shape, True = kept; None keeps all.
        dtype: Storage dtype of the scales, float32 or float16.

    Returns:
        Array ``[rows]`` of ``dtype``, every element positive and finite.

    Raises:
        CmzError: (check ``"encoder_options"``) for a bad shape, dtype or mask,
            non-finite weights, or a row whose RMS overflows ``dtype`` (for
            float16 the message says that float32 scales are needed).

    Example:
        >>> row_scales(np.array([[3.0, -4.0], [0.0, 0.0]]), None).tolist()
        [3.535533905029297, 1.0]
    """
    w2d = _weight_matrix(w2d, "w2d")
    mask2d = _mask_matrix(mask2d, w2d.shape)
    scale_dtype = _storage_dtype(dtype, "scale dtype")
    _check_finite(w2d, "weights")
    return _row_scales(w2d, mask2d, scale_dtype)


# --------------------------------------------------------------------------
# k-means


def kmeans_1d(values: np.ndarray, k: int, iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Deterministic 1-D k-means (Lloyd) with linear initialisation.

    Rules, in order:

    * The values (any shape, flattened) are sorted once: in float32 when given
      as float16/float32 (exact), otherwise in float64.  Cluster sums are
      float64 (totals of fixed blocks of the sorted values, summed in order).
    * Empty input gives no centroids.  If the input has at most ``k`` distinct
      values, the centroids are exactly those values and no iteration runs.
    * Linear initialisation (Deep Compression): with ``lo``/``hi`` the minimum
      and maximum, ``c[i] = lo + (hi - lo) * (i / (k - 1))`` for
      ``i = 0..k-1`` in float64; for ``k = 1``, ``c[0] = lo + (hi - lo) / 2``.
    * One iteration: with midpoints ``m[j] = (c[j] + c[j+1]) / 2`` (float64),
      cluster ``j`` is the values ``v`` with ``m[j-1] < v <= m[j]`` (a value
      on a midpoint joins the lower cluster, as in :func:`quantize`).  Each
      non-empty cluster's new centroid is its mean, clamped to the cluster's
      [min, max] (so a single-valued cluster sits exactly on its value).
    * Empty clusters: the empty centroids are dropped and, one at a time,
      replaced by splitting the cluster with the largest sum of squared
      errors about its mean (ties: the lowest cluster; only clusters holding
      two or more distinct values qualify).  The split puts values ``<= mean``
      on the left and the rest on the right (if rounding leaves the right
      side empty, the cluster's largest value alone goes right); both halves
      get their own mean as centroid.  The halves' SSEs are recomputed before
      the next split.  This keeps exactly ``k`` centroids whenever the input
      has more than ``k`` distinct values, and never increases the SSE.
    * Stop when an iteration leaves every centroid unchanged, or after
      ``iterations`` iterations (0 returns the initialisation).
    * Returned centroids are strictly increasing; -0.0 is returned as +0.0.

    There is no randomness: the same input gives bit-identical output.

    Args:
        values: Real numbers, finite, magnitude at most 2**960.
        k: Maximum number of centroids, ``>= 1``.
        iterations: Maximum number of Lloyd iterations, ``>= 0``.

    Returns:
        float64 array of ``min(k, number of distinct values)`` centroids,
        strictly increasing.  Labels are ``quantize(values, centroids)``.

    Raises:
        CmzError: (check ``"encoder_options"``) for ``k < 1``,
            ``iterations < 0``, non-real or non-finite values, or values
            beyond the magnitude limit.

    Example:
        >>> kmeans_1d(np.array([0.0, 1, 2, 3, 10, 11, 12, 20]), 3).tolist()
        [1.5, 11.0, 20.0]
    """
    k = _int(k, "k", 1)
    iterations = _int(iterations, "iterations", 0)
    v = np.asarray(values)
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise CmzError(_CHECK, f"k-means values must be real numbers, found dtype {v.dtype}")
    sort_dtype = np.float32 if v.dtype in _STORAGE_DTYPES else np.float64
    s = v.astype(sort_dtype).reshape(-1)
    s.sort()
    if s.size and not (math.isfinite(s[0]) and math.isfinite(s[-1])):
        raise CmzError(_CHECK, "k-means values: expected finite values, found NaN or infinity")
    if s.size and max(-float(s[0]), float(s[-1])) > _MAX_MAGNITUDE:
        raise CmzError(_CHECK, f"k-means values: expected magnitudes <= 2**960, found "
                       f"{max(-float(s[0]), float(s[-1])):.6g}")
    return _kmeans_sorted(s, k, iterations)


def quantize(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value; ties go to the lower index.

    ``i`` is the number of midpoints ``(c[j] + c[j+1]) / 2`` (float64) that are
    strictly less than the value, so a value exactly on a midpoint takes the
    lower centroid.  Comparisons are exact (float16/float32 values are never
    rounded).

    Args:
        values: Real numbers of any shape, finite.
        centroids: 1-D, non-empty, finite, strictly increasing.

    Returns:
        intp array of ``values.shape`` with indices into ``centroids``.

    Raises:
        CmzError: (check ``"encoder_options"``) if ``centroids`` is empty, not
            1-D, not finite or not strictly increasing, or ``values`` is not
            real or not finite.

    Example:
        >>> quantize(np.array([0.5, 1.4, 1.5, 9.0]), np.array([0.0, 1.0, 2.0])).tolist()
        [0, 1, 1, 2]
    """
    c = np.asarray(centroids)
    if c.ndim != 1 or c.size == 0:
        raise CmzError(_CHECK, f"centroids: expected a non-empty 1-D array, found shape {c.shape}")
    if not (np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
        raise CmzError(_CHECK, f"centroids must be real numbers, found dtype {c.dtype}")
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise CmzError(_CHECK, "centroids: expected finite values, found NaN or infinity")
    if np.any(c[1:] <= c[:-1]):
        raise CmzError(_CHECK, "centroids: expected strictly increasing values, found "
                       f"c[{int(np.flatnonzero(c[1:] <= c[:-1])[0]) + 1}] <= its predecessor")
    v = np.asarray(values)
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise CmzError(_CHECK, f"values to quantize must be real numbers, found dtype {v.dtype}")
    _check_finite(v, "values to quantize")
    if v.dtype not in _WEIGHT_DTYPES:
        v = v.astype(np.float64)
    codes = _Nearest(c, v.dtype)(np.ascontiguousarray(v).reshape(-1))
    return codes.astype(np.intp, copy=False).reshape(v.shape)


# --------------------------------------------------------------------------
# The encoder's step


def build_codebook(
    w2d: np.ndarray,
    bits: int,
    sparse: bool,
    mask2d: np.ndarray | None = None,
    scale: str = "row",
    codebook_dtype=np.float32,
    scale_dtype=np.float32,
    iterations: int = DEFAULT_ITERATIONS,
) -> CodebookResult:
    """Share one tensor's weights through a codebook (DESIGN §4 step 3).

    Steps and rules:

    1. Kept weights: dense codebooks keep every weight (``mask2d`` must be
       None; exact zeros are ordinary values).  Sparse codebooks keep
       ``mask2d`` if given, else the nonzero weights (``w != 0``).
    2. Scales (``scale="row"``): :func:`row_scales` of the kept weights in
       ``scale_dtype``.  ``scale="none"``: no scales.
    3. Normalised value of a kept weight: ``float32(w) / float32(scale[row])``
       computed in float32 (or ``float32(w)`` without scales).
    4. Centroids: :func:`kmeans_1d` of the normalised kept values with
       ``2**bits`` centroids (dense) or ``2**bits - 1`` (sparse), rounded to
       ``codebook_dtype``; -0.0 becomes +0.0, and centroids that round to the
       same stored value are merged, so stored values are strictly increasing.
    5. Codebook: dense ``[stored..., 0.0 padding]``; sparse
       ``[0.0, stored..., 0.0 padding]`` (code 0 is reserved and exactly +0.0).
       Length exactly ``2**bits``; ``size`` counts the non-padding entries.
    6. Codes: each kept weight gets the nearest *stored* centroid to its
       normalised value, per :func:`quantize` (ties to the lower code).  Sparse
       kept weights get codes ``1..size-1`` only, even when 0.0 would be
       nearer; pruned weights get code 0.

    Args:
        w2d: Weight matrix ``[rows, cols]``, float16/float32/float64, finite and
            within the float32 range.  Not modified.
        bits: Code width, 1..8.
        sparse: True for a sparse codebook (reserved zero code).
        mask2d: Bool matrix, True = kept; only for sparse codebooks.
        scale: ``"row"`` (one scale per row) or ``"none"``.
        codebook_dtype: float32 or float16.
        scale_dtype: float32 or float16.
        iterations: Maximum Lloyd iterations (see :func:`kmeans_1d`).

    Returns:
        A :class:`CodebookResult`; its ``dequantize()`` is the float32 matrix
        the decoder must reproduce exactly.

    Raises:
        CmzError: (check ``"encoder_options"``) for any invalid argument,
            non-finite weights, weights outside float32, a mask with a dense
            codebook, row scales not representable in ``scale_dtype`` (see
            :func:`row_scales`), or centroids that overflow ``codebook_dtype``.

    Example:
        >>> w = np.array([[0.0, 2.0, -2.0, 4.0]], dtype=np.float32)
        >>> r = build_codebook(w, bits=2, sparse=True, scale="none")
        >>> r.codebook.tolist(), r.codes.tolist(), r.size
        ([0.0, -2.0, 2.0, 4.0], [[0, 2, 1, 3]], 4)
        >>> r.dequantize().tolist()
        [[0.0, 2.0, -2.0, 4.0]]
    """
    bits = _int(bits, "bits", _MIN_BITS, _MAX_BITS)
    if not isinstance(sparse, (bool, np.bool_)):
        raise CmzError(_CHECK, f"sparse must be a bool, found {sparse!r}")
    if scale not in ("row", "none"):
        raise CmzError(_CHECK, f"scale must be 'row' or 'none', found {scale!r}")
    cb_dtype = _storage_dtype(codebook_dtype, "codebook dtype")
    sc_dtype = _storage_dtype(scale_dtype, "scale dtype")
    iterations = _int(iterations, "iterations", 0)
    w2d = _weight_matrix(w2d, "w2d")
    _check_finite(w2d, "weights", float32_range=True)
    if sparse:
        kept = _mask_matrix(mask2d, w2d.shape) if mask2d is not None else w2d != 0
    elif mask2d is not None:
        raise CmzError(_CHECK, "a dense codebook keeps every weight: expected mask2d=None, found a "
                       "mask (apply it to the weights, or use a sparse codebook)")
    else:
        kept = None

    scales = _row_scales(w2d, kept, sc_dtype) if scale == "row" else None
    divisors = None if scales is None else scales.astype(np.float32)
    rows, cols = w2d.shape
    blocks = list(_blocks(rows, cols))

    n_kept = w2d.size if kept is None else int(np.count_nonzero(kept))
    normalised = np.empty(n_kept, dtype=np.float32)
    at = 0
    for block in blocks:
        v = _normalised_block(w2d, kept, divisors, block)
        normalised[at : at + v.size] = v
        at += v.size
    normalised.sort()
    first_code = 1 if sparse else 0
    centroids = _kmeans_sorted(normalised, 2**bits - first_code, iterations)
    del normalised

    with np.errstate(over="ignore"):
        stored = centroids.astype(cb_dtype)
    if not np.isfinite(stored).all():
        raise CmzError(_CHECK, f"codebook: expected centroids representable in {cb_dtype}, found "
                       f"{np.abs(centroids).max():.6g} beyond its range; use a float32 codebook"
                       + (" or row scales" if scale == "none" else ""))
    stored = np.unique(stored + cb_dtype.type(0))
    size = first_code + stored.size
    codebook = np.zeros(2**bits, dtype=cb_dtype)
    codebook[first_code:size] = stored

    codes = np.zeros((rows, cols), dtype=np.uint8)
    if stored.size:
        nearest = _Nearest(stored.astype(np.float64), np.dtype(np.float32))
        for r0, r1, c0, c1 in blocks:
            q = nearest(_normalised_block(w2d, kept, divisors, (r0, r1, c0, c1)))
            q += first_code
            if kept is None:
                codes[r0:r1, c0:c1] = q.reshape(r1 - r0, c1 - c0)
            else:
                codes[r0:r1, c0:c1][kept[r0:r1, c0:c1]] = q
    return CodebookResult(codebook=codebook, codes=codes, scales=scales, size=size)


# --------------------------------------------------------------------------
# Private helpers


def _row_scales(w2d: np.ndarray, mask2d: np.ndarray | None, scale_dtype: np.dtype) -> np.ndarray:
    """row_scales on validated arguments."""
    rows, cols = w2d.shape
    sum_sq = np.zeros(rows, dtype=np.float64)
    count = np.zeros(rows, dtype=np.int64)
    for r0, r1, c0, c1 in _blocks(rows, cols):
        with np.errstate(over="ignore"):  # float64 weights beyond 1e154: reported below
            sq = np.square(w2d[r0:r1, c0:c1], dtype=np.float64)
        if mask2d is None:
            count[r0:r1] += c1 - c0
        else:
            m = mask2d[r0:r1, c0:c1]
            np.multiply(sq, m, out=sq)
            count[r0:r1] += np.count_nonzero(m, axis=1)
        sum_sq[r0:r1] += sq.sum(axis=1)
    rms = np.ones(rows, dtype=np.float64)
    nonzero = sum_sq > 0.0
    rms[nonzero] = np.sqrt(sum_sq[nonzero] / count[nonzero])
    with np.errstate(over="ignore", under="ignore"):
        scales = rms.astype(scale_dtype)
    info = np.finfo(scale_dtype)
    scales[scales == 0] = info.smallest_subnormal
    overflow = np.flatnonzero(~np.isfinite(scales))
    if overflow.size:
        r = int(overflow[0])
        hint = ("; use float32 scales" if scale_dtype == np.float16
                else "; the weights are outside the range float32 can scale")
        raise CmzError(
            _CHECK,
            f"row scale of row {r}: expected an RMS of at most {info.max} ({scale_dtype} max), "
            f"found {rms[r]:.6g} ({overflow.size} rows affected){hint}",
        )
    return scales


def _kmeans_sorted(s: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """kmeans_1d on values already sorted ascending (float32 or float64, finite)."""
    n = s.size
    if n == 0:
        return np.empty(0, dtype=np.float64)
    distinct = _distinct_sorted(s, k)
    if distinct is not None:
        return distinct.astype(np.float64) + 0.0
    lo, hi = float(s[0]), float(s[-1])
    if k == 1:
        c = np.array([lo + (hi - lo) / 2])
    else:
        c = lo + (hi - lo) * (np.arange(k) / (k - 1))
    prefix = _BlockPrefix(s)
    for _ in range(iterations):
        edges = np.empty(k + 1, dtype=np.intp)
        edges[0], edges[-1] = 0, n
        edges[1:-1] = np.searchsorted(s, _midpoints(c, s.dtype), side="right")
        starts, ends = edges[:-1], edges[1:]
        filled = ends > starts
        edges = np.unique(edges)
        sums = np.diff(np.array([prefix.at(int(e)) for e in edges]))
        starts, ends = starts[filled], ends[filled]
        means = np.clip(sums / (ends - starts),
                        s[starts].astype(np.float64), s[ends - 1].astype(np.float64))
        if means.size < k:
            means = _split_clusters(s, starts, ends, means, k)
        if np.array_equal(means, c):
            break
        c = means
    return c + 0.0


def _distinct_sorted(s: np.ndarray, limit: int) -> np.ndarray | None:
    """The distinct values of sorted, non-empty ``s`` if at most ``limit``, else None."""
    firsts = [s[:1]]
    count = 1
    for a0, a1 in _flat_chunks(s.size - 1):
        changes = np.flatnonzero(s[a0 + 1 : a1 + 1] != s[a0:a1])
        count += changes.size
        if count > limit:
            return None
        firsts.append(s[a0 + 1 + changes])
    return np.concatenate(firsts)


class _BlockPrefix:
    """Prefix sums of sorted values at any index, from per-block totals.

    ``at(i) = sum(s[:i])`` as the float64 running total of whole blocks of
    ``_PREFIX_BLOCK`` values plus the partial block up to ``i``.  Holding one
    float64 per block instead of per value keeps 10**8 values from needing an
    800 MB prefix array; each lookup costs at most one block.
    """

    def __init__(self, s: np.ndarray):
        self.s = s
        n_blocks = s.size // _PREFIX_BLOCK
        totals = np.empty(n_blocks, dtype=np.float64)
        step = max(1, _CHUNK_ELEMENTS // _PREFIX_BLOCK)
        for b0 in range(0, n_blocks, step):
            b1 = min(n_blocks, b0 + step)
            part = s[b0 * _PREFIX_BLOCK : b1 * _PREFIX_BLOCK].reshape(b1 - b0, _PREFIX_BLOCK)
            totals[b0:b1] = part.sum(axis=1, dtype=np.float64)
        self.block_prefix = np.concatenate(([0.0], np.cumsum(totals)))

    def at(self, i: int) -> float:
        b = i // _PREFIX_BLOCK
        tail = self.s[b * _PREFIX_BLOCK : i].sum(dtype=np.float64)
        return float(self.block_prefix[b] + tail)


def _split_clusters(s, starts, ends, means, k) -> np.ndarray:
    """Refill to k centroids by splitting the worst clusters (rules: kmeans_1d)."""
    clusters = [
        (int(a), int(b), float(m), _sse(s[a:b], m))
        for a, b, m in zip(starts, ends, means, strict=True)
    ]
    while len(clusters) < k:
        # Only clusters with two or more distinct values can be split; one
        # exists because the input has more than k distinct values.
        worst, worst_sse = -1, -1.0
        for i, (a, b, _, sse) in enumerate(clusters):
            if s[a] < s[b - 1] and sse > worst_sse:
                worst, worst_sse = i, sse
        a, b, mean, _ = clusters[worst]
        x = s[a:b]
        cut = a + int(np.searchsorted(x, _round_down(mean, s.dtype), side="right"))
        if cut == b:
            cut = a + int(np.searchsorted(x, x[-1], side="left"))
        halves = []
        for h0, h1 in ((a, cut), (cut, b)):
            y = s[h0:h1]
            m = min(max(float(np.mean(y, dtype=np.float64)), float(y[0])), float(y[-1]))
            halves.append((h0, h1, m, _sse(y, m)))
        clusters[worst : worst + 1] = halves
    return np.array([m for _, _, m, _ in clusters])


def _sse(x: np.ndarray, mean: float) -> float:
    d = x.astype(np.float64) - mean
    return float(np.dot(d, d))


def _midpoints(c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 midpoints of sorted centroids, rounded down to ``dtype``.

    For values of ``dtype``, ``v <= m`` iff ``v <= round_down(m)``, so the
    search stays exact without converting the (large) searched array.
    """
    return _round_down((c[:-1] + c[1:]) * 0.5, dtype)


class _Nearest:
    """Nearest-centroid search (rule: quantize) for values of one dtype.

    For float32 values, each value's bucket (the top bits of an order-preserving
    integer key of its bit pattern) gives the number of midpoints in lower
    buckets; a few vectorised compare passes then settle the midpoints in its
    own bucket.  Exact, and ~6x faster than np.searchsorted on unsorted
    values.  Other dtypes, or midpoints crowded into one bucket, fall back to
    np.searchsorted.
    """

    def __init__(self, centroids: np.ndarray, dtype: np.dtype):
        # +0: a -0.0 midpoint would get a key below +0.0 values it equals.
        self.midpoints = _midpoints(centroids, dtype) + dtype.type(0)
        self.table = None
        if dtype == np.float32 and self.midpoints.size:
            buckets = _order_keys(self.midpoints) >> _KEY_SHIFT
            passes = int(np.bincount(buckets).max())
            if passes <= _MAX_PASSES:
                self.passes = passes
                self.table = np.searchsorted(
                    buckets, np.arange(1 << (32 - _KEY_SHIFT)), side="left"
                ).astype(np.int32)
                self.padded = np.append(self.midpoints, np.float32(np.inf))

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """Indices for 1-D ``v`` (finite, of the constructor's dtype)."""
        if self.table is None:
            return np.searchsorted(self.midpoints, v, side="left")
        code = self.table[_order_keys(v) >> _KEY_SHIFT]
        for _ in range(self.passes):
            code += v > self.padded[code]
        return code


def _order_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys ordered as the float32 values (-0.0 just below +0.0)."""
    bits = x.view(np.uint32)
    return bits ^ ((bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000))


def _round_down(x, dtype):
    """Largest value(s) of ``dtype`` that are <= ``x`` (float64 scalar or array)."""
    dtype = np.dtype(dtype)
    x = np.asarray(x, dtype=np.float64)
    if dtype == np.float64:
        return x
    with np.errstate(over="ignore"):
        y = np.atleast_1d(x.astype(dtype))
    above = y.astype(np.float64) > np.atleast_1d(x)
    y[above] = np.nextafter(y[above], dtype.type(-np.inf))
    return y.reshape(x.shape)


def _normalised_block(w2d, kept, divisors, block) -> np.ndarray:
    """Normalised kept values of one block, C order, float32 (rule: build_codebook)."""
    r0, r1, c0, c1 = block
    w = w2d[r0:r1, c0:c1]
    if kept is None:
        v = w.astype(np.float32)
        if divisors is not None:
            v /= divisors[r0:r1, None]
        return v.reshape(-1)
    m = kept[r0:r1, c0:c1]
    v = w[m].astype(np.float32, copy=False)
    if divisors is not None:
        v /= np.repeat(divisors[r0:r1], np.count_nonzero(m, axis=1))
    return v


def _blocks(rows: int, cols: int) -> Iterator[tuple[int, int, int, int]]:
    """Cover [rows, cols] in C order with blocks of at most _CHUNK_ELEMENTS.

    Whole rows are grouped while they fit; a longer row is cut into pieces.
    """
    chunk = _CHUNK_ELEMENTS
    if cols <= chunk:
        step = max(1, chunk // max(cols, 1))
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step), 0, cols
    else:
        for r in range(rows):
            for c0 in range(0, cols, chunk):
                yield r, r + 1, c0, min(cols, c0 + chunk)


def _flat_chunks(n: int) -> Iterator[tuple[int, int]]:
    chunk = _CHUNK_ELEMENTS
    for a0 in range(0, n, chunk):
        yield a0, min(n, a0 + chunk)


def _check_finite(a: np.ndarray, what: str, float32_range: bool = False) -> None:
    """Raise unless every element is finite (and, if asked, within float32)."""
    if a.size == 0:
        return
    lo, hi = float(np.min(a)), float(np.max(a))
    limit = float(np.finfo(np.float32).max) if float32_range else math.inf
    if math.isfinite(lo) and math.isfinite(hi) and -limit <= lo and hi <= limit:
        return
    bad = ~np.isfinite(a).reshape(-1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CmzError(_CHECK, f"{what}: expected finite values, found "
                       f"{int(np.count_nonzero(bad))} NaN/infinite (first at flat index {first})")
    raise CmzError(_CHECK, f"{what}: expected magnitudes within float32 (<= {limit:.6g}), "
                   f"found {max(-lo, hi):.6g}")


def _weight_matrix(w, what: str) -> np.ndarray:
    a = np.asarray(w)
    if a.ndim != 2:
        raise CmzError(_CHECK, f"{what}: expected a 2-D matrix [rows, cols], found shape {a.shape}")
    if a.dtype not in _WEIGHT_DTYPES:
        raise CmzError(_CHECK, f"{what}: expected float16, float32 or float64, "
                       f"found dtype {a.dtype}")
    return a


def _mask_matrix(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != shape:
        raise CmzError(_CHECK, f"mask: expected a bool array of shape {shape}, found {m.dtype} "
                       f"of shape {m.shape}")
    return m


def _storage_dtype(dtype, what: str) -> np.dtype:
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d not in _STORAGE_DTYPES:
        raise CmzError(_CHECK, f"{what}: expected float32 or float16, found {dtype!r}")
    return d


def _int(x, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise CmzError(_CHECK, f"{what}: expected an integer, found {x!r}")
    x = int(x)
    if x < lo or (hi is not None and x > hi):
        expected = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise CmzError(_CHECK, f"{what}: expected an integer {expected}, found {x}")
    return x


def _real(x, what: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise CmzError(_CHECK, f"{what}: expected a real number, found {x!r}")
    return float(x)
