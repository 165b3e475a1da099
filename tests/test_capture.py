"""runtime/capture.py: torch.fx capture of nn.Modules into graphs (spec §10.6),
BatchNorm folding, naming, and the errors for what the graph cannot express."""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cmodel
import models
from cmodel.runtime import Session, capture, graph_to_header
from graph_torch import assert_close, run_torch
from test_spec import SPEC

SKIP = {"*": {"skip": True}}  # store everything raw: the file's weights are exactly the captured ones


def ops_of(graph):
    out = {}
    for n in graph.nodes:
        out[n.op] = out.get(n.op, 0) + 1
    return out


def check_exact(tmp_path, model, shape, batches=(1, 3), rel=1e-4):
    """save_model with raw weights, then the numpy Session against the module itself."""
    torch.manual_seed(1)
    p = tmp_path / "m.cmz"
    cmodel.save_model(model, torch.randn(1, *shape), p, rules=SKIP)
    with Session(p) as s:
        for b in batches:
            x = torch.randn(b, *shape)
            with torch.no_grad():
                ref = model(x).numpy()
            (y,) = s.run(x.numpy())
            assert_close(y, ref, rel)
    return p


# --- the reference architectures ------------------------------------------------------------


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_full_size_capture(name):
    """Every architecture at full size (224×224 for the ImageNet ones): the
    graph is valid, shapes are right, and the tensors are the state dict's."""
    full, shape, _, _ = models.ARCHITECTURES[name]
    with torch.device("meta"):  # skip the random init of up to 138M weights: zeros do for shapes
        model = full()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    graph, tensors = capture(model, torch.zeros(1, *shape))
    classes = 10 if name.startswith("lenet") else 1000
    assert [(v.name, v.shape) for v in graph.inputs] == [("x", (None,) + shape)]
    assert graph.outputs[0].shape == (None, classes)
    expected = {
        "lenet_300_100": {"reshape": 1, "linear": 3, "relu": 2},
        "lenet5": {"conv2d": 2, "max_pool2d": 2, "reshape": 1, "linear": 2, "relu": 1},
        "vgg11": {"conv2d": 8, "relu": 10, "max_pool2d": 5, "adaptive_avg_pool2d": 1, "flatten": 1, "linear": 3},
        "vgg16": {"conv2d": 13, "relu": 15, "max_pool2d": 5, "adaptive_avg_pool2d": 1, "flatten": 1, "linear": 3},
        "resnet18": {"conv2d": 20, "relu": 17, "max_pool2d": 1, "add": 8, "adaptive_avg_pool2d": 1, "flatten": 1, "linear": 1},
        "mobilenet_v2": {"conv2d": 52, "relu6": 35, "add": 10, "adaptive_avg_pool2d": 1, "flatten": 1, "linear": 1},
    }[name]
    assert ops_of(graph) == expected  # BatchNorm folded, Dropout elided
    sd = model.state_dict()
    weights = [k for k in sd if k.endswith("weight") and sd[k].ndim >= 2]
    assert [k for k in tensors if k.endswith("weight")] == weights  # state-dict names and order
    for k in weights:
        if "bn" not in k and not name.startswith("resnet") and not name.startswith("mobilenet"):
            assert tensors[k] is not None and np.shares_memory(tensors[k], sd[k].numpy())  # unchanged: not copied


@pytest.mark.parametrize("name, batch_norm", [("vgg11", False), ("vgg11_bn", True), ("vgg16", False), ("vgg16_bn", True), ("resnet18", None), ("mobilenet_v2", None)])
def test_torchvision_parameter_counts_and_keys(name, batch_norm):
    factory = getattr(models, name.replace("_bn", ""))
    with torch.device("meta"):  # no memory, no init cost
        model = factory(batch_norm=batch_norm) if batch_norm is not None else factory()
    assert sum(p.numel() for p in model.parameters()) == models.TORCHVISION_PARAMETERS[name]
    keys = list(model.state_dict())
    known = {
        "vgg11": ["features.0.weight", "features.3.weight", "features.18.weight", "classifier.0.weight", "classifier.3.weight", "classifier.6.bias"],
        "vgg11_bn": ["features.0.weight", "features.1.running_var", "features.4.weight", "features.25.weight", "classifier.6.weight"],
        "vgg16": ["features.0.weight", "features.28.weight", "classifier.6.weight"],
        "vgg16_bn": ["features.0.weight", "features.1.num_batches_tracked", "features.41.weight", "classifier.6.weight"],
        "resnet18": ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "fc.weight", "fc.bias"],
        "mobilenet_v2": ["features.0.0.weight", "features.0.1.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight", "features.2.conv.0.0.weight", "features.2.conv.3.running_mean", "features.18.0.weight", "classifier.1.weight"],
    }[name]
    assert set(known) <= set(keys)


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_small_architectures_fold_and_name(name):
    _, _, small, shape = models.ARCHITECTURES[name]
    torch.manual_seed(0)
    model = models.perturb(small())
    graph, tensors = capture(model, torch.zeros(2, *shape))
    assert "batch_norm" not in ops_of(graph)
    sd = model.state_dict()
    for k, v in tensors.items():
        assert k in sd or (k.endswith(".bias") and k[: -len("bias")] + "weight" in sd), k
        assert v.dtype == np.float32
    # order: the state dict's, a folded bias right after its weight
    order = {k: i for i, k in enumerate(sd)}
    pos = [order.get(k, order.get(k[: -len("bias")] + "weight", -1) + 0.5) for k in tensors]
    assert pos == sorted(pos)
    if name == "resnet18":
        assert {"conv1.bias", "layer1.0.conv1.bias", "layer2.0.downsample.0.bias"} <= set(tensors)
        assert not any("bn" in k or "downsample.1" in k for k in tensors)
    if name == "mobilenet_v2":
        assert {"features.0.0.bias", "features.1.conv.1.bias", "classifier.1.weight"} <= set(tensors)


def test_spec_example_is_what_capture_writes():
    block = re.search(r"### 10\.7 Example.*?```json\n(.*?)```", SPEC, re.S).group(1)
    graph, _ = capture(models.lenet5(), torch.zeros(1, 1, 28, 28))
    assert graph_to_header(graph) == json.loads(block)


# --- BatchNorm folding --------------------------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self, bias=False, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(8, affine=affine, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("bias, affine", [(False, True), (True, True), (True, False)])
def test_fold_conv_bn(tmp_path, bias, affine):
    torch.manual_seed(0)
    m = models.perturb(ConvBN(bias, affine).eval())
    if not affine:
        with torch.no_grad():
            m.bn.running_var.uniform_(0.5, 2.0)
            m.bn.running_mean.normal_()
    graph, tensors = capture(m, torch.zeros(1, 3, 8, 8))
    assert [n.op for n in graph.nodes] == ["conv2d", "relu"]
    assert graph.nodes[0].params == {"bias": "conv.bias", "weight": "conv.weight"}
    assert list(tensors) == ["conv.weight", "conv.bias"]
    bn = m.bn
    torch.set_grad_enabled(False)
    alpha = (bn.weight.double() if affine else 1) / torch.sqrt(bn.running_var.double() + bn.eps)
    w = m.conv.weight.double() * alpha[:, None, None, None]
    b = ((m.conv.bias.double() if bias else 0) - bn.running_mean.double()) * alpha + (bn.bias.double() if affine else 0)
    np.testing.assert_array_equal(tensors["conv.weight"], w.float().numpy())
    np.testing.assert_array_equal(tensors["conv.bias"], b.float().numpy())
    torch.set_grad_enabled(True)
    check_exact(tmp_path, m, (3, 8, 8))


class Unfoldable(nn.Module):
    """Four BatchNorms that must stay: on the graph input, after an add, after
    a conv whose output is also used elsewhere, and after a shared conv."""

    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)
        self.shared = nn.Conv2d(3, 3, 1)
        self.bn3 = nn.BatchNorm2d(3)

    def forward(self, x):
        x = self.bn0(x)
        c = self.conv(x)
        y = self.bn1(c) + c
        y = self.bn2(y)
        return self.bn3(self.shared(y)) + self.shared(x)


def test_batch_norm_kept_when_not_foldable(tmp_path):
    m = models.perturb(Unfoldable().eval())
    graph, tensors = capture(m, torch.zeros(1, 3, 6, 6))
    assert ops_of(graph)["batch_norm"] == 4
    assert "bn0.running_mean" in tensors and "shared.bias" in tensors and "conv.bias" in tensors
    check_exact(tmp_path, m, (3, 6, 6))


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(24, 5, bias=False)
        self.bn = nn.BatchNorm1d(5)
        self.seq_fc = nn.Linear(6, 6)
        self.seq_bn = nn.BatchNorm1d(4)  # over dim 1 of [N, 4, 6]: not the linear's features

    def forward(self, x):
        a = self.bn(self.fc(x.flatten(1)))
        b = self.seq_bn(self.seq_fc(x))
        return torch.cat([a, b.flatten(1)], 1)


def test_fold_linear_bn_only_for_2d_outputs(tmp_path):
    m = models.perturb(LinearBN().eval())
    graph, tensors = capture(m, torch.zeros(1, 4, 6))
    assert ops_of(graph)["batch_norm"] == 1
    assert "fc.bias" in tensors and "bn.running_mean" not in tensors and "seq_bn.running_mean" in tensors
    check_exact(tmp_path, m, (4, 6))


def test_batch_norm_without_running_stats_rejected():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(cmodel.CmzError) as e:
        capture(m, torch.zeros(1, 3, 8, 8))
    assert e.value.check == "input" and "1 (nn.BatchNorm2d)" in str(e.value) and "running statistics" in str(e.value)


# --- functions, methods, every op ----------------------------------------------------------------


class Zoo(nn.Module):
    """Every mapping of spec §10.6 at least once: modules, F./torch. functions,
    tensor methods, size()-derived reshapes, scalars on either side."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(3, 6, 4, padding="same")  # even kernel: asymmetric padding
        self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, dilation=1)
        self.w = nn.Parameter(torch.randn(8, 6, 1, 1) * 0.3)
        self.b = nn.Parameter(torch.randn(8) * 0.1)
        self.act = nn.Sequential(nn.Hardswish(), nn.SiLU(), nn.Identity(), nn.Dropout(0.3))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.mp = nn.MaxPool2d(2, stride=1, dilation=2, ceil_mode=True)
        self.ad = nn.AdaptiveAvgPool2d((3, None))
        self.fc = nn.Linear(8 * 3 * 2, 12)
        self.fc_w = nn.Parameter(torch.randn(4, 12) * 0.2)
        self.lsm = nn.LogSoftmax(dim=1)
        self.sig = nn.Sigmoid()
        self.tanh = nn.Tanh()
        self.gelu = nn.GELU(approximate="tanh")
        self.leaky = nn.LeakyReLU(0.2)
        self.hs = nn.Hardsigmoid()
        self.relu6 = nn.ReLU6()
        self.flat = nn.Flatten()

    def forward(self, x):
        x = self.leaky(self.same(x))
        x = self.relu6(self.dw(x)) * 0.5
        x = F.conv2d(x, self.w, self.b)
        x = self.act(x) + 1.0
        x = 2 * self.pool(x)
        y = self.mp(x).contiguous()
        x = torch.relu(x) + F.relu(x * -1.0)
        x = self.ad(F.avg_pool2d(x, 2, ceil_mode=True))
        x = x.view(x.size(0), -1)
        x = F.gelu(self.gelu(self.fc(x)))
        z = torch.cat([F.linear(x, self.fc_w), self.sig(x).reshape(x.size(0), 3, 4).flatten(1)], dim=1)
        z = self.tanh(z).mul(torch.tanh(z)).add(self.hs(z))
        g = torch.flatten(y.mean((2, 3)), 1) + self.flat(F.adaptive_avg_pool2d(y, 1))
        s = F.softmax(z, dim=-1) + F.log_softmax(z, 1) + self.lsm(z) + F.hardswish(z) + F.silu(z) + F.hardsigmoid(z)
        return torch.cat([s, F.leaky_relu(g, 0.1)], 1), F.relu6(y.flatten(1))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_zoo_every_mapping(tmp_path):
    torch.manual_seed(0)
    m = Zoo().eval()
    graph, tensors = capture(m, torch.zeros(1, 3, 13, 11))
    ops = ops_of(graph)
    for op in ("conv2d", "leaky_relu", "relu6", "mul", "add", "hardswish", "silu", "avg_pool2d", "max_pool2d", "relu", "adaptive_avg_pool2d", "reshape", "linear", "gelu", "cat", "sigmoid", "tanh", "hardsigmoid", "softmax", "log_softmax", "flatten"):
        assert op in ops, op
    assert graph.nodes[0].attrs["padding"] == [1, 1, 2, 2]  # 'same' with k=4: the extra pixel bottom/right
    assert {"w", "b", "fc_w"} <= set(tensors)
    assert "dropout" not in ops and "identity" not in ops
    with torch.no_grad():
        assert [v.shape[1:] for v in graph.outputs] == [tuple(r.shape[1:]) for r in m(torch.zeros(2, 3, 13, 11))]
    p = tmp_path / "zoo.cmz"
    cmodel.save_model(m, torch.zeros(1, 3, 13, 11), p, rules=SKIP)
    with Session(p) as s:
        for b in (1, 3):
            x = torch.randn(b, 3, 13, 11)
            with torch.no_grad():
                refs = m(x)
            ys = s.run(x.numpy())
            for y, r in zip(ys, refs):
                assert_close(y, r.numpy())
            for y, r in zip(ys, run_torch(s.graph, cmodel.load_file(p), [x.numpy()])):
                assert_close(y, r)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, a, b):
        h = self.fc(a)
        return h * b, self.fc(b)  # fc shared: one tensor, two nodes


def test_two_inputs_two_outputs_and_tied_weights(tmp_path):
    m = TwoInputs().eval()
    graph, tensors = capture(m, (torch.zeros(1, 4), np.zeros((1, 4), np.float32)))
    assert [v.name for v in graph.inputs] == ["a", "b"]
    assert list(tensors) == ["fc.weight", "fc.bias"]
    assert [n.params for n in graph.nodes if n.op == "linear"] == [{"bias": "fc.bias", "weight": "fc.weight"}] * 2
    p = tmp_path / "two.cmz"
    cmodel.save_model(m, (torch.zeros(1, 4), torch.zeros(1, 4)), p, rules=SKIP)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    with torch.no_grad():
        r1, r2 = m(a, b)
    with Session(p) as s:
        y1, y2 = s.run({"a": a.numpy(), "b": b.numpy()})
    assert_close(y1, r1.numpy())
    assert_close(y2, r2.numpy())


class Repeat(nn.Module):
    def forward(self, x):
        y = torch.relu(x)
        return y, y, x


def test_repeated_output_and_input_as_output(tmp_path):
    graph, tensors = capture(Repeat(), torch.zeros(1, 3))
    assert [v.name for v in graph.outputs] == ["relu", "relu_out1", "x"]
    assert tensors == {}


def test_training_flag_restored_and_eval_semantics():
    torch.manual_seed(0)
    m = models.perturb(ConvBN())
    m.train()
    graph, tensors = capture(m, torch.randn(4, 3, 8, 8))
    assert m.training and m.bn.training
    assert m.bn.num_batches_tracked.item() == 0  # no training step happened
    assert [n.op for n in graph.nodes] == ["conv2d", "relu"]


# --- what the graph cannot express ---------------------------------------------------------


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Identity(), nn.LSTM(8, 8, batch_first=True))

    def forward(self, x):
        return self.features(x)[0]


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x)


class Block(nn.Module):
    def forward(self, x):
        return torch.chunk(x, 2, 1)[0]


class WithChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = nn.Sequential(Block())

    def forward(self, x):
        return self.blk(x)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.pos = nn.Parameter(torch.zeros(1, 8))
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.fn(self, x)


UNSUPPORTED = {
    "lstm": (WithLSTM(), (2, 8), "features.3 (nn.LSTM)"),
    "layer-norm": (WithLayerNorm(), (8,), "norm (nn.LayerNorm): expected a module with an op in spec §10.4; found an unsupported module"),
    "chunk": (WithChunk(), (8,), "torch.chunk in blk.0 (test_capture.Block)"),
    "sub": (Fn(lambda s, x: x - 1), (8,), "operator.sub (node 'sub'): expected a function with an op in spec §10.4"),
    "permute": (Fn(lambda s, x: x.permute(0, 2, 1)), (2, 8), "Tensor.permute (node 'permute'): expected a method"),
    "param-as-activation": (Fn(lambda s, x: x + s.pos), (8,), "operator.add (node 'add'): expected operands computed from the graph inputs or Python numbers; found the module's tensor 'pos'"),
    "constant-tensor": (Fn(lambda s, x: x + torch.ones(1, 8)), (8,), "found the module's tensor '_tensor_constant0'"),
    "flatten-batch": (Fn(lambda s, x: torch.flatten(x)), (8,), "expected flatten to keep the batch dimension"),
    "view-batch": (Fn(lambda s, x: x.view(-1)), (8,), "expected a reshape that keeps the batch dimension"),
    "softmax-batch": (Fn(lambda s, x: F.softmax(x, 0)), (8,), "F.softmax (node 'softmax')"),
    "inplace-read-later": (Fn(lambda s, x: torch.relu_(s.lin(x)) + s.lin(x) if False else _inplace(s, x)), (8,), "an in-place op overwrites value 'lin'"),
    "alpha": (Fn(lambda s, x: torch.add(x, x, alpha=2)), (8,), "expected alpha = 1"),
    "reflect": (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")), (3, 6, 6), "0 (nn.Conv2d): expected padding_mode 'zeros'"),
    "return-indices": (Fn(lambda s, x: F.max_pool2d(x, 2, return_indices=True)[0]), (3, 6, 6), "expected an op with one tensor result"),
    "dropout-training": (Fn(lambda s, x: F.dropout(x, 0.5)), (8,), "expected training=False"),
    "divisor-override": (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), (3, 6, 6), "0 (nn.AvgPool2d): expected divisor_override None"),
    "data-dependent": (Fn(lambda s, x: x * 2 if x.sum() > 0 else x), (8,), "capture: expected a module torch.fx can trace"),
    "reduction": (Fn(lambda s, x: x * x.max()), (8,), "Tensor.max (node 'max_1'): expected a method with an op in spec §10.4"),
    "dict-output": (Fn(lambda s, x: {"y": x}), (8,), "expected the module to return a tensor or a tuple/list of tensors"),
}


def _inplace(s, x):
    h = s.lin(x)
    y = F.relu(h, inplace=True)
    return y + h  # h is overwritten in PyTorch: a functional graph would differ


@pytest.mark.parametrize("case", list(UNSUPPORTED), ids=list(UNSUPPORTED))
def test_unsupported_rejected_naming_it(case, tmp_path):
    module, shape, fragment = UNSUPPORTED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(cmodel.CmzError) as e:
            cmodel.save_model(module.eval(), torch.zeros(2, *shape), tmp_path / "u.cmz")
    assert e.value.check == "input"
    assert fragment in str(e.value), str(e.value)
    assert not (tmp_path / "u.cmz").exists()


def test_inplace_on_last_use_is_fine(tmp_path):
    m = Fn(lambda s, x: F.relu(s.lin(x), inplace=True) * 3).eval()
    check_exact(tmp_path, m, (8,))


@pytest.mark.parametrize("bad, fragment", [(torch.zeros(1, 3, dtype=torch.float64), "float64"), (torch.zeros(()), "shape []"), ("x", "str")])
def test_bad_example_input(bad, fragment):
    with pytest.raises(cmodel.CmzError) as e:
        capture(nn.ReLU(), bad)
    assert e.value.check == "input" and fragment in str(e.value)


def test_not_a_module():
    with pytest.raises(cmodel.CmzError) as e:
        capture(lambda x: x, torch.zeros(1, 3))
    assert e.value.check == "input" and "torch.nn.Module" in str(e.value)


def test_save_model_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cmodel\n"
        "from cmodel.runtime import Session\n"
        "try:\n"
        "    cmodel.save_model(object(), None, 'x.cmz')\n"
        "except cmodel.CmzError as e:\n"
        "    assert e.check == 'input' and 'torch' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
