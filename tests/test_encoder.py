"""The encoder end to end (cmodel/encoder.py through ``cmodel.save_file``,
read back with cmodel/container.py and cmodel/encodings.py).

The oracle for every lossy result is the quantiser itself, called directly:
``encoder.prune`` + ``quantize.build_codebook(...).dequantize()`` cast to the
tensor's dtype.  ``decode(encode(x))`` must equal it bit for bit, whatever the
encoding, coding, order or index width.  The quantiser, the relative-index
coder and the Huffman coder have their own unit tests (test_quantize.py,
test_sparse.py, test_huffman.py); this file tests how the encoder combines
them: options, defaults, rules, the file it writes, its report, its inputs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import cmodel
from cmodel.format import constants as C
from cmodel.codecs import quantize
from cmodel.encode import checkpoints as inputs, encoder, rules
from cmodel.errors import CmzError

SKIP_ALL = {"*": {"skip": True}}
DTYPES = ("float32", "float16", "float64", "bfloat16")

# --- the oracle ------------------------------------------------------------------


def make_input(values: np.ndarray, dtype: str):
    """``values`` (float64) as the input the encoder gets: a numpy array, or a
    torch bfloat16 tensor (numpy has no bfloat16)."""
    if dtype == "bfloat16":
        return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16)
    return values.astype(dtype)


def as_weights(x) -> np.ndarray:
    """The weights the encoder sees: float32 for float16/bfloat16 inputs
    (exact widenings), float32/float64 as given."""
    if isinstance(x, torch.Tensor):
        return x.float().numpy()
    return x.astype(np.float32) if x.dtype == np.float16 else x


def cast_like(deq: np.ndarray, dtype: str) -> np.ndarray:
    """float32 → the decoded dtype: astype for float16/float64; bfloat16 is
    rounded to nearest even by torch and returned widened to float32."""
    if dtype == "bfloat16":
        return torch.from_numpy(deq).to(torch.bfloat16).float().numpy()
    return deq.astype(dtype)


def matrix(shape) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


def reference(x, dtype: str, opts: dict):
    """``(expected decoded tensor, kept mask or None, CodebookResult)`` for
    input ``x`` compressed with rule options ``opts``."""
    w = as_weights(x)
    shape = tuple(w.shape)
    w2d = w.reshape(matrix(shape))
    sparsity, threshold = opts.get("sparsity"), opts.get("threshold")
    is_sparse = bool(sparsity) or threshold is not None
    mask = encoder.prune(w2d, sparsity or None, threshold) if is_sparse else None
    sd = opts.get("scale_dtype", "auto")
    cb = quantize.build_codebook(
        w2d,
        opts.get("bits", 8),
        is_sparse,
        mask,
        opts.get("scale", "row"),
        np.dtype(opts.get("codebook_dtype", "float32")),
        np.dtype("float16" if sd == "auto" else sd),
    )
    return cast_like(cb.dequantize(), dtype).reshape(shape), mask, cb


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (so -0.0 ≠ +0.0), dtype and shape included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return np.array_equal(np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u))


def read_back_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float32 if dtype == "bfloat16" else dtype)


def hand_fillers(mask2d: np.ndarray, r: int, order: str) -> int:
    """Fillers needed for the kept positions: a gap of g zeros before an entry
    (since the line start or the previous entry) needs ``g >> r`` of them;
    trailing zeros need none."""
    total = 0
    for line in mask2d if order == "row" else mask2d.T:
        pos = np.flatnonzero(line)
        gaps = np.diff(np.concatenate(([-1], pos))) - 1
        total += int(np.sum(gaps >> r))
    return total


def weights(shape, seed=0, spread=True) -> np.ndarray:
    """Gaussian weights whose rows differ in scale by up to 10**±1.5 (what row
    scales are for), as float64."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if spread and shape:
        w *= (10.0 ** rng.uniform(-1.5, 1.5, shape[0])).reshape((-1,) + (1,) * (len(shape) - 1))
    return w


def compress_one(tmp_path, x, opts, name="w", fname="x.cmz"):
    p = tmp_path / fname
    report = cmodel.save_file({name: x}, p, rules={name: {"compress": True, **opts}})
    return p, report


def check_params(rec, opts, *, sparse: bool):
    p = rec.params
    assert rec.encoding == ("sparse" if sparse else "codebook")
    assert p["bits"] == opts.get("bits", 8)
    assert p["coding"] == opts.get("coding", "huffman")
    assert p["codebook_dtype"] == opts.get("codebook_dtype", "float32")
    if opts.get("scale") == "none":
        assert p["scale"] == "none" and "scales" not in rec.segments
    else:
        sd = opts.get("scale_dtype", "auto")
        assert p["scale"] == ("float16" if sd == "auto" else sd)
    assert ("chunk_symbols" in p) == (p["coding"] == "huffman")
    if p["coding"] == "huffman":
        assert p["chunk_symbols"] == opts.get("chunk_symbols", C.DEFAULT_CHUNK_SYMBOLS)
    if sparse:
        assert p["order"] == opts.get("order", "row")
        if opts.get("index_bits", "auto") != "auto":
            assert p["index_bits"] == opts["index_bits"]


def assert_exact(tmp_path, values, dtype, opts):
    """Compress ``values`` as ``dtype`` with ``opts`` and check the decoded
    tensor against the oracle, bit for bit."""
    x = make_input(values, dtype)
    p, _ = compress_one(tmp_path, x, opts)
    expected, mask, _ = reference(x, dtype, opts)
    got = cmodel.load_file(p)["w"]
    assert got.dtype == read_back_dtype(dtype)
    assert same_bits(got, expected)
    with cmodel.open(p) as f:
        f.verify()
        rec = f.record("w")
        check_params(rec, opts, sparse=mask is not None)
        assert rec.dtype == dtype and rec.shape == values.shape
        assert same_bits(f.read_compressed("w").dense(), expected)
    if mask is not None:
        g = got.reshape(mask.shape)
        assert not np.any(g[~mask]) and not np.any(np.signbit(g[~mask]))  # +0.0 exactly where pruned
    return p, mask


# --- 1. exactness -------------------------------------------------------------------

SHAPES = [(24, 90), (12, 5, 3, 3), (6, 10, 12)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
@pytest.mark.parametrize("scale", ["row", "none"])
@pytest.mark.parametrize("bits", [1, 2, 5, 8])
@pytest.mark.parametrize("coding", C.CODINGS)
def test_codebook_decodes_to_the_quantised_tensor_exactly(tmp_path, coding, bits, scale, codebook_dtype, dtype):
    i = bits + len(dtype)
    values = weights(SHAPES[i % 3], seed=i, spread=scale == "row")
    opts = {"bits": bits, "coding": coding, "scale": scale, "codebook_dtype": codebook_dtype}
    assert_exact(tmp_path, values, dtype, opts)


def _sparse_cases():
    rng = random.Random(20240)
    cases = []
    for i, (coding, order, r) in enumerate(itertools.product(C.CODINGS, C.ORDERS, [1, 2, 3, 4, 5, 6, 7, 8, "auto"])):
        opts = {
            "coding": coding,
            "order": order,
            "index_bits": r,
            "bits": 1 + i % 8,
            "scale": ("row", "none")[(i // 8) % 2],
            "codebook_dtype": rng.choice(["float32", "float16"]),
        }
        if i % 5 == 4:
            opts["threshold"] = 0.4
        else:
            opts["sparsity"] = rng.choice([0.5, 0.8, 0.95])
        if coding == "huffman" and i % 3 == 0:
            opts["chunk_symbols"] = rng.choice([1, 7, 64])
        if opts["scale"] == "row" and i % 4 == 1:
            opts["scale_dtype"] = rng.choice(["float16", "float32"])
        cases.append((DTYPES[(i + i // 4) % 4], SHAPES[i % 3], opts))
    return cases


SPARSE_CASES = _sparse_cases()


def test_sparse_cases_cover_every_option():
    # Guards the sampled matrix below: every value of every option occurs.
    seen = {k: {repr(o.get(k)) for _, _, o in SPARSE_CASES} for k in ("coding", "order", "index_bits", "bits", "scale", "codebook_dtype")}
    assert seen["index_bits"] == {repr(v) for v in [1, 2, 3, 4, 5, 6, 7, 8, "auto"]}
    assert seen["bits"] == {repr(v) for v in range(1, 9)}
    assert all(len(seen[k]) == 2 for k in ("coding", "order", "scale", "codebook_dtype"))
    assert {d for d, _, _ in SPARSE_CASES} == set(DTYPES)
    assert {(d, o["coding"]) for d, _, o in SPARSE_CASES} == set(itertools.product(DTYPES, C.CODINGS))


@pytest.mark.parametrize("dtype, shape, opts", SPARSE_CASES, ids=[f"{d}-{'x'.join(map(str, s))}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for d, s, o in SPARSE_CASES])
def test_sparse_decodes_to_the_quantised_tensor_exactly(tmp_path, dtype, shape, opts):
    values = weights(shape, seed=len(str(opts)), spread=opts["scale"] == "row")
    p, mask = assert_exact(tmp_path, values, dtype, opts)
    with cmodel.open(p) as f:
        c = f.read_compressed("w")
    assert c.n_entries - c.fillers() == int(mask.sum())
    assert c.fillers() == hand_fillers(mask, c.index_bits, opts["order"])


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("sparse", [False, True], ids=["codebook", "sparse"])
def test_every_bit_width_with_default_options(tmp_path, bits, sparse):
    # bits 1..8 with everything else at its default (Huffman, row order, auto
    # index width, float16 row scales).
    opts = {"bits": bits} | ({"sparsity": 0.7} if sparse else {})
    assert_exact(tmp_path, weights((20, 64), seed=bits), "float32", opts)


def test_auto_scale_dtype_falls_back_to_float32_when_float16_overflows(tmp_path):
    # A row whose RMS exceeds float16's max (65504) cannot have a float16
    # scale; 'auto' then stores float32 scales for the whole tensor.
    values = weights((8, 128), seed=3)
    values[2] *= 1e6 / np.sqrt(np.mean(values[2] ** 2))
    p, _ = compress_one(tmp_path, values.astype(np.float32), {})
    with cmodel.open(p) as f:
        assert f.record("w").params["scale"] == "float32"
    expected, _, _ = reference(values.astype(np.float32), "float32", {"scale_dtype": "float32"})
    assert same_bits(cmodel.load_file(p)["w"], expected)
    # Asked for float16 explicitly, it is an error naming the tensor.
    with pytest.raises(CmzError) as ei:
        compress_one(tmp_path, values.astype(np.float32), {"scale_dtype": "float16"}, fname="y.cmz")
    assert ei.value.check == "encoder_options" and "'w'" in str(ei.value)
    assert not (tmp_path / "y.cmz").exists()


# --- 2. properties over shapes, sparsities and options --------------------------------------

SHAPE_KINDS = st.one_of(
    st.just((1, 1)),
    st.tuples(st.just(1), st.integers(1, 300)),
    st.tuples(st.integers(1, 300), st.just(1)),
    st.tuples(st.integers(1, 24), st.integers(1, 40)),
    st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),  # conv K×C×R×S
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8)),
)


@st.composite
def cases(draw):
    shape = draw(SHAPE_KINDS)
    opts = {
        "bits": draw(st.integers(1, 8)),
        "coding": draw(st.sampled_from(C.CODINGS)),
        "scale": draw(st.sampled_from(["row", "none"])),
        "codebook_dtype": draw(st.sampled_from(["float32", "float16"])),
    }
    sparsity = draw(st.one_of(st.none(), st.floats(0.5, 0.99), st.just(1.0)))
    if sparsity is not None:
        opts |= {"sparsity": sparsity, "order": draw(st.sampled_from(C.ORDERS)), "index_bits": draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, "auto"]))}
    if opts["coding"] == "huffman":
        opts["chunk_symbols"] = draw(st.sampled_from([1, 3, 64, C.DEFAULT_CHUNK_SYMBOLS]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    zeros = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))  # extra exact zeros (all-zero rows/columns/tensors)
    return shape, opts, dtype, seed, zeros


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_round_trip_property(tmp_path, case):
    shape, opts, dtype, seed, zeros = case
    rng = np.random.default_rng(seed)
    values = weights(shape, seed=seed)
    values[rng.random(shape) < zeros] = 0.0
    p, mask = assert_exact(tmp_path, values, dtype, opts)
    with cmodel.open(p) as f:
        c = f.read_compressed("w")
    rows, cols = matrix(shape)
    assert (c.rows, c.cols) == (rows, cols)
    if mask is None:
        assert c.encoding == "codebook" and c.n_entries == rows * cols and c.fillers() == 0
        return
    lines = rows if c.order == "row" else cols
    assert c.pointers.shape == (lines + 1,) and c.pointers[0] == 0 and c.pointers[-1] == c.n_entries
    assert np.all(np.diff(c.pointers.astype(np.int64)) >= 0)
    assert c.n_entries - c.fillers() == int(mask.sum())
    assert c.fillers() == hand_fillers(mask, c.index_bits, c.order)
    if opts["sparsity"] == 1.0 or not mask.any():
        assert c.n_entries == 0 and not np.any(cmodel.load_file(p)["w"])


# --- 3. fillers, empty lines, degenerate alphabets -----------------------------------------


def _gap_matrix(gaps, order):
    """One line: a kept 1.0 after each gap of zeros, then 3 trailing zeros;
    a row (1×L) for order 'row', a column (L×1) for 'col'."""
    line = []
    for g in gaps:
        line += [0.0] * g + [1.0]
    line += [0.0] * 3
    a = np.array([line], np.float32)
    return a if order == "row" else a.T.copy()


@pytest.mark.parametrize("order", C.ORDERS)
@pytest.mark.parametrize("coding", C.CODINGS)
@pytest.mark.parametrize("r", [1, 2, 3, 5, 8])
def test_fillers_at_the_gap_boundaries(tmp_path, r, coding, order):
    # A gap of g zeros needs g >> r fillers: none at 2**r - 1, one at 2**r
    # and 2**r + 1, many on long runs; the leading gap counts the same way.
    cases = {
        "2**r-1": ([(1 << r) - 1], 0),
        "2**r": ([1 << r], 1),
        "2**r+1": ([(1 << r) + 1], 1),
        "2*2**r-1": ([2 * (1 << r) - 1], 1),
        "long": ([5 * (1 << r) + 1], 5),
        "very long": ([1000], 1000 >> r),
        "mixed": ([0, (1 << r) - 1, 1 << r, 0, 3 * (1 << r)], 4),
    }
    for label, (gaps, fillers) in cases.items():
        x = _gap_matrix(gaps, order)
        opts = {"threshold": 0.0, "index_bits": r, "coding": coding, "order": order, "scale": "none", "bits": 1}
        p, _ = compress_one(tmp_path, x, opts)
        with cmodel.open(p) as f:
            c = f.read_compressed("w")
            assert c.fillers() == fillers, label
            assert c.n_entries == len(gaps) + fillers, label
            assert c.fillers() == hand_fillers(x != 0, r, order)
            assert same_bits(f.read("w"), x), label  # one distinct value: exact


@pytest.mark.parametrize("order", C.ORDERS)
@pytest.mark.parametrize("coding", C.CODINGS)
def test_empty_rows_and_columns(tmp_path, order, coding):
    values = weights((10, 12), seed=5, spread=False)
    values[[0, 3, 4, 9]] = 0.0  # empty rows, first and last included
    values[:, [0, 5, 11]] = 0.0  # empty columns
    opts = {"sparsity": 0.5, "order": order, "coding": coding, "index_bits": 2}
    p, mask = assert_exact(tmp_path, values, "float32", opts)
    with cmodel.open(p) as f:
        c = f.read_compressed("w")
    per_line = np.diff(c.pointers.astype(np.int64))
    empty = [0, 3, 4, 9] if order == "row" else [0, 5, 11]
    assert np.all(per_line[empty] == 0)
    assert c.fillers() == hand_fillers(mask, 2, order)


@pytest.mark.parametrize("coding", C.CODINGS)
@pytest.mark.parametrize(
    "opts",
    [{}, {"scale": "none"}, {"sparsity": 0.5}, {"sparsity": 1.0}, {"threshold": 0.0, "order": "col"}],
    ids=["codebook", "codebook-no-scale", "sparse", "sparse-all-pruned", "sparse-threshold-col"],
)
def test_all_zero_tensor(tmp_path, coding, opts):
    x = np.zeros((6, 40), np.float32)
    p, _ = compress_one(tmp_path, x, opts | {"coding": coding})
    with cmodel.open(p) as f:
        f.verify()
        got = f.read("w")
        c = f.read_compressed("w")
    assert same_bits(got, x)  # +0.0 everywhere
    if c.encoding == "sparse":
        assert c.n_entries == 0 and c.fillers() == 0 and not np.any(c.pointers)
        assert c.entries.size == 0


@pytest.mark.parametrize("order", C.ORDERS)
def test_sparsity_one_prunes_everything(tmp_path, order):
    x = weights((7, 30), seed=9).astype(np.float32)
    p, _ = compress_one(tmp_path, x, {"sparsity": 1.0, "order": order})
    with cmodel.open(p) as f:
        c = f.read_compressed("w")
        assert f.record("w").encoding == "sparse" and c.n_entries == 0
        assert same_bits(f.read("w"), np.zeros_like(x))


def _used(f, name, role):
    lengths = np.frombuffer(f.segment(f.record(name), role), np.uint8)
    return {int(s): int(lengths[s]) for s in np.flatnonzero(lengths)}


@pytest.mark.parametrize("scale", ["row", "none"])
def test_single_symbol_alphabets(tmp_path, scale):
    # Kept values all equal, no gaps: one code and one delta, each coded as
    # the single bit 0 (length 1).
    x = np.full((8, 32), 0.75, np.float32)
    x[:, 20:] = 0.0  # trailing zeros need no entries
    p, _ = compress_one(tmp_path, x, {"threshold": 0.0, "index_bits": 3, "bits": 4, "scale": scale})
    with cmodel.open(p) as f:
        assert _used(f, "w", "code_lengths") == {1: 1}
        assert _used(f, "w", "delta_lengths") == {0: 1}
        assert f.read_compressed("w").fillers() == 0
        assert same_bits(f.read("w"), x)
    # A constant dense tensor: one used codebook value.
    q, _ = compress_one(tmp_path, np.full((8, 32), -2.5, np.float32), {"scale": scale}, fname="d.cmz")
    with cmodel.open(q) as f:
        assert _used(f, "w", "code_lengths") == {0: 1}
        assert same_bits(f.read("w"), np.full((8, 32), -2.5, np.float32))


@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
@pytest.mark.parametrize("coding", C.CODINGS)
@pytest.mark.parametrize("sparse", [False, True], ids=["codebook", "sparse"])
def test_fewer_distinct_values_than_centroids_is_lossless(tmp_path, sparse, coding, codebook_dtype):
    # Three distinct values (exact in float16) and 2**3 codes: the codebook
    # holds the values themselves, so decoding gives back the input.
    rng = np.random.default_rng(11)
    x = rng.choice(np.array([-1.5, 0.25, 3.0], np.float32), size=(9, 70))
    opts = {"bits": 3, "coding": coding, "scale": "none", "codebook_dtype": codebook_dtype}
    if sparse:
        x[rng.random(x.shape) < 0.6] = 0.0
        opts |= {"threshold": 0.0, "order": "col"}
    p, _ = compress_one(tmp_path, x, opts)
    assert same_bits(cmodel.load_file(p)["w"], x)
    with cmodel.open(p) as f:
        cb = f.read_compressed("w").codebook
    assert sorted(set(cb.tolist()) - {0.0}) == [-1.5, 0.25, 3.0]


# --- 4. read_compressed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        {"bits": 5},
        {"bits": 3, "scale": "none", "codebook_dtype": "float16"},
        {"bits": 4, "sparsity": 0.8, "index_bits": 3},
        {"bits": 6, "sparsity": 0.9, "index_bits": 2, "order": "col", "scale_dtype": "float32"},
        {"bits": 2, "threshold": 0.5, "index_bits": 5, "order": "col", "scale": "none", "codebook_dtype": "float16"},
    ],
    ids=["codebook", "codebook-f16", "sparse-row", "sparse-col", "sparse-col-f16"],
)
def test_read_compressed_fields_and_codings_agree(tmp_path, opts):
    x = weights((12, 4, 3, 3), seed=21).astype(np.float32)
    rows, cols = 12, 36
    sparse = "sparsity" in opts or "threshold" in opts
    got = {}
    for coding in C.CODINGS:
        extra = {"coding": coding} | ({"chunk_symbols": 50} if coding == "huffman" else {})
        p, _ = compress_one(tmp_path, x, opts | extra, fname=f"{coding}.cmz")
        with cmodel.open(p) as f:
            rec = f.record("w")
            c = f.read_compressed("w")
            assert (c.name, c.shape, c.dtype, c.encoding) == ("w", x.shape, "float32", rec.encoding)
            assert (c.rows, c.cols, c.bits) == (rows, cols, opts["bits"])
            # codebook: float32, 2**bits values, exact widening of what is stored
            stored = np.frombuffer(f.segment(rec, "codebook"), rec.params["codebook_dtype"])
            assert c.codebook.dtype == np.float32 and c.codebook.shape == (1 << opts["bits"],)
            assert same_bits(c.codebook, stored.astype(np.float32))
            if opts.get("scale") == "none":
                assert c.scales is None
            else:
                assert c.scales.dtype == np.float32 and c.scales.shape == (rows,)
                assert same_bits(c.scales, np.frombuffer(f.segment(rec, "scales"), rec.params["scale"]).astype(np.float32))
                assert np.all(c.scales > 0)
            if sparse:
                assert c.encoding == "sparse" and c.index_bits == opts["index_bits"] and c.order == opts.get("order", "row")
                assert c.codebook[0] == 0.0 and not np.signbit(c.codebook[0])
                lines = rows if c.order == "row" else cols
                assert c.pointers.shape == (lines + 1,) and c.pointers[0] == 0
                assert np.all(np.diff(c.pointers.astype(np.int64)) >= 0) and c.pointers[-1] == c.n_entries
                assert c.n_entries == rec.params["n_entries"]
            else:
                assert c.encoding == "codebook" and c.index_bits == 0 and c.pointers is None
                assert c.n_entries == rows * cols
            assert c.width == c.bits + c.index_bits
            assert c.entries.dtype == np.uint8 and c.entries.ndim == 1
            assert c.entries.size == -(-c.n_entries * c.width // 8)
            if coding == "packed":
                role = "entries" if sparse else "codes"
                assert c.entries.tobytes() == bytes(f.segment(rec, role))
            assert same_bits(c.dense(), f.read("w"))
            got[coding] = (c.entries.tobytes(), None if c.pointers is None else c.pointers.tolist(), c.codebook.tobytes(),
                           None if c.scales is None else c.scales.tobytes(), c.n_entries, c.fillers())
    assert got["huffman"] == got["packed"]


def test_read_compressed_refuses_raw_tensors(tmp_path):
    p = tmp_path / "r.cmz"
    cmodel.save_file({"b": np.ones(3, np.float32)}, p)
    with cmodel.open(p) as f:
        with pytest.raises(CmzError) as ei:
            f.read_compressed("b")
        assert ei.value.check == "encoding"
        with pytest.raises(KeyError):
            f.read_compressed("nope")


@pytest.mark.parametrize("order", C.ORDERS)
def test_auto_index_bits_minimises_the_packed_stream(tmp_path, order):
    # For packed coding the stream size is exact: ceil(n_r * (r + b) / 8)
    # with n_r = kept + fillers(r).  'auto' picks the smallest (ties: smaller r).
    for seed, sparsity in [(1, 0.5), (2, 0.9), (3, 0.98)]:
        x = weights((16, 200), seed=seed).astype(np.float32)
        p, _ = compress_one(tmp_path, x, {"sparsity": sparsity, "coding": "packed", "order": order, "bits": 4})
        mask = encoder.prune(x, sparsity)
        sizes = [-(-(int(mask.sum()) + hand_fillers(mask, r, order)) * (r + 4) // 8) for r in range(1, 9)]
        with cmodel.open(p) as f:
            assert f.record("w").params["index_bits"] == 1 + sizes.index(min(sizes)), (sparsity, sizes)


# --- 5. defaults, protection, rules (DESIGN §4) -----------------------------------------------


def _model():
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "stem.weight": f32(64, 3, 3, 3),  # first conv: protected
        "stem.bias": f32(64),
        "dw.weight": f32(128, 1, 3, 3),  # depthwise: protected
        "pw.weight": f32(128, 64, 1, 1),
        "bn.running_mean": f32(128),
        "bn.num_batches_tracked": np.array(100, np.int64),
        "emb.weight": torch.randn(50, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
        "fc1.weight": f32(64, 128).astype(np.float16),
        "tiny.weight": f32(31, 33),  # 1023 elements: raw
        "edge.weight": f32(32, 32),  # 1024 elements: compressed
        "table": rng.integers(0, 9, (64, 64)),  # int64: raw
        "fc2.weight": f32(10, 128),  # last linear: protected
        "fc2.bias": f32(10),
    }


COMPRESSED = {"stem.weight", "dw.weight", "pw.weight", "emb.weight", "fc1.weight", "edge.weight", "fc2.weight"}
PROTECTED = {"stem.weight": "first conv", "dw.weight": "depthwise conv", "fc2.weight": "last linear"}


def _encodings(p):
    with cmodel.open(p) as f:
        return {n: (f.record(n).encoding, f.record(n).params) for n in f.tensor_names()}


def test_defaults_are_near_lossless_8_bit_huffman_codebooks(tmp_path):
    model = _model()
    p = tmp_path / "m.cmz"
    report = cmodel.save_file(model, p)
    enc = _encodings(p)
    assert list(enc) == list(model)  # order kept
    assert {n for n, (e, _) in enc.items() if e != "raw"} == COMPRESSED
    for n in COMPRESSED:
        e, params = enc[n]
        assert e == "codebook"  # no pruning by default
        assert params == {"bits": 8, "coding": "huffman", "codebook_dtype": "float32", "scale": "float16", "chunk_symbols": C.DEFAULT_CHUNK_SYMBOLS}
    assert {t.name: t.protected for t in report.tensors if t.protected} == PROTECTED
    back = cmodel.load_file(p)
    for n, v in model.items():
        ref = v.float().numpy() if isinstance(v, torch.Tensor) else v
        if n in COMPRESSED:
            dtype = "bfloat16" if isinstance(v, torch.Tensor) else v.dtype.name
            expected, _, _ = reference(v, dtype, {})
            assert same_bits(back[n], expected), n
            err = np.sqrt(np.mean((back[n].astype(np.float64) - ref) ** 2) / np.mean(ref.astype(np.float64) ** 2))
            assert err < 0.01, (n, err)  # near-lossless
        else:
            assert same_bits(back[n], ref), n  # raw: bit-exact


def test_global_lossy_options_skip_protected_tensors(tmp_path):
    p = tmp_path / "m.cmz"
    report = cmodel.save_file(_model(), p, options={"sparsity": 0.9, "bits": 4, "coding": "packed"})
    enc = _encodings(p)
    for n in COMPRESSED:
        e, params = enc[n]
        assert params["coding"] == "packed", n  # a non-lossy option reaches every tensor
        if n in PROTECTED:
            assert (e, params["bits"]) == ("codebook", 8), n
        else:
            assert (e, params["bits"]) == ("sparse", 4), n
    assert {t.name: t.protected for t in report.tensors if t.protected} == PROTECTED
    for t in report.tensors:
        if t.encoding == "sparse":
            assert t.kept == t.elements - math.floor(0.9 * t.elements + 0.5)  # prune count: sparsity × n, rounded half up


def test_a_rule_naming_a_protected_tensor_applies(tmp_path):
    p = tmp_path / "m.cmz"
    rules = {"stem.weight": {"sparsity": 0.5}, "fc2.*": {"bits": 5}, "dw.weight": {"threshold": 0.3, "bits": 3}}
    cmodel.save_file(_model(), p, rules=rules, options={"sparsity": 0.9, "bits": 4})
    enc = _encodings(p)
    # stem: the rule's sparsity; the global bits (lossy) still do not reach it.
    assert (enc["stem.weight"][0], enc["stem.weight"][1]["bits"]) == ("sparse", 8)
    assert (enc["fc2.weight"][0], enc["fc2.weight"][1]["bits"]) == ("codebook", 5)
    assert (enc["dw.weight"][0], enc["dw.weight"][1]["bits"]) == ("sparse", 3)
    assert (enc["pw.weight"][0], enc["pw.weight"][1]["bits"]) == ("sparse", 4)


def test_protected_tensors():
    shapes = {"a": (8, 3, 3, 3), "dw": (8, 1, 3, 3), "b": (8, 8, 1, 1), "one": (1, 1, 3, 3), "fc": (4, 8), "bias": (4,), "head": (2, 4)}
    assert rules.protected_tensors(shapes) == {"a": "first conv", "head": "last linear", "dw": "depthwise conv"}
    assert rules.protected_tensors({}) == {}


def test_rules_apply_in_order_later_overriding(tmp_path):
    model = {"fc1.weight": weights((32, 64), 1).astype(np.float32), "fc2.weight": weights((32, 64), 2).astype(np.float32),
             "conv.weight": weights((16, 8, 3, 3), 3).astype(np.float32)}
    p = tmp_path / "r.cmz"
    # Every matching pattern applies: fc* gets both the "*" coding and its own bits.
    cmodel.save_file(model, p, rules={"*": {"coding": "packed", "bits": 5}, "fc*": {"bits": 3}, "fc2.*": {"sparsity": 0.5}})
    enc = _encodings(p)
    assert [(enc[n][0], enc[n][1]["bits"], enc[n][1]["coding"]) for n in model] == [
        ("codebook", 3, "packed"), ("sparse", 3, "packed"), ("codebook", 5, "packed")]
    # Reversed: "*" now comes last and overrides fc*'s bits.
    cmodel.save_file(model, p, rules=[("fc*", {"bits": 3}), ("*", {"coding": "packed", "bits": 5})])
    enc = _encodings(p)
    assert [enc[n][1]["bits"] for n in model] == [5, 5, 5]
    # A later sparsity replaces an earlier threshold, and the other way round.
    cmodel.save_file(model, p, rules=[("*", {"threshold": 10.0}), ("fc1.*", {"sparsity": 0.25}), ("conv.*", {"threshold": 0.0})])
    with cmodel.open(p) as f:
        kept = {n: f.read_compressed(n).n_entries - f.read_compressed(n).fillers() for n in model}
    assert kept["fc1.weight"] == 32 * 64 - 512
    assert kept["fc2.weight"] == int(np.count_nonzero(np.abs(model["fc2.weight"]) > 10.0))
    assert kept["conv.weight"] == model["conv.weight"].size


def test_skip_and_compress(tmp_path):
    model = _model()
    p = tmp_path / "s.cmz"
    # skip: everything raw, bit-exact.
    cmodel.save_file(model, p, rules=SKIP_ALL)
    assert {e for e, _ in _encodings(p).values()} == {"raw"}
    back = cmodel.load_file(p)
    assert same_bits(back["emb.weight"], model["emb.weight"].float().numpy())
    assert all(same_bits(back[n], v) for n, v in model.items() if n != "emb.weight")
    # skip everything, then compress one: later rules win.
    cmodel.save_file(model, p, rules={"*": {"skip": True}, "pw.weight": {"compress": True}})
    assert {n for n, (e, _) in _encodings(p).items() if e != "raw"} == {"pw.weight"}
    cmodel.save_file(model, p, rules={"pw.weight": {"compress": True}, "*": {"skip": True}})
    assert {e for e, _ in _encodings(p).values()} == {"raw"}
    # compress: a tiny tensor, a bias and a 0-d tensor; skip: False is compress: True.
    cmodel.save_file(model, p, rules={"tiny.weight": {"compress": True}, "fc2.bias": {"skip": False}, "stem.weight": {"compress": False}})
    enc = _encodings(p)
    assert enc["tiny.weight"][0] == "codebook" and enc["fc2.bias"][0] == "codebook" and enc["stem.weight"][0] == "raw"
    back = cmodel.load_file(p)
    expected, _, _ = reference(model["fc2.bias"], "float32", {})
    assert same_bits(back["fc2.bias"], expected)


def test_global_skip_and_compress_options(tmp_path):
    # save_file documents ``options`` as "global options (same keys) applied
    # before the rules", and check_options accepts skip/compress there.
    model = {"w": weights((32, 64), 1).astype(np.float32), "tiny": weights((4, 4), 2).astype(np.float32)}
    p = tmp_path / "g.cmz"
    cmodel.save_file(model, p, options={"skip": True})
    assert {n: e for n, (e, _) in _encodings(p).items()} == {"w": "raw", "tiny": "raw"}
    cmodel.save_file(model, p, options={"compress": True})
    assert {n: e for n, (e, _) in _encodings(p).items()} == {"w": "codebook", "tiny": "codebook"}
    # ... and a rule still overrides them.
    cmodel.save_file(model, p, options={"skip": True}, rules={"w": {"compress": True}})
    assert {n: e for n, (e, _) in _encodings(p).items()} == {"w": "codebook", "tiny": "raw"}


def test_sparsity_zero_is_a_dense_codebook_and_threshold_zero_prunes_exact_zeros(tmp_path):
    x = weights((16, 64), 4).astype(np.float32)
    x[:, ::4] = 0.0
    p, _ = compress_one(tmp_path, x, {"sparsity": 0.0})
    assert _encodings(p)["w"][0] == "codebook"
    p, mask = assert_exact(tmp_path, x.astype(np.float64), "float32", {"threshold": 0.0})
    assert np.array_equal(mask, x != 0)


@pytest.mark.parametrize(
    "rules, options, fragment",
    [
        ({"*": {"bitz": 4}}, None, "unknown option 'bitz'"),
        (None, {"sparsty": 0.5}, "unknown option 'sparsty'"),
        ({"*": {"bits": 9}}, None, "expected bits an int in 1..8; found 9"),
        (None, {"bits": 0}, "expected bits an int in 1..8; found 0"),
        ({"*": {"bits": True}}, None, "expected bits"),
        ({"*": {"bits": 4.0}}, None, "expected bits"),
        ({"*": {"sparsity": 1.5}}, None, "expected sparsity a number in 0..1; found 1.5"),
        ({"*": {"sparsity": -0.1}}, None, "expected sparsity"),
        ({"*": {"sparsity": float("nan")}}, None, "expected sparsity"),
        ({"*": {"threshold": float("inf")}}, None, "expected threshold"),
        ({"*": {"threshold": -1}}, None, "expected threshold"),
        ({"*": {"sparsity": 0.5, "threshold": 0.1}}, None, "sparsity and threshold"),
        (None, {"sparsity": 0.5, "threshold": 0.1}, "sparsity and threshold"),
        ({"*": {"order": "diag"}}, None, "expected order one of row, col; found 'diag'"),
        ({"*": {"coding": "zstd"}}, None, "expected coding"),
        ({"*": {"index_bits": 9}}, None, "expected index_bits"),
        ({"*": {"index_bits": "Auto"}}, None, "expected index_bits"),
        ({"*": {"codebook_dtype": "float64"}}, None, "expected codebook_dtype"),
        ({"*": {"scale": "col"}}, None, "expected scale"),
        ({"*": {"scale_dtype": "bfloat16"}}, None, "expected scale_dtype"),
        ({"*": {"chunk_symbols": 0}}, None, "expected chunk_symbols"),
        ({"*": {"skip": "yes"}}, None, "expected skip true or false"),
        ({"*": {"compress": 1}}, None, "expected compress true or false"),
        ({"ints": {"compress": True}}, None, "tensor 'ints': expected a float tensor to compress; found int64"),
        ({"*": 5}, None, "expected a dict of options"),
        ([("*",)], None, "rules: expected"),
        (None, [("bits", 4)], "expected a dict of options"),
    ],
)
def test_bad_options_and_rules(tmp_path, rules, options, fragment):
    p = tmp_path / "bad.cmz"
    tensors = {"w": np.ones((32, 64), np.float32), "ints": np.ones((40, 40), np.int64)}
    with pytest.raises(CmzError) as ei:
        cmodel.save_file(tensors, p, rules=rules, options=options)
    assert ei.value.check == "encoder_options"
    assert fragment in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_weights_the_quantiser_refuses_are_reported_with_the_tensor_name(tmp_path):
    x = np.ones((32, 64), np.float32)
    x[3, 5] = np.inf
    with pytest.raises(CmzError) as ei:
        cmodel.save_file({"w": x}, tmp_path / "inf.cmz")
    assert ei.value.check == "encoder_options" and "'w'" in str(ei.value)
    assert os.listdir(tmp_path) == []
    # Stored raw, the same tensor is fine (lossless: inf and all).
    target = tmp_path / "raw.cmz"
    cmodel.save_file({"w": x}, target, rules=SKIP_ALL)
    assert same_bits(cmodel.load_file(target)["w"], x)
    # A failed compression leaves an existing target as it was, and no temporary.
    before = target.read_bytes()
    with pytest.raises(CmzError):
        cmodel.save_file({"ok": np.ones((32, 64), np.float32), "w": x}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["raw.cmz"]


# --- 6. determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [None, {"*": {"sparsity": 0.8, "bits": 5}}, {"*": {"sparsity": 0.8, "bits": 4, "coding": "packed", "order": "col"}}],
    ids=["default", "sparse-huffman", "sparse-packed-col"],
)
def test_same_input_gives_identical_bytes(tmp_path, rules):
    a, b = tmp_path / "a.cmz", tmp_path / "b.cmz"
    cmodel.save_file(_model(), a, rules=rules, metadata={"m": "1"})
    cmodel.save_file(_model(), b, rules=rules, metadata={"m": "1"})
    assert a.read_bytes() == b.read_bytes()
    with cmodel.open(a) as f:
        assert any(f.record(n).encoding != "raw" for n in f.tensor_names())


def test_input_layout_does_not_change_the_file(tmp_path):
    # C order, Fortran order, strided, big-endian and torch inputs of the
    # same values give the same bytes.
    x = weights((24, 40), 8).astype(np.float32)
    strided = np.zeros((48, 40), np.float32)
    strided[::2] = x
    variants = {"c": x, "f": np.asfortranarray(x), "strided": strided[::2], "big-endian": x.astype(">f4"), "torch": torch.from_numpy(x.copy())}
    rules = {"*": {"sparsity": 0.7, "bits": 4, "order": "col", "coding": "packed"}}
    blobs = {}
    for k, v in variants.items():
        p = tmp_path / f"{k}.cmz"
        cmodel.save_file({"w": v}, p, rules=rules)
        blobs[k] = p.read_bytes()
    assert all(b == blobs["c"] for b in blobs.values()), [k for k, b in blobs.items() if b != blobs["c"]]


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0,), (), (1,)], ids=["0x5", "5x0", "0", "scalar", "1"])
@pytest.mark.parametrize(
    "opts",
    [{}, {"coding": "packed"}, {"sparsity": 0.5}, {"sparsity": 0.5, "coding": "packed", "order": "col"}, {"threshold": 0.0, "order": "col"}],
    ids=["codebook", "codebook-packed", "sparse", "sparse-packed-col", "sparse-threshold-col"],
)
def test_degenerate_shapes_compressed_on_request(tmp_path, shape, opts):
    values = np.full(shape, 1.25)
    assert_exact(tmp_path, values, "float32", opts | {"bits": 2})


# --- 7. the report ------------------------------------------------------------------------------


def test_report_accounts_for_every_byte(tmp_path):
    model = _model()
    p = tmp_path / "rep.cmz"
    rules = {"pw.weight": {"sparsity": 0.8}, "fc1.weight": {"sparsity": 0.9, "coding": "packed", "order": "col", "bits": 4}, "edge.weight": {"coding": "packed"}}
    report = cmodel.save_file(model, p, rules=rules)
    size = os.path.getsize(p)
    assert report.file_bytes == size and report.path == str(p)
    totals = report.totals()
    assert sum(totals.values()) == size
    assert totals["preamble"] == C.PREAMBLE_SIZE and all(v >= 0 for v in totals.values())
    assert [t.name for t in report.tensors] == list(model)
    with cmodel.open(p) as f:
        assert totals["header"] == f.header_length
        for t in report.tensors:
            rec = f.record(t.name)
            assert t.stored_bytes == sum(s.length for s in rec.segments.values()), t.name
            assert (t.encoding, t.shape, t.dtype, t.elements) == (rec.encoding, rec.shape, rec.dtype, rec.numel)
            if rec.encoding == "raw":
                assert t.kept == t.elements
                continue
            c = f.read_compressed(t.name)
            assert t.entries == c.n_entries and t.fillers == c.fillers() and t.bits == c.bits
            assert t.kept == c.n_entries - c.fillers()
            if rec.encoding == "sparse":
                assert t.index_bits == c.index_bits and t.order == c.order
    d = report.to_dict()
    json.dumps(d)  # JSON-serialisable
    assert d["file_bytes"] == size
    for td, t in zip(d["tensors"], report.tensors):
        assert td["kept_percent"] == pytest.approx(100.0 * t.kept / t.elements)
        assert td["stored_bytes"] == t.stored_bytes
        if td["encoding"] != "raw":
            assert td["ratio_pq"] > 0 and td["ratio_pqh"] > 0
    assert {td["name"]: td["kept_percent"] for td in d["tensors"] if td["encoding"] == "sparse"} == {
        "pw.weight": pytest.approx(20.0, abs=0.01), "fc1.weight": pytest.approx(10.0, abs=0.01)}
    for k in ("ratio_pruning", "ratio_quantisation", "ratio_huffman", "ratio_file"):
        assert d[k] > 0, k
    assert d["ratio_file"] == pytest.approx(d["fp32_bytes"] / size)
    table = report.format_table()
    for name in model:
        assert name in table
    assert f"{size:,}" in table


def test_report_of_an_all_raw_file(tmp_path):
    p = tmp_path / "raw.cmz"
    report = cmodel.save_file({"b": np.ones(3, np.float32), "n": np.array(3, np.int64)}, p)
    assert sum(report.totals().values()) == report.file_bytes == os.path.getsize(p)
    json.dumps(report.to_dict())
    assert "b" in report.format_table()


# --- 8. inputs ----------------------------------------------------------------------------------


class Gadget:
    """A pickled object whose unpickling would run code (creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state_dict():
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 6, generator=g), "fc.bias": torch.zeros(4), "steps": torch.tensor(7),
            "half": torch.randn(3, 2, generator=g).to(torch.bfloat16)}


def _equal_state(a, b, ordered=True):
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for k in a:
        assert isinstance(a[k], torch.Tensor)
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_load_pt(tmp_path, wrap):
    sd = _state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd, "optimizer": {"lr": 0.1}}}[wrap]
    p = tmp_path / "ckpt.pt"
    torch.save(obj, p)
    _equal_state(inputs.load_tensors(p), sd)
    # and on through the encoder
    cmodel.save_file(inputs.load_tensors(p), tmp_path / "m.cmz", rules=SKIP_ALL)
    back = cmodel.load_file(tmp_path / "m.cmz")
    assert same_bits(back["half"], sd["half"].float().numpy())


def test_load_pt_refuses_pickled_code(tmp_path):
    # weights_only=True: a pickle that would call open() is refused, not run.
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2), "x": Gadget(str(marker))}, p)
    with pytest.raises(CmzError) as ei:
        inputs.load_tensors(p)
    assert ei.value.check == "input" and "weights_only=True" in str(ei.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"w": torch.zeros(2), "n": 3}, [torch.zeros(2)], {}], ids=["non-tensor-value", "list", "empty"])
def test_load_pt_refuses_non_state_dicts(tmp_path, obj):
    p = tmp_path / "x.pt"
    torch.save(obj, p)
    with pytest.raises(CmzError) as ei:
        inputs.load_tensors(p)
    assert ei.value.check == "input"


def test_load_safetensors_and_npz(tmp_path):
    from safetensors.torch import save_file as st_save

    sd = _state_dict()
    p = tmp_path / "m.safetensors"
    st_save(sd, p)
    # safetensors keeps no state-dict order (its header is a JSON map).
    _equal_state(inputs.load_tensors(p), sd, ordered=False)
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(3, dtype=np.int16), "b": np.array([True, False])}
    q = tmp_path / "m.npz"
    np.savez(q, **arrays)
    back = inputs.load_tensors(q)
    assert list(back) == list(arrays) and all(same_bits(back[k], v) for k, v in arrays.items())


@pytest.mark.parametrize("name", ["m.bin", "m.npy", "m", "m.safetensors.gz"])
def test_unknown_input_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x00" * 16)
    with pytest.raises(CmzError) as ei:
        inputs.load_tensors(p)
    assert ei.value.check == "input" and ".safetensors" in str(ei.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_save_tensors_round_trip(tmp_path, suffix):
    arrays = {"w": weights((3, 4), 1).astype(np.float32), "h": np.array([1.5, -2.0], np.float16),
              "i": np.arange(5, dtype=np.int64), "s": np.array(2.5, np.float64)}
    p = tmp_path / f"out{suffix}"
    inputs.save_tensors(arrays, p)
    back = inputs.load_tensors(p)
    assert (list(back) if suffix != ".safetensors" else sorted(back)) == (list(arrays) if suffix != ".safetensors" else sorted(arrays))
    for k, v in arrays.items():
        got = back[k].numpy() if isinstance(back[k], torch.Tensor) else back[k]
        assert same_bits(np.asarray(got), v), k
    assert sorted(os.listdir(tmp_path)) == [f"out{suffix}"]  # no temporary left


def test_save_tensors_unknown_suffix(tmp_path):
    with pytest.raises(CmzError) as ei:
        inputs.save_tensors({"w": np.zeros(2)}, tmp_path / "out.bin")
    assert ei.value.check == "input"
    assert os.listdir(tmp_path) == []
