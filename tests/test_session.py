"""runtime/session.py: Session load and run, backends, and parity of whole
networks against PyTorch (DESIGN §5, spec §10).

Parity has two parts per architecture and batch size (1 and 4):

* exact: the file stores every weight raw (``skip``), so the numpy Session
  must reproduce the original module (BatchNorm unfolded, in PyTorch) —
  this checks capture, folding and every op;
* compressed: default compression (8-bit row-scaled codebooks, Huffman),
  against PyTorch running the same graph on the weights decoded by
  ``cmodel.load_file`` (tests/graph_torch.py) — this checks the runtime on
  what the file really holds, without the quantisation error in the way.
"""

import threading

import numpy as np
import pytest
import torch

import cmodel
import models
from cmodel.format.encodings import Compressed
from cmodel.runtime import BACKENDS, DEFAULT_BACKEND, OPS, NumpyBackend, Session, graph_from_header
from graph_torch import assert_close, run_torch
from test_graph import base_graph, base_tensors, write

SKIP = {"*": {"skip": True}}


def parity(tmp_path, model, shape, batches=(1, 4), rules=None, backend="numpy", encoding="codebook"):
    torch.manual_seed(0)
    exact, packed = tmp_path / "exact.cmz", tmp_path / "default.cmz"
    example = torch.randn(1, *shape)
    cmodel.save_model(model, example, exact, rules=SKIP)
    rep = cmodel.save_model(model, example, packed, rules=rules)
    assert any(t.encoding == encoding for t in rep.tensors)  # really compressed
    decoded = cmodel.load_file(packed)
    with Session(exact, backend=backend) as s_exact, Session(packed, backend=backend) as s:
        for b in batches:
            x = torch.randn(b, *shape)
            with torch.no_grad():
                ref = model(x).numpy()
            (y,) = s_exact.run(x.numpy())
            assert_close(y, ref)
            (y,) = s.run(x.numpy())
            (ref_decoded,) = run_torch(s.graph, decoded, [x.numpy()])
            assert_close(y, ref_decoded)
            if encoding == "codebook":  # and the compressed model is still the model (8-bit codebooks)
                assert float(np.abs(y - ref).max()) < 0.1 * float(np.abs(ref).max())


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_parity_small(tmp_path, name, backend):
    _, _, small, shape = models.ARCHITECTURES[name]
    torch.manual_seed(0)
    parity(tmp_path, models.perturb(small()), shape, backend=backend)


# Sparse weights on the cpu backend's kernels: both entry orders, packed and
# Huffman, several widths (w = r + b of 8, 16 and odd ones).
SPARSE_RULES = {
    "row-huffman": {"*": {"sparsity": 0.7, "bits": 5, "compress": True}},
    "col-packed-w8": {"*": {"sparsity": 0.8, "bits": 4, "index_bits": 4, "order": "col", "coding": "packed", "compress": True}},
    "row-packed-w16": {"*": {"sparsity": 0.6, "bits": 8, "index_bits": 8, "coding": "packed", "compress": True}},
    "row-packed-w7": {"*": {"sparsity": 0.9, "bits": 4, "index_bits": 3, "coding": "packed", "scale": "none", "compress": True}},
}


@pytest.mark.parametrize("rules", list(SPARSE_RULES))
@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_parity_small_sparse_cpu(tmp_path, name, rules):
    _, _, small, shape = models.ARCHITECTURES[name]
    torch.manual_seed(0)
    parity(tmp_path, models.perturb(small()), shape, rules=SPARSE_RULES[rules], backend="cpu", encoding="sparse")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_parity_full_size(tmp_path, name):
    full, shape, _, _ = models.ARCHITECTURES[name]
    torch.manual_seed(0)
    # 6-bit codebooks: the same code paths as the 8-bit default at half the
    # k-means time on 11M weights.
    parity(tmp_path, models.perturb(full()), shape, batches=(1,), rules={"*": {"bits": 6}}, backend="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_parity_full_size_slow(tmp_path, name):
    full, shape, _, _ = models.ARCHITECTURES[name]
    torch.manual_seed(0)
    parity(tmp_path, models.perturb(full()), shape, batches=(1, 2))


# --- load and run -------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    return write(tmp_path / "g.cmz", base_graph())


def test_backend_published_and_chosen_in_one_place(small):
    with Session(small) as s:
        assert s.backend == "cpu" == DEFAULT_BACKEND
    with Session(small, backend="numpy") as s:
        assert s.backend == "numpy"
    assert set(BACKENDS) == {"cpu", "cuda", "numpy"}


@pytest.mark.parametrize("backend, fragment", [("gpu", "backend: expected one of ['cpu', 'cuda', 'numpy']; found 'gpu'"), (None, "found None")])
def test_unknown_backend(small, backend, fragment):
    with pytest.raises(cmodel.CmzError) as e:
        Session(small, backend=backend)
    assert e.value.check == "input" and fragment in str(e.value)


def test_cuda_backend_without_a_gpu_fails_clearly(small):
    """No GPU here (the simulator tests run the cuda backend): asking for it
    is a clear CmzError at load, and device_outputs is refused elsewhere."""
    from numba import cuda

    if cuda.is_available():  # pragma: no cover - a machine with a GPU
        pytest.skip("a CUDA device is present")
    with pytest.raises(cmodel.CmzError, match="backend 'cuda': expected a CUDA device") as e:
        Session(small, backend="cuda")
    assert e.value.check == "input"
    with pytest.raises(cmodel.CmzError, match="device_outputs: expected False for backend 'cpu'"):
        Session(small, backend="cpu", device_outputs=True)


def test_every_op_has_a_numpy_kernel():
    for op in OPS:
        assert callable(getattr(NumpyBackend, "prepare_" + op, None)), op


def test_run_accepts_array_list_tuple_dict_and_any_batch(small):
    with Session(small) as s:
        x = np.random.default_rng(0).standard_normal((5, 2, 6, 6)).astype(np.float32)
        (y,) = s.run(x)
        assert y.shape == (5, 5) and y.dtype == np.float32 and y.flags.c_contiguous
        for form in ([x], (x,), {"x": x}):
            np.testing.assert_array_equal(s.run(form)[0], y)
        np.testing.assert_allclose(s.run(x[2:3])[0], y[2:3], rtol=1e-5, atol=1e-5)  # batch 1; samples are independent
        ref = run_torch(s.graph, base_tensors(), [x])[0]
        assert_close(y, ref)


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        (np.zeros((1, 2, 6, 6), np.float64), "input 'x': expected dtype float32; found float64"),
        (np.zeros((1, 2, 6, 5), np.float32), "input 'x': expected shape [N, 2, 6, 6] (any N ≥ 1); found [1, 2, 6, 5]"),
        (np.zeros((2, 6, 6), np.float32), "input 'x': expected shape [N, 2, 6, 6] (any N ≥ 1); found [2, 6, 6]"),
        (np.zeros((0, 2, 6, 6), np.float32), "found [0, 2, 6, 6]"),
        ([np.zeros((1, 2, 6, 6), np.float32)] * 2, "inputs: expected 1 array(s), one per graph input ['x']; found 2"),
        ([[[0.0] * 6] * 6], "input 'x': expected a numpy array of shape [N, 2, 6, 6] (any N ≥ 1), float32; found list"),
        ({"y": np.zeros((1, 2, 6, 6), np.float32)}, "inputs: expected arrays for ['x']; found no 'x'"),
        ("x", "inputs: expected a numpy array or a list of 1; found str"),
    ],
)
def test_bad_inputs_name_the_input(small, inputs, fragment):
    with Session(small) as s:
        with pytest.raises(cmodel.CmzError) as e:
            s.run(inputs)
    assert e.value.check == "input"
    assert fragment in str(e.value), str(e.value)


def two_io_graph():
    g = base_graph()
    g["inputs"].append({"name": "bias", "shape": [None, 5], "dtype": "float32"})
    g["nodes"] += [
        {"op": "add", "inputs": ["y", "bias"], "outputs": ["z"], "params": {}, "attrs": {}},
        {"op": "softmax", "inputs": ["z"], "outputs": ["prob"], "params": {}, "attrs": {"dim": 1}},
        # dead: nothing depends on it, so it never runs and its weights are not held
        {"op": "linear", "inputs": ["f"], "outputs": ["dead"], "params": {"weight": "big.weight"}, "attrs": {}},
    ]
    g["outputs"] = [{"name": "prob", "shape": [None, 5], "dtype": "float32"}, {"name": "z", "shape": [None, 5], "dtype": "float32"}]
    return g


def test_two_inputs_two_outputs(tmp_path):
    t = base_tensors()
    t["big.weight"] = np.ones((1000, 36), np.float32)
    p = write(tmp_path / "two.cmz", two_io_graph(), t)
    rng = np.random.default_rng(1)
    x, b = rng.standard_normal((3, 2, 6, 6)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    with Session(p) as s:
        prob, z = s.run([x, b])
        assert [v.name for v in s.inputs] == ["x", "bias"] and [v.name for v in s.outputs] == ["prob", "z"]
        refs = run_torch(s.graph, t, [x, b])
        assert_close(prob, refs[0])
        assert_close(z, refs[1])
        with pytest.raises(cmodel.CmzError) as e:
            s.run([x, b[:2]])
        assert "input 'bias': expected the batch size 3 of the first input; found 2" in str(e.value)
        dense = sum(t[k].nbytes for k in ("conv.weight", "conv.bias", "fc.weight", "fc.bias"))
        assert s.weight_bytes() == dense  # the dead node's 144 kB are not held
        assert [n.outputs[0] for n, _ in s.kernels()] == ["c", "r", "p", "f", "y", "z", "prob"]
        vals = {"x": x, "bias": b}
        for n, kernel in s.kernels():  # the kernels one by one give the same result
            vals[n.outputs[0]] = kernel([vals[v] for v in n.inputs])[0]
        np.testing.assert_array_equal(vals["prob"], prob)


def test_weight_bytes_dense_arrays(tmp_path):
    torch.manual_seed(0)
    m = models.lenet5()
    p = tmp_path / "l.cmz"
    cmodel.save_model(m, torch.zeros(1, 1, 28, 28), p)
    with Session(p, backend="numpy") as s:
        assert s.weight_bytes() == 4 * sum(v.numel() for v in m.parameters())


def test_weight_bytes_cpu_backend_holds_the_compressed_form(tmp_path):
    torch.manual_seed(0)
    m = models.lenet5()
    p = tmp_path / "l.cmz"
    cmodel.save_model(m, torch.zeros(1, 1, 28, 28), p, options={"sparsity": 0.9, "bits": 5})
    with cmodel.open(p) as f:
        expected = 0
        for name in f.tensor_names():
            r = f.record(name)
            if r.encoding == "raw":
                expected += 4 * r.numel
            else:
                c = f.read_compressed(name)
                expected += sum(a.nbytes for a in (c.codebook, c.scales, c.pointers, c.entries) if a is not None)
    with Session(p, backend="cpu") as s:
        assert s.weight_bytes() == expected
        assert s.weight_bytes() * 5 < 4 * sum(v.numel() for v in m.parameters())


def test_outputs_never_alias_inputs(tmp_path):
    g = {
        "inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}],
        "outputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}, {"name": "f", "shape": [None, 4], "dtype": "float32"}],
        "nodes": [{"op": "identity", "inputs": ["x"], "outputs": ["f"], "params": {}, "attrs": {}}],
    }
    p = write(tmp_path / "id.cmz", g, {})
    with Session(p) as s:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        a, b = s.run(x)
        assert not np.shares_memory(a, x) and not np.shares_memory(b, x) and not np.shares_memory(a, b)
        a[:] = -1
        np.testing.assert_array_equal(x, np.arange(8).reshape(2, 4))


def test_bad_file_fails_at_load_not_at_run(small):
    blob = bytearray(small.read_bytes())
    with cmodel.open(small) as f:
        at = f.data_start + f.record("conv.weight").segments["data"].offset + 5
    blob[at] ^= 0x40
    small.write_bytes(bytes(blob))
    with pytest.raises(cmodel.CmzError) as e:
        Session(small)
    assert e.value.check == "segment_crc"


def test_closed_session(small):
    s = Session(small)
    s.close()
    s.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        s.run(np.zeros((1, 2, 6, 6), np.float32))


def test_runs_from_threads(small):
    with Session(small) as s:
        x = np.random.default_rng(2).standard_normal((4, 2, 6, 6)).astype(np.float32)
        (ref,) = s.run(x)
        out = [None] * 4

        def work(i):
            out[i] = s.run(x)[0]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for y in out:
            np.testing.assert_array_equal(y, ref)


# --- the backend extension contract the cpu backend uses ---------------------------------------


class CompressedLinear(NumpyBackend):
    """What a kernel backend looks like: compressed tensors, its own linear."""

    name = "test-compressed"
    keep_compressed = True
    seen: list = []

    def prepare_linear(self, node, params, info):
        w = self.keep(params["weight"])
        b = self._param(params, "bias")
        self.seen.append((type(w).__name__, info.inputs, info.output))
        dense = w.dense() if isinstance(w, Compressed) else w
        return lambda xs: [xs[0] @ dense.T + (0 if b is None else b)]


def test_backend_subclass_overrides_only_what_it_speeds_up(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "test-compressed", CompressedLinear)
    t = base_tensors()
    t["fc.weight"] = np.random.default_rng(0).standard_normal((5, 36)).astype(np.float32)
    p = tmp_path / "c.cmz"
    cmodel.save_file(t, p, rules={"fc.weight": {"compress": True}, "conv.*": {"skip": True}}, graph=base_graph())
    x = np.random.default_rng(3).standard_normal((2, 2, 6, 6)).astype(np.float32)
    CompressedLinear.seen = []
    with Session(p, backend="test-compressed") as s, Session(p) as ref:
        assert s.backend == "test-compressed"
        np.testing.assert_allclose(s.run(x)[0], ref.run(x)[0], rtol=1e-5, atol=1e-6)
        with cmodel.open(p) as f:
            c = f.read_compressed("fc.weight")
        held = sum(a.nbytes for a in (c.codebook, c.scales, c.pointers, c.entries) if a is not None)
        dense_rest = sum(t[k].nbytes for k in ("conv.weight", "conv.bias", "fc.bias"))
        assert s.weight_bytes() == held + dense_rest < ref.weight_bytes() + 1000
    assert CompressedLinear.seen == [("Compressed", ((None, 36),), (None, 5))]


def test_graph_from_session_matches_file(small):
    with Session(small) as s, cmodel.open(small) as f:
        assert s.graph == graph_from_header(f.graph)
        assert s.metadata == {}
