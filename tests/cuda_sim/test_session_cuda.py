"""``Session(path, backend="cuda")`` under the CUDA simulator: whole-model
parity with the numpy backend for LeNet-5 and a small ResNet-18, with the
default compression (8-bit row-scaled codebooks, Huffman) and with sparse
weights (row and column order); ``run`` on a device-array input; device
outputs; weights held on the device in packed form.

The simulator runs every CUDA thread as a Python thread, so the models are
narrow (LeNet-5's layer structure with 4/8/32 channels on a 16x16 image;
ResNet-18 of width 2 on 3x16x16; the sparse ResNet in row order only,
column order on LeNet-5) and launches use 32 threads.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import cuda
from torch import nn

import cmodel
import models
from cmodel.kernels.cuda import conv, ops
from cmodel.runtime import Session
from graph_torch import assert_close

# The default codec (8-bit row-scaled codebooks, Huffman), forced onto these
# tensors, which are below the encoder's size threshold.
DEFAULT = {"*": {"compress": True}}
SPARSE = {
    "row": {"*": {"sparsity": 0.7, "bits": 5, "compress": True}},  # Huffman, decoded once on the host
    "col": {"*": {"sparsity": 0.8, "bits": 4, "index_bits": 4, "order": "col", "coding": "packed", "compress": True}},
}


class NarrowLeNet5(nn.Module):
    """Caffe's LeNet-5 layer structure (conv 5x5, max pool 2, conv 5x5, max
    pool 2, fc + ReLU, fc), narrowed for the simulator."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)
        self.conv2 = nn.Conv2d(4, 8, 5)
        self.ip1 = nn.Linear(8, 32)
        self.ip2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), kernel_size=2, stride=2)
        x = x.view(-1, 8)
        x = F.relu(self.ip1(x))
        return self.ip2(x)


MODELS = {
    "lenet5": (lambda: NarrowLeNet5().eval(), (1, 16, 16)),
    "resnet18": (lambda: models.resnet18(10, width=2), (3, 16, 16)),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(conv, "CONV_THREADS", 32)
    monkeypatch.setattr(ops, "OPS_THREADS", 32)


def compressed(tmp_path, name, rules):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    path = tmp_path / f"{name}.cmz"
    rep = cmodel.save_model(models.perturb(make()), torch.randn(1, *shape), path, rules=rules)
    return path, shape, rep


def check_parity(path, shape, batches):
    rng = np.random.default_rng(1)
    with Session(path, backend="numpy") as ref, Session(path, backend="cuda") as s:
        assert s.backend == "cuda"
        for b in batches:
            x = rng.standard_normal((b,) + shape).astype(np.float32)
            (want,) = ref.run(x)
            (got,) = s.run(x)
            assert isinstance(got, np.ndarray)
            assert_close(got, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_parity_default_compression(tmp_path, name):
    path, shape, rep = compressed(tmp_path, name, DEFAULT)
    assert any(t.encoding == "codebook" for t in rep.tensors)
    check_parity(path, shape, (1, 2) if name == "lenet5" else (2,))


@pytest.mark.parametrize("name, order", [("lenet5", "row"), ("lenet5", "col"), ("resnet18", "row")])
def test_parity_sparse(tmp_path, name, order):
    path, shape, rep = compressed(tmp_path, name, SPARSE[order])
    assert any(t.encoding == "sparse" for t in rep.tensors)
    check_parity(path, shape, (2,) if name == "lenet5" else (1,))


def test_device_input_and_device_outputs(tmp_path):
    path, shape, _ = compressed(tmp_path, "lenet5", SPARSE["row"])
    x = np.random.default_rng(2).standard_normal((1,) + shape).astype(np.float32)
    with Session(path, backend="numpy") as ref:
        (want,) = ref.run(x)
    d = cuda.to_device(x)
    with Session(path, backend="cuda") as s:
        (got,) = s.run(d)  # a device array in place: no host copy
        assert_close(got, want)
        (got,) = s.run({s.inputs[0].name: d})
        assert_close(got, want)
    with Session(path, backend="cuda", device_outputs=True) as s:
        (y,) = s.run(d)
        assert not isinstance(y, np.ndarray) and getattr(y, "__cuda_ndarray__", False)
        assert_close(y.copy_to_host(), want)
    np.testing.assert_array_equal(d.copy_to_host(), x)  # inputs are never written


def test_weights_are_held_packed_on_the_device(tmp_path):
    path, _, _ = compressed(tmp_path, "lenet5", SPARSE["col"])
    with Session(path, backend="cuda") as s, Session(path, backend="numpy") as ref:
        held = s.weight_bytes()
        assert 0 < held < ref.weight_bytes()  # packed entries, not dense float32
        assert all(not isinstance(d, np.ndarray) for d in s._impl._device)


def test_bad_inputs(tmp_path):
    path, shape, _ = compressed(tmp_path, "lenet5", DEFAULT)
    with Session(path, backend="cuda") as s:
        with pytest.raises(cmodel.CmzError, match="expected a numpy array or a CUDA array"):
            s.run([[1.0]])
        with pytest.raises(cmodel.CmzError, match="expected dtype float32; found float64"):
            s.run(np.zeros((1,) + shape))
        with pytest.raises(cmodel.CmzError, match=r"expected shape \[N, 1, 16, 16\]"):
            s.run(cuda.to_device(np.zeros((1, 1, 8, 8), np.float32)))


def test_bench_kernels_runs_on_the_backend(tmp_path, capsys):
    """``cmz bench kernels FILE --backend cuda`` end to end (simulator: the
    times mean nothing; the flow, the synchronised contenders and the report
    are what is checked).  ``bench model`` adds the cpu session, whose Numba
    compilation would dominate this test."""
    from cmodel.cli import main

    path, _, _ = compressed(tmp_path, "lenet5", DEFAULT)
    assert main(["bench", "kernels", str(path), "--backend", "cuda", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "backend cuda on the Numba CUDA simulator" in out and "CUDA JIT compile" in out
    assert out.count("conv2d ") == 2 and out.count("linear ") == 2 and "whole model" not in out
