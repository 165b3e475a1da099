"""``cmz compress --model`` and ``cmz run`` (cmodel/cli.py): a model's graph
and weights into one file, then run from the command line; one-line errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

import cmodel
import models
from cmodel.runtime import Session
from test_cli import CMZ, one_error_line, run


@pytest.fixture
def lenet(tmp_path, capsys):
    p = tmp_path / "lenet.cmz"
    rc, out, err = run(capsys, "compress", "--model", "models:lenet5", "--input-shape", "1,1,28,28", "-o", str(p))
    assert rc == 0, err
    assert "ip1.weight" in out and "whole file" in out
    return p


def test_compress_model_writes_graph_and_weights(lenet):
    with cmodel.open(lenet) as f:
        f.verify()
        assert f.graph["inputs"] == [{"name": "x", "shape": [None, 1, 28, 28], "dtype": "float32"}]
        assert f.tensor_names() == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "ip1.weight", "ip1.bias", "ip2.weight", "ip2.bias"]
        assert f.record("ip1.weight").encoding == "codebook"


def test_compress_model_with_weights(tmp_path, capsys):
    torch.manual_seed(3)
    m = models.perturb(models.resnet18_small())
    pt = tmp_path / "w.pt"
    torch.save(m.state_dict(), pt)
    out = tmp_path / "r.cmz"
    rc, _, err = run(capsys, "compress", "--model", "models:resnet18_small", "--weights", str(pt), "--input-shape", "1,3,32,32", "-o", str(out), "--rule", "*:skip=true", "--json")
    assert rc == 0, err
    x = torch.randn(2, 3, 32, 32)
    with Session(out) as s, torch.no_grad():
        (y,) = s.run(x.numpy())
        ref = m(x).numpy()
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()  # the loaded weights, not the factory's


def test_weights_that_do_not_fit(tmp_path, capsys):
    pt = tmp_path / "w.pt"
    torch.save(models.lenet_300_100().state_dict(), pt)
    rc, _, err = run(capsys, "compress", "--model", "models:lenet5", "--weights", str(pt), "--input-shape", "1,1,28,28", "-o", str(tmp_path / "x.cmz"))
    assert rc == 1
    line = one_error_line(err)
    assert f"{pt}: expected the state dict of models:lenet5; found Error(s) in loading state_dict" in line and "[check: input]" in line


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("models", "--model: expected 'package.module:factory'; found 'models'"),
        ("no_such_module_xyz:f", "expected an importable module 'no_such_module_xyz'"),
        ("models:nothing", "expected 'models' to define 'nothing'; found no 'nothing'"),
        ("models:VGG_CFGS", "expected a callable factory; found dict"),
        ("models:perturb", "expected the factory to build a model; found TypeError"),
        ("models:_make_divisible", "expected the factory to build a model; found TypeError"),
    ],
)
def test_bad_model_spec(tmp_path, capsys, spec, fragment):
    rc, _, err = run(capsys, "compress", "--model", spec, "--input-shape", "1,3", "-o", str(tmp_path / "x.cmz"))
    assert rc == 1
    assert fragment in one_error_line(err)


def test_unsupported_model_names_module(tmp_path, capsys):
    mp = tmp_path / "lstm_models.py"
    mp.write_text("import torch.nn as nn\n\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.features = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))\n    def forward(self, x):\n        return self.features(x)\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        rc, _, err = run(capsys, "compress", "--model", "lstm_models:M", "--input-shape", "1,4", "-o", str(tmp_path / "x.cmz"))
    finally:
        sys.path.remove(str(tmp_path))
    assert rc == 1
    assert "features.1 (nn.LayerNorm)" in one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["in.npz", "--model", "models:lenet5", "--input-shape", "1,1,28,28"],  # both
        [],  # neither
        ["--model", "models:lenet5"],  # no --input-shape
        ["in.npz", "--weights", "w.pt"],  # --weights without --model
    ],
)
def test_compress_usage_errors(tmp_path, capsys, argv):
    rc, _, err = run(capsys, "compress", *argv, "-o", str(tmp_path / "x.cmz"))
    assert rc == 2
    assert "expected either INPUT" in one_error_line(err)


def test_bad_input_shape(tmp_path, capsys):
    rc, _, err = run(capsys, "compress", "--model", "models:lenet5", "--input-shape", "1,x,28", "-o", str(tmp_path / "x.cmz"))
    assert rc == 1 and "--input-shape: expected comma-separated sizes" in one_error_line(err)


def test_run_prints_shapes_and_top5_and_writes(lenet, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28))  # float64: cast to float32
    np.save(tmp_path / "x.npy", x)
    rc, out, err = run(capsys, "run", str(lenet), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--backend", "numpy")
    assert rc == 0, err
    assert "ran on backend 'numpy', batch 3" in out
    assert "output 'ip2': shape [3, 10] float32" in out
    assert len([l for l in out.splitlines() if "top-5 classes" in l]) == 3
    y = np.load(tmp_path / "y.npy")
    with Session(lenet, backend="numpy") as s:
        np.testing.assert_array_equal(y, s.run(x.astype(np.float32))[0])
    top = np.argsort(-y[0], kind="stable")[:5]
    assert f"sample 0: top-5 classes {top[0]} ({y[0, top[0]]:.4g})" in out


def test_run_npz_output_by_name(lenet, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    rc, _, err = run(capsys, "run", str(lenet), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz"))
    assert rc == 0, err
    assert list(np.load(tmp_path / "y.npz")) == ["ip2"]


@pytest.mark.parametrize(
    "what, expected_rc, fragment",
    [
        ("shape", 1, "cmz: input 'x': expected shape [N, 1, 28, 28] (any N ≥ 1); found [2, 28, 28] [check: input]"),
        ("gpu", 2, "argument --backend: invalid choice: 'gpu'"),
        ("weights-only", 1, "expected a graph in the header to run (spec §10); found none"),
        ("npz-input", 1, "expected a .npy array; found NpzFile"),
        ("missing", 1, "No such file or directory"),
    ],
)
def test_run_errors_one_line(lenet, tmp_path, capsys, what, expected_rc, fragment):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 28, 28), np.float32))
    target, extra = str(lenet), []
    if what == "shape":
        np.save(x, np.zeros((2, 28, 28), np.float32))
    elif what == "gpu":
        extra = ["--backend", what]
    elif what == "weights-only":
        target = str(tmp_path / "w.cmz")
        cmodel.save_file({"w": np.ones((2, 2), np.float32)}, target)
    elif what == "npz-input":
        x = tmp_path / "x.npz"
        np.savez(x, a=np.zeros(3))
    elif what == "missing":
        x = tmp_path / "nope.npy"
    rc, _, err = run(capsys, "run", target, "--input", str(x), *extra)
    assert rc == expected_rc
    assert fragment in one_error_line(err)


def test_info_and_verify_on_a_file_with_a_graph(lenet, capsys):
    assert run(capsys, "verify", str(lenet))[0] == 0
    rc, out, _ = run(capsys, "info", str(lenet))
    assert rc == 0 and "conv1.weight" in out


def test_run_script(lenet, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    r = subprocess.run([str(CMZ), "run", str(lenet), "--input", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "output 'ip2': shape [2, 10] float32" in r.stdout
    r = subprocess.run([str(CMZ), "run", str(lenet), "--input", str(tmp_path / "x.npy"), "--backend", "numpy"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "output 'ip2': shape [2, 10] float32" in r.stdout


@pytest.mark.parametrize("argv", [("bench", "kernels"), ("bench", "model"), ("run",)])
def test_cuda_backend_without_a_gpu(lenet, tmp_path, capsys, argv):
    """No GPU here: ``--backend cuda`` fails at once with the backend's error."""
    from numba import cuda

    if cuda.is_available():  # pragma: no cover - a machine with a GPU
        pytest.skip("a CUDA device is present")
    extra = ["--input", str(tmp_path / "x.npy")] if argv == ("run",) else []
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    rc, out, err = run(capsys, *argv, str(lenet), "--backend", "cuda", *extra)
    assert rc == 1 and "backend 'cuda': expected a CUDA device" in one_error_line(err) and "[check: input]" in err
