"""Capture a ``torch.nn.Module`` as a graph (spec §10) with torch.fx.

``capture`` traces the module symbolically, runs the trace once on the
example input to learn every value's shape (and the value of every
shape-derived constant such as ``x.size(0)``), and maps each fx node to an op
of spec §10.4.  BatchNorm that directly follows a conv2d or linear whose
output has no other user is folded into it (eval-mode statistics); other
BatchNorms stay ``batch_norm`` nodes.  Dropout and identity-like calls are
elided.  Anything without an exact equivalent raises ``CmzError`` (check
``input``) naming the op and where it is, e.g. ``features.3 (nn.LSTM)``.

torch is imported only when ``capture`` is called.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from ..errors import CmzError
from .graph import Graph, Node, ValueInfo, validate

# --- helpers ---------------------------------------------------------------------


def _torch():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError:
        raise CmzError("input", "capture: expected the optional package 'torch' to be installed; found it missing (pip install 'cmodel-cmz[torch]')") from None
    return torch


@dataclass(frozen=True)
class _V:
    """A tensor value of the graph being built."""

    name: str
    shape: tuple


@dataclass(frozen=True)
class _Attr:
    """A tensor reached by ``get_attr`` (a parameter or buffer used directly)."""

    target: str


@dataclass
class _Pending:
    op: str
    inputs: list[str]
    output: str
    params: dict[str, str]
    attrs: dict
    where: str
    module: str | None = None


def _pair(v, what: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) == 1:
        return [int(v[0])] * 2
    if len(v) != 2:
        raise CmzError("input", f"{what}: expected an int or a pair; found {v!r}")
    return [int(v[0]), int(v[1])]


def _fn_name(fn) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or repr(fn)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch") or mod == "" or "VariableFunctions" in repr(fn):
        return f"torch.{name}"
    return f"{mod}.{name}"


def _cls_name(cls) -> str:
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _softmax_dim(dim, rank: int) -> int:
    # PyTorch's implicit dim for softmax(dim=None) (``_get_softmax_dim``).
    if dim is None:
        return 0 if rank in (0, 1, 3) else 1
    return dim


class _Builder:
    """State of one capture: values, pending nodes, tensors."""

    def __init__(self, torch, gm, shapes, dtypes, consts, order):
        self.torch = torch
        self.gm = gm
        self.shapes = shapes  # fx node -> shape tuple (tensor values)
        self.dtypes = dtypes  # fx node -> dtype name (tensor values)
        self.consts = consts  # fx node -> python value (non-tensor results)
        self.order = order  # fx node -> index
        self.env: dict = {}
        self.nodes: list[_Pending] = []
        self.tensors: dict[str, object] = {}  # name -> detached torch tensor, or numpy array once folded
        self._tensor_ids: dict[int, str] = {}  # id of the module's Parameter/buffer -> name
        self._alive: list = []  # keeps those objects alive, so their ids stay unique
        self.inputs: list[ValueInfo] = []

    # -- resolution ----------------------------------------------------------

    def where(self, n) -> str:
        if n.op == "call_module":
            return f"{n.target} ({_cls_name(type(self.gm.get_submodule(n.target)))})"
        name = _fn_name(n.target) if n.op == "call_function" else f"Tensor.{n.target}" if n.op == "call_method" else n.op
        stack = n.meta.get("nn_module_stack")
        if stack:
            path, cls = list(stack.values())[-1]
            return f"{name} in {path} ({_cls_name(cls)})"
        return f"{name} (node {n.name!r})"

    def resolve(self, a):
        fx = self.torch.fx
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.resolve(x) for x in a)
        if isinstance(a, dict):
            return {k: self.resolve(v) for k, v in a.items()}
        return a

    def tensor(self, name: str, t) -> str:
        """Register the module's parameter or buffer ``t`` under its
        state-dict name; one already registered (a module called twice,
        tied weights) keeps its first name."""
        if id(t) in self._tensor_ids:
            return self._tensor_ids[id(t)]
        self._tensor_ids[id(t)] = name
        self._alive.append(t)
        self.tensors[name] = t.detach()
        return name

    def emit(self, n, op, inputs, attrs=None, params=None, module=None, name=None) -> _V:
        for x in inputs:
            self.value(n, x)
        name = name or n.name
        shape = self.shapes[n] if name == n.name else None
        self.nodes.append(_Pending(op, [x.name for x in inputs], name, dict(params or {}), dict(attrs or {}), self.where(n), module))
        return _V(name, shape)

    def value(self, n, a, what="input") -> _V:
        if isinstance(a, _Attr):
            raise CmzError("input", f"{self.where(n)}: expected a tensor computed from the graph inputs as {what}; found the module's tensor {a.target!r} (a constant used as an activation: unsupported)")
        if not isinstance(a, _V):
            raise CmzError("input", f"{self.where(n)}: expected a tensor computed from the graph inputs as {what}; found {type(a).__name__} {a!r}"[:300])
        return a

    def check_inplace(self, n, src) -> None:
        """A functional graph matches an in-place op only when nothing reads
        the overwritten value afterwards."""
        torch = self.torch
        src_node = src if isinstance(src, torch.fx.Node) else None
        if src_node is None:
            return
        later = [u.name for u in src_node.users if u is not n and self.order[u] > self.order[n]]
        if later:
            raise CmzError("input", f"{self.where(n)}: an in-place op overwrites value {src_node.name!r}, which {later[0]!r} reads afterwards; expected no later reader (the graph is functional)")


# --- op mapping ----------------------------------------------------------------


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _conv_padding(padding, kernel, dilation, what):
    """[top, left, bottom, right] from PyTorch's int, pair, 'valid' or
    'same' (the odd extra pixel goes to the bottom/right, as PyTorch pads)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        raise CmzError("input", f"{what}: expected padding 'same', 'valid', an int or a pair; found {padding!r}")
    ph, pw = _pair(padding, what)
    return [ph, pw, ph, pw]


def _conv_attrs(stride, padding, dilation, groups, kernel, what):
    dil = _pair(dilation, what)
    return {"stride": _pair(stride, what), "padding": _conv_padding(padding, kernel, dil, what), "dilation": dil, "groups": int(groups)}


def _pool_attrs(kernel, stride, padding, what):
    k = _pair(kernel, what)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride, what)
    return {"kernel": k, "stride": s, "padding": _pair(padding, what)}


def _binary(b: _Builder, n, op, a, c, alpha=1):
    if alpha != 1:
        raise CmzError("input", f"{b.where(n)}: expected alpha = 1; found {alpha!r}")
    if isinstance(a, _V) and isinstance(c, _V):
        return b.emit(n, op, [a, c])
    if isinstance(c, _V) and not isinstance(a, _V):
        a, c = c, a  # scalar op tensor: both ops commute
    for v in (a, c):
        if isinstance(v, _Attr):
            raise CmzError("input", f"{b.where(n)}: expected operands computed from the graph inputs or Python numbers; found the module's tensor {v.target!r} used as an operand (unsupported)")
    if not isinstance(a, _V):
        raise CmzError("input", f"{b.where(n)}: expected at least one tensor operand computed from the graph inputs; found {a!r} and {c!r}"[:300])
    if type(c) not in (int, float) or not math.isfinite(c):
        raise CmzError("input", f"{b.where(n)}: expected a tensor or a finite Python number as the other operand; found {type(c).__name__} {c!r}"[:300])
    return b.emit(n, op, [a], {"scalar": float(c)})


def _modules(nn) -> set:
    """The leaf modules capture maps (spec §10.6)."""
    return {
        nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.SiLU,
        nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.GELU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
        nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
        nn.Softmax, nn.LogSoftmax,
    }


def _module_node(b: _Builder, n, mod, args, kwargs):
    torch = b.torch
    nn = torch.nn
    path = n.target
    where = b.where(n)
    t = type(mod)
    if t not in _modules(nn):
        raise CmzError("input", f"{where}: expected a module with an op in spec §10.4; found an unsupported module")
    if len(args) != 1 or kwargs:
        raise CmzError("input", f"{where}: expected one tensor argument; found {len(args)} and keywords {sorted(kwargs)}")
    x = b.value(n, args[0])

    def p(role, attr=None):
        return b.tensor(f"{path}.{attr or role}", getattr(mod, attr or role))

    def inplace():
        if getattr(mod, "inplace", False):
            b.check_inplace(n, n.args[0])

    if t is nn.Linear:
        params = {"weight": p("weight")}
        if mod.bias is not None:
            params["bias"] = p("bias")
        return b.emit(n, "linear", [x], params=params, module=path)
    if t is nn.Conv2d:
        if mod.padding_mode != "zeros":
            raise CmzError("input", f"{where}: expected padding_mode 'zeros'; found {mod.padding_mode!r}")
        params = {"weight": p("weight")}
        if mod.bias is not None:
            params["bias"] = p("bias")
        attrs = _conv_attrs(mod.stride, mod.padding, mod.dilation, mod.groups, mod.kernel_size, where)
        return b.emit(n, "conv2d", [x], attrs, params, module=path)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        if mod.running_mean is None or mod.running_var is None:
            raise CmzError("input", f"{where}: expected running statistics (track_running_stats=True); found none (it would normalise by batch statistics)")
        params = {"running_mean": p("running_mean"), "running_var": p("running_var")}
        if mod.weight is not None:
            params["weight"] = p("weight")
        if mod.bias is not None:
            params["bias"] = p("bias")
        return b.emit(n, "batch_norm", [x], {"eps": float(mod.eps)}, params, module=path)
    simple = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid"}
    if t in simple:
        inplace()
        return b.emit(n, simple[t], [x])
    if t is nn.LeakyReLU:
        inplace()
        return b.emit(n, "leaky_relu", [x], {"negative_slope": float(mod.negative_slope)})
    if t is nn.GELU:
        return b.emit(n, "gelu", [x], {"approximate": mod.approximate})
    if t is nn.MaxPool2d:
        if mod.return_indices:
            raise CmzError("input", f"{where}: expected return_indices=False; found True")
        attrs = _pool_attrs(mod.kernel_size, mod.stride, mod.padding, where)
        attrs.update(dilation=_pair(mod.dilation, where), ceil_mode=bool(mod.ceil_mode))
        return b.emit(n, "max_pool2d", [x], attrs)
    if t is nn.AvgPool2d:
        if mod.divisor_override is not None:
            raise CmzError("input", f"{where}: expected divisor_override None; found {mod.divisor_override!r}")
        attrs = _pool_attrs(mod.kernel_size, mod.stride, mod.padding, where)
        attrs.update(ceil_mode=bool(mod.ceil_mode), count_include_pad=bool(mod.count_include_pad))
        return b.emit(n, "avg_pool2d", [x], attrs)
    if t is nn.AdaptiveAvgPool2d:
        return _adaptive(b, n, x)
    if t is nn.Flatten:
        return _flatten(b, n, x, mod.start_dim, mod.end_dim)
    if t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity):
        return x
    dim = _softmax_dim(mod.dim, len(x.shape))  # nn.Softmax, nn.LogSoftmax
    return b.emit(n, "softmax" if t is nn.Softmax else "log_softmax", [x], {"dim": int(dim)})


def _adaptive(b, n, x):
    if len(x.shape) != 4:
        raise CmzError("input", f"{b.where(n)}: expected a batched 4-d input [N, C, H, W]; found shape {list(x.shape)}")
    out = b.shapes[n]
    return b.emit(n, "adaptive_avg_pool2d", [x], {"output_size": [int(out[2]), int(out[3])]})


def _flatten(b, n, x, start, end):
    r = len(x.shape)
    if (start % r if r else 0) == 0:
        raise CmzError("input", f"{b.where(n)}: expected flatten to keep the batch dimension (start_dim ≥ 1); found start_dim {start}")
    return b.emit(n, "flatten", [x], {"start_dim": int(start), "end_dim": int(end)})


def _reshape(b, n, x):
    out = b.shapes[n]
    if not out or out[0] != x.shape[0]:
        raise CmzError("input", f"{b.where(n)}: expected a reshape that keeps the batch dimension; found {list(x.shape)} → {list(out)}")
    return b.emit(n, "reshape", [x], {"shape": [0] + [int(d) for d in out[1:]]})


def _mean(b, n, x, dim, keepdim):
    dims = tuple(sorted(d % len(x.shape) for d in (dim if isinstance(dim, (list, tuple)) else [dim]))) if dim is not None else None
    if len(x.shape) != 4 or dims != (2, 3):
        raise CmzError("input", f"{b.where(n)}: expected a mean over dims (2, 3) of a 4-d input (a global average pool); found dims {dim!r} of shape {list(x.shape)}")
    if keepdim:
        return b.emit(n, "adaptive_avg_pool2d", [x], {"output_size": [1, 1]})
    pooled = b.emit(n, "adaptive_avg_pool2d", [x], {"output_size": [1, 1]}, name=n.name + "_pool")
    return b.emit(n, "flatten", [pooled], {"start_dim": 1, "end_dim": -1})


def _softmax(b, n, x, dim, dtype, op):
    if dtype is not None:
        raise CmzError("input", f"{b.where(n)}: expected dtype None; found {dtype!r}")
    return b.emit(n, op, [x], {"dim": int(_softmax_dim(dim, len(x.shape)))})


def _function_table(torch):
    F = torch.nn.functional

    def unary(op, inplace_pos=None):
        def h(b, n, args, kwargs):
            x = b.value(n, args[0])
            if inplace_pos is not None and _arg(args, kwargs, inplace_pos, "inplace", False):
                b.check_inplace(n, n.args[0])
            return b.emit(n, op, [x])

        return h

    def inplace_unary(op):
        def h(b, n, args, kwargs):
            b.check_inplace(n, n.args[0])
            return b.emit(n, op, [b.value(n, args[0])])

        return h

    def leaky(b, n, args, kwargs):
        if _arg(args, kwargs, 2, "inplace", False):
            b.check_inplace(n, n.args[0])
        return b.emit(n, "leaky_relu", [b.value(n, args[0])], {"negative_slope": float(_arg(args, kwargs, 1, "negative_slope", 0.01))})

    def gelu(b, n, args, kwargs):
        return b.emit(n, "gelu", [b.value(n, args[0])], {"approximate": _arg(args, kwargs, 1, "approximate", "none")})

    def max_pool(b, n, args, kwargs):
        where = b.where(n)
        if _arg(args, kwargs, 6, "return_indices", False):
            raise CmzError("input", f"{where}: expected return_indices=False; found True")
        attrs = _pool_attrs(_arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride"), _arg(args, kwargs, 3, "padding", 0), where)
        attrs.update(dilation=_pair(_arg(args, kwargs, 4, "dilation", 1), where), ceil_mode=bool(_arg(args, kwargs, 5, "ceil_mode", False)))
        return b.emit(n, "max_pool2d", [b.value(n, args[0])], attrs)

    def avg_pool(b, n, args, kwargs):
        where = b.where(n)
        if _arg(args, kwargs, 6, "divisor_override") is not None:
            raise CmzError("input", f"{where}: expected divisor_override None; found {_arg(args, kwargs, 6, 'divisor_override')!r}")
        attrs = _pool_attrs(_arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride"), _arg(args, kwargs, 3, "padding", 0), where)
        attrs.update(ceil_mode=bool(_arg(args, kwargs, 4, "ceil_mode", False)), count_include_pad=bool(_arg(args, kwargs, 5, "count_include_pad", True)))
        return b.emit(n, "avg_pool2d", [b.value(n, args[0])], attrs)

    def adaptive(b, n, args, kwargs):
        return _adaptive(b, n, b.value(n, args[0]))

    def flatten(b, n, args, kwargs):
        return _flatten(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))

    def reshape(b, n, args, kwargs):
        return _reshape(b, n, b.value(n, args[0]))

    def add(b, n, args, kwargs):
        return _binary(b, n, "add", _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other"), kwargs.get("alpha", 1))

    def iadd(b, n, args, kwargs):
        b.check_inplace(n, n.args[0])
        return add(b, n, args, kwargs)

    def mul(b, n, args, kwargs):
        return _binary(b, n, "mul", _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other"))

    def imul(b, n, args, kwargs):
        b.check_inplace(n, n.args[0])
        return mul(b, n, args, kwargs)

    def cat(b, n, args, kwargs):
        xs = _arg(args, kwargs, 0, "tensors")
        if not isinstance(xs, (list, tuple)) or not xs:
            raise CmzError("input", f"{b.where(n)}: expected a list of tensors; found {xs!r}"[:300])
        return b.emit(n, "cat", [b.value(n, x) for x in xs], {"dim": int(_arg(args, kwargs, 1, "dim", 0))})

    def softmax(op, dtype_pos):
        def h(b, n, args, kwargs):
            return _softmax(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, dtype_pos, "dtype"), op)

        return h

    def dropout(b, n, args, kwargs):
        if _arg(args, kwargs, 2, "training", True):
            raise CmzError("input", f"{b.where(n)}: expected training=False (inference); found training=True")
        return b.value(n, args[0])

    def linear(b, n, args, kwargs):
        x, w, bias = b.value(n, args[0]), _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        params = {"weight": _param(b, n, w, "weight")}
        if bias is not None:
            params["bias"] = _param(b, n, bias, "bias")
        return b.emit(n, "linear", [x], params=params)

    def conv(b, n, args, kwargs):
        where = b.where(n)
        x, w, bias = b.value(n, args[0]), _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        params = {"weight": _param(b, n, w, "weight")}
        if bias is not None:
            params["bias"] = _param(b, n, bias, "bias")
        kernel = tuple(b.tensors[params["weight"]].shape[2:])
        attrs = _conv_attrs(_arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 5, "dilation", 1), _arg(args, kwargs, 6, "groups", 1), kernel, where)
        return b.emit(n, "conv2d", [x], attrs, params)

    def mean(b, n, args, kwargs):
        return _mean(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False))

    table = {
        torch.relu: unary("relu"),
        F.relu: unary("relu", 1),
        torch.relu_: inplace_unary("relu"),
        F.relu6: unary("relu6", 1),
        F.leaky_relu: leaky,
        torch.sigmoid: unary("sigmoid"),
        F.sigmoid: unary("sigmoid"),
        torch.tanh: unary("tanh"),
        F.tanh: unary("tanh"),
        F.gelu: gelu,
        F.silu: unary("silu", 1),
        F.hardswish: unary("hardswish", 1),
        F.hardsigmoid: unary("hardsigmoid", 1),
        F.max_pool2d: max_pool,
        F.avg_pool2d: avg_pool,
        F.adaptive_avg_pool2d: adaptive,
        torch.flatten: flatten,
        torch.reshape: reshape,
        operator.add: add,
        operator.iadd: iadd,
        torch.add: add,
        operator.mul: mul,
        operator.imul: imul,
        torch.mul: mul,
        torch.cat: cat,
        torch.concat: cat,
        F.softmax: softmax("softmax", 3),
        torch.softmax: softmax("softmax", 2),
        F.log_softmax: softmax("log_softmax", 3),
        torch.log_softmax: softmax("log_softmax", 2),
        F.dropout: dropout,
        F.linear: linear,
        F.conv2d: conv,
        torch.mean: mean,
    }
    if hasattr(F, "_max_pool2d"):
        table[F._max_pool2d] = max_pool
    if hasattr(torch, "concatenate"):
        table[torch.concatenate] = cat
    return table


def _param(b: _Builder, n, a, role):
    if not isinstance(a, _Attr):
        raise CmzError("input", f"{b.where(n)}: expected {role} to be a parameter or buffer of the module; found {a!r}"[:300])
    t = b.gm
    for part in a.target.split("."):
        t = getattr(t, part)
    if not isinstance(t, b.torch.Tensor):
        raise CmzError("input", f"{b.where(n)}: expected {role} {a.target!r} to be a tensor; found {type(t).__name__}")
    return b.tensor(a.target, t)


def _method_table():
    def self_unary(op, inplace=False):
        def h(b, n, args, kwargs):
            if inplace:
                b.check_inplace(n, n.args[0])
            return b.emit(n, op, [b.value(n, args[0])])

        return h

    def alias(b, n, args, kwargs):
        x = b.value(n, args[0])
        if b.shapes.get(n) != x.shape or b.dtypes.get(n, "float32") != "float32":
            raise CmzError("input", f"{b.where(n)}: expected it to return its float32 input unchanged; found a different shape or dtype")
        return x

    def view(b, n, args, kwargs):
        return _reshape(b, n, b.value(n, args[0]))

    def flatten(b, n, args, kwargs):
        return _flatten(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))

    def add(inplace):
        def h(b, n, args, kwargs):
            if inplace:
                b.check_inplace(n, n.args[0])
            return _binary(b, n, "add", b.value(n, args[0]), _arg(args, kwargs, 1, "other"), kwargs.get("alpha", 1))

        return h

    def mul(inplace):
        def h(b, n, args, kwargs):
            if inplace:
                b.check_inplace(n, n.args[0])
            return _binary(b, n, "mul", b.value(n, args[0]), _arg(args, kwargs, 1, "other"))

        return h

    def softmax(op):
        def h(b, n, args, kwargs):
            return _softmax(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "dim"), kwargs.get("dtype"), op)

        return h

    def mean(b, n, args, kwargs):
        return _mean(b, n, b.value(n, args[0]), _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False))

    return {
        "relu": self_unary("relu"),
        "relu_": self_unary("relu", True),
        "sigmoid": self_unary("sigmoid"),
        "sigmoid_": self_unary("sigmoid", True),
        "tanh": self_unary("tanh"),
        "tanh_": self_unary("tanh", True),
        "view": view,
        "reshape": view,
        "flatten": flatten,
        "contiguous": alias,
        "clone": alias,
        "detach": alias,
        "float": alias,
        "add": add(False),
        "add_": add(True),
        "mul": mul(False),
        "mul_": mul(True),
        "softmax": softmax("softmax"),
        "log_softmax": softmax("log_softmax"),
        "mean": mean,
    }


# Non-tensor results computed from tensors that are shapes, not data: these
# become constants of the capture (e.g. ``x.size(0)`` in ``x.view(x.size(0), -1)``).
_SHAPE_METHODS = ("size", "dim")
_SHAPE_ATTRS = ("shape", "ndim")


def _contains_value(a) -> bool:
    if isinstance(a, (_V, _Attr)):
        return True
    if isinstance(a, (list, tuple)):
        return any(_contains_value(x) for x in a)
    if isinstance(a, dict):
        return any(_contains_value(x) for x in a.values())
    return False


# --- BatchNorm folding -------------------------------------------------------------


def _np(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.detach().cpu().numpy()


def _fold_batch_norms(b: _Builder, outputs: set[str], shapes: dict[str, tuple]) -> None:
    """Fold each batch_norm into the conv2d/linear before it (spec §10.7):
    ``w' = w·α`` per output channel and ``b' = (b − mean)·α + β`` with
    ``α = γ / sqrt(var + eps)``, computed in float64, rounded once."""
    uses: dict[str, int] = {}
    for p in b.nodes:
        for v in p.inputs:
            uses[v] = uses.get(v, 0) + 1
    for v in outputs:
        uses[v] = uses.get(v, 0) + 1
    tensor_uses: dict[str, int] = {}
    for p in b.nodes:
        for t in p.params.values():
            tensor_uses[t] = tensor_uses.get(t, 0) + 1
    producer = {p.output: p for p in b.nodes}
    keep = []
    for p in b.nodes:
        src = producer.get(p.inputs[0]) if p.op == "batch_norm" else None
        ok = (
            src is not None
            and src.op in ("conv2d", "linear")
            and src.module is not None
            and uses.get(p.inputs[0]) == 1
            and all(tensor_uses[t] == 1 for t in list(src.params.values()) + list(p.params.values()))
            and (src.op == "conv2d" or len(shapes[src.output]) == 2)
        )
        bias_name = src.params.get("bias", f"{src.module}.bias") if ok else None
        if ok and "bias" not in src.params and bias_name in b.tensors:
            ok = False  # the name a folded bias would take is taken
        if not ok:
            keep.append(p)
            continue
        w = _np(b.tensors[src.params["weight"]])
        dtype = w.dtype if w.dtype in (np.float32, np.float64, np.float16) else np.float32
        w = w.astype(np.float64)
        bias = _np(b.tensors[src.params["bias"]]).astype(np.float64) if "bias" in src.params else np.zeros(w.shape[0])
        mean = _np(b.tensors[p.params["running_mean"]]).astype(np.float64)
        var = _np(b.tensors[p.params["running_var"]]).astype(np.float64)
        alpha = 1.0 / np.sqrt(var + p.attrs["eps"])
        if "weight" in p.params:
            alpha = alpha * _np(b.tensors[p.params["weight"]]).astype(np.float64)
        beta = _np(b.tensors[p.params["bias"]]).astype(np.float64) if "bias" in p.params else 0.0
        b.tensors[src.params["weight"]] = (w * alpha.reshape((-1,) + (1,) * (w.ndim - 1))).astype(dtype)
        b.tensors[bias_name] = ((bias - mean) * alpha + beta).astype(dtype)
        src.params["bias"] = bias_name
        for t in p.params.values():
            del b.tensors[t]
        src.output = p.output
        src.where += f" + {p.where} (folded)"
        producer[p.output] = src  # a second BatchNorm right after folds too
        tensor_uses[bias_name] = 1
    b.nodes = keep


# --- entry point ---------------------------------------------------------------------


def capture(module, example_input) -> tuple[Graph, dict[str, np.ndarray]]:
    """Capture ``module`` as a graph and the tensors it uses.

    The module is traced with ``torch.fx.symbolic_trace`` and run once on
    ``example_input`` (in eval mode, without gradients; its training flag is
    restored afterwards) to learn every shape.  Graph inputs get the example's
    shape with the batch dimension left free (``None``).

    Args:
        module: a ``torch.nn.Module`` built from the layers of spec §10.4.
        example_input: a float32 tensor (or numpy array) with a batch
            dimension first, or a tuple of them for several inputs.

    Returns:
        ``(graph, tensors)``: a validated :class:`Graph` and the tensors its
        nodes use, name → numpy array, named as in ``module.state_dict()``
        and in its order (a folded BatchNorm's conv gets a bias named like
        the conv's, e.g. ``features.0.bias``).  Unchanged tensors share
        memory with the module's parameters.

    Raises:
        CmzError: check ``input``: torch missing, an untraceable module, or
            an op without an equivalent in spec §10.4 (the message names it
            and its module path, e.g. ``features.3 (nn.LSTM)``).

    Example:
        >>> graph, tensors = capture(model, torch.zeros(1, 3, 224, 224))   # doctest: +SKIP
    """
    torch = _torch()
    fx = torch.fx
    if not isinstance(module, torch.nn.Module):
        raise CmzError("input", f"capture: expected a torch.nn.Module; found {type(module).__name__}")
    examples = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    ex = []
    for i, e in enumerate(examples):
        if isinstance(e, np.ndarray):
            e = torch.from_numpy(e)
        if not isinstance(e, torch.Tensor) or e.dtype != torch.float32 or e.ndim < 1 or e.shape[0] < 1:
            raise CmzError("input", f"example input #{i}: expected a float32 tensor with a batch dimension first; found {getattr(e, 'dtype', type(e).__name__)} of shape {list(getattr(e, 'shape', []))}")
        ex.append(e.detach().cpu())
    was_training = module.training
    module.eval()
    try:
        try:
            gm = fx.symbolic_trace(module)
        except Exception as e:  # fx raises many types for untraceable code
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CmzError("input", f"capture: expected a module torch.fx can trace; found {type(e).__name__}: {msg}"[:500]) from None
        return _build(torch, gm, module, ex)
    finally:
        module.train(was_training)


def _record(torch, gm, ex):
    """Run the traced module once; shapes of tensor results, values of the rest."""
    shapes, dtypes, consts = {}, {}, {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                shapes[n] = tuple(r.shape)
                dtypes[n] = str(r.dtype).replace("torch.", "")
            else:
                consts[n] = r
            return r

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(ex) > len(placeholders):
        raise CmzError("input", f"capture: expected at most {len(placeholders)} example input(s), one per forward argument; found {len(ex)}")
    try:
        with torch.no_grad():
            Recorder(gm).run(*ex)
    except CmzError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CmzError("input", f"capture: expected the module to run on the example input; found {type(e).__name__}: {msg}"[:500]) from None
    return shapes, dtypes, consts


def _build(torch, gm, module, ex):
    shapes, dtypes, consts = _record(torch, gm, ex)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    b = _Builder(torch, gm, shapes, dtypes, consts, order)
    functions = _function_table(torch)
    methods = _method_table()
    out_vals = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if n in shapes:
                if dtypes[n] != "float32":
                    raise CmzError("input", f"example input {n.name!r}: expected float32; found {dtypes[n]}")
                b.inputs.append(ValueInfo(n.name, (None,) + shapes[n][1:]))
                b.env[n] = _V(n.name, shapes[n])
            else:
                b.env[n] = consts[n]
            continue
        if n.op == "get_attr":
            b.env[n] = _Attr(n.target)
            continue
        if n.op == "output":
            out_vals = b.resolve(n.args[0])
            continue
        args, kwargs = b.resolve(n.args), b.resolve(n.kwargs)
        if n not in shapes:  # a non-tensor result
            value = consts[n]
            if _contains_tensor(torch, value):
                raise CmzError("input", f"{b.where(n)}: expected an op with one tensor result; found {type(value).__name__} of tensors (unsupported)")
            shape_only = (n.op == "call_method" and n.target in _SHAPE_METHODS) or (n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] in _SHAPE_ATTRS)
            if _contains_value(args) or _contains_value(kwargs):
                if not shape_only:
                    raise CmzError("input", f"{b.where(n)}: expected only shapes to be read from tensors as constants; found a data-dependent value (unsupported)")
            b.env[n] = value
            continue
        if dtypes[n] != "float32":
            raise CmzError("input", f"{b.where(n)}: expected a float32 result; found {dtypes[n]} (unsupported)")
        if n.op == "call_module":
            r = _module_node(b, n, gm.get_submodule(n.target), args, kwargs)
        elif n.op == "call_function":
            h = functions.get(n.target)
            if h is None:
                raise CmzError("input", f"{b.where(n)}: expected a function with an op in spec §10.4; found an unsupported function")
            r = h(b, n, args, kwargs)
        elif n.op == "call_method":
            h = methods.get(n.target)
            if h is None:
                raise CmzError("input", f"{b.where(n)}: expected a method with an op in spec §10.4; found an unsupported method")
            r = h(b, n, args, kwargs)
        else:  # pragma: no cover - fx has no other node kinds
            raise CmzError("input", f"{b.where(n)}: unsupported fx node kind {n.op!r}")
        if isinstance(r, _V) and r.shape is None:
            r = _V(r.name, shapes[n])
        b.env[n] = r
    return _finish(b, module, out_vals)


def _contains_tensor(torch, v) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(_contains_tensor(torch, x) for x in v)
    if isinstance(v, dict):
        return any(_contains_tensor(torch, x) for x in v.values())
    return False


def _finish(b: _Builder, module, out_vals):
    outs = list(out_vals) if isinstance(out_vals, (tuple, list)) else [out_vals]
    if not outs or not all(isinstance(v, _V) for v in outs):
        raise CmzError("input", f"capture: expected the module to return a tensor or a tuple/list of tensors computed from its inputs; found {out_vals!r}"[:300])
    _fold_batch_norms(b, {v.name for v in outs}, {n.name: s for n, s in b.shapes.items()})
    # An output listed twice gets an identity copy: graph outputs are unique.
    names, out_infos = set(), []
    for v in outs:
        name = v.name
        if name in names:
            k = 1
            while f"{v.name}_out{k}" in names or any(p.output == f"{v.name}_out{k}" for p in b.nodes):
                k += 1
            name = f"{v.name}_out{k}"
            b.nodes.append(_Pending("identity", [v.name], name, {}, {}, "a repeated output"))
        names.add(name)
        out_infos.append(ValueInfo(name, (None,) + tuple(v.shape[1:])))
    nodes = [Node(p.op, p.inputs, [p.output], dict(sorted(p.params.items())), p.attrs) for p in b.nodes]
    graph = Graph(list(b.inputs), out_infos, nodes)
    tensors = _ordered_tensors(b, module)
    try:
        # graph_from_header fills attribute defaults and checks types, exactly
        # as a reader will; validate checks shapes against PyTorch's.
        from .graph import graph_from_header, graph_to_header

        graph = graph_from_header(graph_to_header(graph))
        validate(graph, tensors)
    except CmzError as e:
        import re

        m = re.search(r"graph node #(\d+)", str(e))
        where = f" (captured from {b.nodes[int(m.group(1))].where})" if m else ""
        raise CmzError("input", f"capture: the captured graph is not valid: {e}{where}") from None
    return graph, tensors


def _ordered_tensors(b: _Builder, module) -> dict[str, np.ndarray]:
    """The graph's tensors in state-dict order; a folded bias follows its weight."""
    used = {t for p in b.nodes for t in p.params.values()}
    out = {}
    bias_of = {p.params["weight"]: p.params["bias"] for p in b.nodes if "weight" in p.params and "bias" in p.params}
    for key in module.state_dict(keep_vars=True):
        if key in used and key not in out:
            out[key] = _np(b.tensors[key])
            bias = bias_of.get(key)
            if bias is not None and bias in used and bias not in out:
                out[bias] = _np(b.tensors[bias])
    for key in b.tensors:
        if key in used and key not in out:
            out[key] = _np(b.tensors[key])
    return out
