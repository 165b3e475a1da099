"""The graph IR a ``.cmz`` file may carry (spec §10): dataclasses, the op
table, conversion from and to the header map, and validation with shape
inference over the symbolic batch dimension.

``OPS`` is the one place in code that lists the ops, their inputs, parameter
roles and attributes; ``tests/test_graph.py`` compares it with the spec's op
table (``<!-- spec:ops -->``).  Every failure raises
:class:`cmodel.CmzError` with check ``graph`` and a message naming the node
(index and op), what was expected and what was found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from ..format import constants as C
from ..errors import CmzError

# --- the op table (spec §10.4) ------------------------------------------------

REQUIRED = "required"  # an attribute without a default: it MUST be present
ABSENT = "absent"  # an attribute that MAY be absent and then has no value

# Type names of attributes.  ``int[k]`` is an array of exactly k ints;
# ``int[]`` an array of 1..MAX_NDIM ints.
ATTR_TYPES = ("int", "float", "bool", "str", "int[2]", "int[4]", "int[]")

# Axis attributes name a dimension of the input: -rank..rank-1, bounded here
# by MAX_NDIM before the rank is known.
_DIM = {"min": -C.MAX_NDIM, "max": C.MAX_NDIM - 1}


@dataclass(frozen=True)
class AttrDef:
    """One attribute of an op: type, default (or REQUIRED / ABSENT), and the
    allowed range (``min``/``max`` for ints, every element of int arrays, and
    floats) or the allowed strings (``choices``)."""

    type: str
    default: object = REQUIRED
    min: int | float | None = None
    max: int | float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class OpDef:
    """One op: how many inputs (``max_inputs`` None = any number), its
    parameter roles (required, then optional) and its attributes."""

    min_inputs: int = 1
    max_inputs: int | None = 1
    params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()
    attrs: Mapping[str, AttrDef] = field(default_factory=dict)


def _pool_attrs(max_pool: bool) -> dict[str, AttrDef]:
    a = {
        "kernel": AttrDef("int[2]", REQUIRED, 1),
        "stride": AttrDef("int[2]", REQUIRED, 1),
        "padding": AttrDef("int[2]", [0, 0], 0),
    }
    if max_pool:
        a["dilation"] = AttrDef("int[2]", [1, 1], 1)
    a["ceil_mode"] = AttrDef("bool", False)
    if not max_pool:
        a["count_include_pad"] = AttrDef("bool", True)
    return a


_UNARY = OpDef()
_SCALAR = {"scalar": AttrDef("float", ABSENT)}

OPS: dict[str, OpDef] = {
    "linear": OpDef(params=("weight",), optional_params=("bias",)),
    "conv2d": OpDef(
        params=("weight",),
        optional_params=("bias",),
        attrs={
            "stride": AttrDef("int[2]", [1, 1], 1),
            "padding": AttrDef("int[4]", [0, 0, 0, 0], 0),
            "dilation": AttrDef("int[2]", [1, 1], 1),
            "groups": AttrDef("int", 1, 1),
        },
    ),
    "batch_norm": OpDef(
        params=("running_mean", "running_var"),
        optional_params=("weight", "bias"),
        attrs={"eps": AttrDef("float", 1e-5, 0.0)},
    ),
    "relu": _UNARY,
    "relu6": _UNARY,
    "leaky_relu": OpDef(attrs={"negative_slope": AttrDef("float", 0.01)}),
    "sigmoid": _UNARY,
    "tanh": _UNARY,
    "gelu": OpDef(attrs={"approximate": AttrDef("str", "none", choices=("none", "tanh"))}),
    "silu": _UNARY,
    "hardswish": _UNARY,
    "hardsigmoid": _UNARY,
    "max_pool2d": OpDef(attrs=_pool_attrs(True)),
    "avg_pool2d": OpDef(attrs=_pool_attrs(False)),
    "adaptive_avg_pool2d": OpDef(attrs={"output_size": AttrDef("int[2]", REQUIRED, 1)}),
    "flatten": OpDef(attrs={"start_dim": AttrDef("int", 1, **_DIM), "end_dim": AttrDef("int", -1, **_DIM)}),
    "reshape": OpDef(attrs={"shape": AttrDef("int[]", REQUIRED, -1)}),
    "add": OpDef(max_inputs=2, attrs=_SCALAR),
    "mul": OpDef(max_inputs=2, attrs=_SCALAR),
    "cat": OpDef(max_inputs=None, attrs={"dim": AttrDef("int", REQUIRED, **_DIM)}),
    "softmax": OpDef(attrs={"dim": AttrDef("int", REQUIRED, **_DIM)}),
    "log_softmax": OpDef(attrs={"dim": AttrDef("int", REQUIRED, **_DIM)}),
    "dropout": _UNARY,
    "identity": _UNARY,
}

# The only value dtype of graph version 1: every value is float32.
VALUE_DTYPES = ("float32",)
GRAPH_KEYS = ("inputs", "outputs", "nodes")
VALUE_KEYS = ("name", "shape", "dtype")
NODE_KEYS = ("op", "inputs", "outputs", "params", "attrs")
# Ints in attributes are bounded like element counts (spec §9 MAX_ELEMENTS),
# so every size computed from them is exact in int64.
MAX_ATTR_INT = C.MAX_ELEMENTS

# --- dataclasses ----------------------------------------------------------------

Shape = tuple  # of int, with None at index 0: the batch dimension


@dataclass
class ValueInfo:
    """A graph input or output: its value name, shape (``shape[0]`` is None,
    the batch) and dtype."""

    name: str
    shape: tuple
    dtype: str = "float32"


@dataclass
class Node:
    """One op application.  ``params`` maps a parameter role (``weight``,
    ``bias``, ...) to a tensor name of the file; ``attrs`` holds every
    attribute of the op, defaults filled in (absent optional ones left out)."""

    op: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass
class Graph:
    """A network as an op list in topological order (spec §10)."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    nodes: list[Node]

    def to_header(self) -> dict:
        """The header map (:func:`graph_to_header`)."""
        return graph_to_header(self)


@dataclass(frozen=True)
class GraphInfo:
    """What :func:`validate` learned: every value's shape (``None`` at index 0
    for the batch) and the tensor names the graph uses, in first-use order."""

    shapes: dict[str, Shape]
    tensors: tuple[str, ...]


# --- header map ↔ dataclasses -----------------------------------------------------


def _fail(msg: str):
    raise CmzError("graph", msg)


def _tname(v) -> str:
    if v is None:
        return "nil"
    return {dict: "map", list: "array", str: "str", bytes: "bin", int: "int", float: "float", bool: "bool"}.get(type(v), type(v).__name__)


def _check_map(what: str, d, keys) -> None:
    if type(d) is not dict:
        _fail(f"{what}: expected a map; found {_tname(d)}")
    missing = [k for k in keys if k not in d]
    if missing:
        _fail(f"{what}: missing required key {missing[0]!r}; expected keys {list(keys)}")
    unknown = sorted(k for k in d if k not in keys)
    if unknown:
        _fail(f"{what}: unknown key {unknown[0]!r}; expected only {list(keys)}")


def _check_name(what: str, v) -> str:
    if type(v) is not str:
        _fail(f"{what}: expected a name of type str; found {_tname(v)} {v!r}")
    n = len(v.encode("utf-8"))
    if not 0 < n <= C.MAX_NAME_BYTES or "\x00" in v:
        _fail(f"{what}: expected a name of 1..{C.MAX_NAME_BYTES} UTF-8 bytes without NUL; found {v[:80]!r} ({n} bytes)")
    return v


def _value_info(what: str, d) -> ValueInfo:
    _check_map(what, d, VALUE_KEYS)
    name = _check_name(f"{what} name", d["name"])
    what = f"{what} {name!r}"
    shape = d["shape"]
    if type(shape) is not list or not 1 <= len(shape) <= C.MAX_NDIM:
        _fail(f"{what}: expected shape as an array of 1..{C.MAX_NDIM} dims; found {_tname(shape)} {shape!r}"[:300])
    if shape[0] is not None:
        _fail(f"{what}: expected shape[0] to be nil (the batch dimension, any size ≥ 1); found {shape[0]!r}")
    n = 1
    for dim in shape[1:]:
        if type(dim) is not int or not 1 <= dim <= C.MAX_VALUE_ELEMENTS:
            _fail(f"{what}: expected every dimension after the batch to be an int in 1..2**32; found {_tname(dim)} {dim!r}")
        n *= dim
    if n > C.MAX_VALUE_ELEMENTS:
        _fail(f"{what}: expected at most 2**32 elements per sample (MAX_VALUE_ELEMENTS); shape {_fmt(shape)} has {n}")
    if d["dtype"] not in VALUE_DTYPES or type(d["dtype"]) is not str:
        _fail(f"{what}: expected dtype one of {list(VALUE_DTYPES)}; found {d['dtype']!r}")
    return ValueInfo(name, tuple(shape), d["dtype"])


def _check_attr(what: str, key: str, a: AttrDef, v) -> object:
    bad = f"{what}: expected attribute {key!r}"

    def in_range(x) -> bool:
        lo = a.min if a.min is not None else -MAX_ATTR_INT
        hi = a.max if a.max is not None else MAX_ATTR_INT
        return lo <= x <= hi

    def rng() -> str:
        lo = a.min if a.min is not None else -MAX_ATTR_INT
        hi = a.max if a.max is not None else MAX_ATTR_INT
        return f"{lo}..{hi}" if hi != MAX_ATTR_INT else f"≥ {lo}"

    if a.type == "int":
        if type(v) is not int or not in_range(v):
            _fail(f"{bad} an int {rng()}; found {_tname(v)} {v!r}")
        return v
    if a.type == "float":
        if type(v) is not float or not math.isfinite(v) or (a.min is not None and v < a.min):
            _fail(f"{bad} a finite float{'' if a.min is None else f' ≥ {a.min}'}; found {_tname(v)} {v!r}")
        return v
    if a.type == "bool":
        if type(v) is not bool:
            _fail(f"{bad} a bool; found {_tname(v)} {v!r}")
        return v
    if a.type == "str":
        if type(v) is not str or v not in a.choices:
            _fail(f"{bad} one of {list(a.choices)}; found {_tname(v)} {v!r}")
        return v
    # int arrays
    if a.type == "int[]":
        ok_len = type(v) is list and 1 <= len(v) <= C.MAX_NDIM
        want = f"an array of 1..{C.MAX_NDIM} ints {rng()}"
    else:
        k = int(a.type[4:-1])
        ok_len = type(v) is list and len(v) == k
        want = f"an array of {k} ints {rng()}"
    if not ok_len or not all(type(x) is int and in_range(x) for x in v):
        _fail(f"{bad} {want}; found {_tname(v)} {v!r}"[:400])
    return list(v)


def _node(i: int, d) -> Node:
    what = f"graph node #{i}"
    _check_map(what, d, NODE_KEYS)
    op = d["op"]
    if type(op) is not str or op not in OPS:
        _fail(f"{what}: expected op one of {sorted(OPS)}; found {_tname(op)} {op!r}"[:600])
    spec = OPS[op]
    what = f"graph node #{i} ({op})"
    ins, outs = d["inputs"], d["outputs"]
    if type(ins) is not list:
        _fail(f"{what}: expected inputs as an array of value names; found {_tname(ins)}")
    hi = spec.max_inputs
    if not spec.min_inputs <= len(ins) <= (hi if hi is not None else len(ins)):
        want = f"{spec.min_inputs}" if hi == spec.min_inputs else f"{spec.min_inputs}..{hi if hi is not None else 'n'}"
        _fail(f"{what}: expected {want} input(s); found {len(ins)}")
    for k, v in enumerate(ins):
        _check_name(f"{what} input #{k}", v)
    if type(outs) is not list or len(outs) != 1:
        _fail(f"{what}: expected outputs as an array of exactly 1 value name; found {_tname(outs)} {outs!r}"[:300])
    _check_name(f"{what} output #0", outs[0])
    params = d["params"]
    if type(params) is not dict:
        _fail(f"{what}: expected params as a map of role to tensor name; found {_tname(params)}")
    roles = spec.params + spec.optional_params
    for role in params:
        if role not in roles:
            _fail(f"{what}: unknown param role {role!r}; expected {list(roles) or 'none'}")
    for role in spec.params:
        if role not in params:
            _fail(f"{what}: missing param {role!r}; expected roles {list(spec.params)} (optional {list(spec.optional_params)})")
    for role, name in params.items():
        _check_name(f"{what} param {role!r}", name)
    attrs = d["attrs"]
    if type(attrs) is not dict:
        _fail(f"{what}: expected attrs as a map; found {_tname(attrs)}")
    for key in attrs:
        if key not in spec.attrs:
            _fail(f"{what}: unknown attribute {key!r}; expected {sorted(spec.attrs) or 'none'}")
    full = {}
    for key, a in spec.attrs.items():
        if key in attrs:
            full[key] = _check_attr(what, key, a, attrs[key])
        elif a.default is REQUIRED:
            _fail(f"{what}: missing required attribute {key!r}")
        elif a.default is not ABSENT:
            full[key] = list(a.default) if isinstance(a.default, list) else a.default
    return Node(op, list(ins), list(outs), {r: params[r] for r in sorted(params)}, full)


def graph_from_header(obj) -> Graph:
    """Parse and check the header's ``graph`` map (spec §10.2–§10.4): exact
    key sets, types, known ops, parameter roles, attribute types and ranges.
    Missing attributes with a default get it.  Names are resolved and shapes
    inferred by :func:`validate`.

    Raises:
        CmzError: check ``graph``.
    """
    _check_map("graph", obj, GRAPH_KEYS)
    for key in ("inputs", "outputs"):
        if type(obj[key]) is not list or not obj[key]:
            _fail(f"graph {key}: expected a non-empty array of value records; found {_tname(obj[key])} {obj[key]!r}"[:300])
    if type(obj["nodes"]) is not list:
        _fail(f"graph nodes: expected an array of nodes; found {_tname(obj['nodes'])}")
    inputs = [_value_info(f"graph input #{i}", v) for i, v in enumerate(obj["inputs"])]
    outputs = [_value_info(f"graph output #{i}", v) for i, v in enumerate(obj["outputs"])]
    nodes = [_node(i, n) for i, n in enumerate(obj["nodes"])]
    return Graph(inputs, outputs, nodes)


def _value_header(v: ValueInfo) -> dict:
    return {"name": v.name, "shape": [None] + [int(d) for d in v.shape[1:]], "dtype": v.dtype}


def _attr_header(v):
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return v


def graph_to_header(graph: Graph) -> dict:
    """The header map of a graph, in canonical key order (spec §10.2):
    ``inputs``, ``outputs``, ``nodes``; node keys ``op``, ``inputs``,
    ``outputs``, ``params``, ``attrs``; params and attrs sorted by key."""
    return {
        "inputs": [_value_header(v) for v in graph.inputs],
        "outputs": [_value_header(v) for v in graph.outputs],
        "nodes": [
            {
                "op": n.op,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "params": {r: n.params[r] for r in sorted(n.params)},
                "attrs": {k: _attr_header(n.attrs[k]) for k in sorted(n.attrs)},
            }
            for n in graph.nodes
        ],
    }


# --- validation and shape inference (spec §10.5, §10.6) -----------------------------


def _fmt(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _axis(what: str, name: str, dim: int, rank: int) -> int:
    if not -rank <= dim < rank:
        _fail(f"{what}: expected {name} in {-rank}..{rank - 1} for an input of rank {rank}; found {dim}")
    d = dim + rank if dim < 0 else dim
    if d == 0:
        _fail(f"{what}: expected {name} not to be the batch dimension 0; found {dim}")
    return d


def _rank(what: str, x: Shape, lo: int, hi: int | None = None) -> None:
    if len(x) < lo or (hi is not None and len(x) > hi):
        want = f"rank {lo}" if hi == lo else f"rank ≥ {lo}" if hi is None else f"rank {lo}..{hi}"
        _fail(f"{what}: expected an input of {want}; found shape {_fmt(x)}")


def _param_shape(what: str, role: str, p: dict, expected: tuple) -> None:
    if p[role] != expected:
        _fail(f"{what}: expected param {role!r} of shape {list(expected)}; found {list(p[role])}")


def _padded(what: str, c: int, h: int, w: int) -> None:
    """The padded input a conv or pool reads counts as a value (MAX_VALUE_ELEMENTS)."""
    if c * h * w > C.MAX_VALUE_ELEMENTS:
        _fail(f"{what}: expected the padded input to hold at most 2**32 elements per sample (MAX_VALUE_ELEMENTS); found {c} × {h} × {w}")


def _pool_out(what: str, size: int, k: int, s: int, pad: int, d: int, ceil: bool, axis: str) -> int:
    """PyTorch's pooling output size (aten ``pooling_output_shape``)."""
    if 2 * pad > k:
        _fail(f"{what}: expected padding ≤ kernel / 2 along {axis}; found padding {pad}, kernel {k}")
    span = size + 2 * pad - d * (k - 1) - 1
    if span < 0:
        _fail(f"{what}: expected the input ({size} along {axis}, padded by {pad} each side) to cover the kernel extent {d * (k - 1) + 1}; found it smaller")
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _infer_linear(what, x, p, a):
    _rank(what, x, 2)
    w = p["weight"]
    if len(w) != 2 or w[1] != x[-1]:
        _fail(f"{what}: expected param 'weight' of shape [out_features, {x[-1]}] (input features {x[-1]}); found {list(w)}")
    if "bias" in p:
        _param_shape(what, "bias", p, (w[0],))
    return x[:-1] + (w[0],)


def _infer_conv2d(what, x, p, a):
    _rank(what, x, 4, 4)
    w = p["weight"]
    g = a["groups"]
    c = x[1]
    if len(w) != 4:
        _fail(f"{what}: expected param 'weight' of rank 4 [out_channels, in_channels/groups, kh, kw]; found {list(w)}")
    if c % g or w[0] % g:
        _fail(f"{what}: expected in_channels {c} and out_channels {w[0]} divisible by groups {g}; found them not")
    if w[1] != c // g:
        _fail(f"{what}: expected param 'weight' of shape [{w[0]}, {c // g}, {w[2]}, {w[3]}] (in_channels {c} / groups {g}); found {list(w)}")
    if "bias" in p:
        _param_shape(what, "bias", p, (w[0],))
    pt, pl, pb, pr = a["padding"]
    _padded(what, c, x[2] + pt + pb, x[3] + pl + pr)
    out = []
    for axis, size, k, s, d, lo, hi in (("height", x[2], w[2], a["stride"][0], a["dilation"][0], pt, pb), ("width", x[3], w[3], a["stride"][1], a["dilation"][1], pl, pr)):
        span = size + lo + hi - d * (k - 1) - 1
        if span < 0:
            _fail(f"{what}: expected the padded input ({size} + {lo} + {hi} along {axis}) to cover the kernel extent {d * (k - 1) + 1}; found it smaller")
        out.append(span // s + 1)
    return (None, w[0], out[0], out[1])


def _infer_batch_norm(what, x, p, a):
    _rank(what, x, 2)
    for role in p:
        _param_shape(what, role, p, (x[1],))
    return x


def _infer_unary(what, x, p, a):
    return x


def _infer_max_pool2d(what, x, p, a):
    _rank(what, x, 4, 4)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["kernel"], a["stride"], a["padding"], a["dilation"]
    _padded(what, x[1], x[2] + 2 * ph, x[3] + 2 * pw)
    return (None, x[1], _pool_out(what, x[2], kh, sh, ph, dh, a["ceil_mode"], "height"), _pool_out(what, x[3], kw, sw, pw, dw, a["ceil_mode"], "width"))


def _infer_avg_pool2d(what, x, p, a):
    _rank(what, x, 4, 4)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    _padded(what, x[1], x[2] + 2 * ph, x[3] + 2 * pw)
    return (None, x[1], _pool_out(what, x[2], kh, sh, ph, 1, a["ceil_mode"], "height"), _pool_out(what, x[3], kw, sw, pw, 1, a["ceil_mode"], "width"))


def _infer_adaptive_avg_pool2d(what, x, p, a):
    _rank(what, x, 4, 4)
    return (None, x[1], a["output_size"][0], a["output_size"][1])


def _infer_flatten(what, x, p, a):
    r = len(x)
    s = _axis(what, "start_dim", a["start_dim"], r)
    e = _axis(what, "end_dim", a["end_dim"], r)
    if s > e:
        _fail(f"{what}: expected start_dim ≤ end_dim (after adding the rank {r} to negative values); found {s} > {e}")
    return x[:s] + (math.prod(x[s : e + 1]),) + x[e + 1 :]


def _infer_reshape(what, x, p, a):
    shape = a["shape"]
    if shape[0] != 0:
        _fail(f"{what}: expected shape[0] = 0 (copy the batch dimension); found {shape[0]}")
    rest = shape[1:]
    if any(d == 0 for d in rest) or sum(d == -1 for d in rest) > 1:
        _fail(f"{what}: expected shape[1:] of ints ≥ 1 with at most one -1; found {shape}")
    total = math.prod(x[1:])
    known = math.prod(d for d in rest if d != -1)
    if -1 in rest:
        if total % known:
            _fail(f"{what}: expected {total} elements per sample (input {_fmt(x)}) to be divisible by {known} (shape {shape}); found remainder {total % known}")
        rest = [total // known if d == -1 else d for d in rest]
    elif known != total:
        _fail(f"{what}: expected shape {shape} to hold the {total} elements per sample of input {_fmt(x)}; found {known}")
    return (None,) + tuple(rest)


def _broadcast(what, shapes):
    a, b = shapes
    if len(a) != len(b):
        _fail(f"{what}: expected both inputs of the same rank; found {_fmt(a)} and {_fmt(b)}")
    out = [None]
    for i in range(1, len(a)):
        if a[i] != b[i] and 1 not in (a[i], b[i]):
            _fail(f"{what}: expected broadcastable inputs (each dim equal or 1); found {_fmt(a)} and {_fmt(b)} at dim {i}")
        out.append(max(a[i], b[i]))
    return tuple(out)


def _infer_cat(what, shapes, a):
    r = len(shapes[0])
    d = _axis(what, "dim", a["dim"], r)
    for k, s in enumerate(shapes[1:], 1):
        if len(s) != r or any(s[i] != shapes[0][i] for i in range(1, r) if i != d):
            _fail(f"{what}: expected input #{k} to match input #0 {_fmt(shapes[0])} in every dim but {d}; found {_fmt(s)}")
    return shapes[0][:d] + (sum(s[d] for s in shapes),) + shapes[0][d + 1 :]


def _infer_softmax(what, x, p, a):
    _axis(what, "dim", a["dim"], len(x))
    return x


_INFER = {
    "linear": _infer_linear,
    "conv2d": _infer_conv2d,
    "batch_norm": _infer_batch_norm,
    "max_pool2d": _infer_max_pool2d,
    "avg_pool2d": _infer_avg_pool2d,
    "adaptive_avg_pool2d": _infer_adaptive_avg_pool2d,
    "flatten": _infer_flatten,
    "reshape": _infer_reshape,
    "softmax": _infer_softmax,
    "log_softmax": _infer_softmax,
}


def infer_shape(what: str, node: Node, shapes: list[Shape], params: dict[str, tuple]) -> Shape:
    """The output shape of ``node`` from its input shapes and its parameter
    tensors' shapes (spec §10.4), or CmzError('graph')."""
    op, a = node.op, node.attrs
    if op in ("add", "mul"):
        if len(shapes) == 1 and "scalar" not in a:
            _fail(f"{what}: expected attribute 'scalar' with one input; found none")
        if len(shapes) == 2 and "scalar" in a:
            _fail(f"{what}: expected no attribute 'scalar' with two inputs; found {a['scalar']!r}")
        return shapes[0] if len(shapes) == 1 else _broadcast(what, shapes)
    if op == "cat":
        return _infer_cat(what, shapes, a)
    return _INFER.get(op, _infer_unary)(what, shapes[0], params, a)


def _tensor_meta(t) -> tuple[tuple, str]:
    """(shape, dtype name) of a TensorRecord, numpy array or (shape, dtype)."""
    if isinstance(t, tuple) and len(t) == 2:
        return tuple(t[0]), str(t[1])
    return tuple(t.shape), str(t.dtype)


def validate(graph: Graph, tensors: Mapping[str, object]) -> GraphInfo:
    """Resolve names, check order and parameters, and infer every value's
    shape over the symbolic batch dimension (spec §10.5).

    Args:
        graph: from :func:`graph_from_header` (structure already checked).
        tensors: tensor name → anything with ``shape`` and ``dtype``
            (a :class:`cmodel.format.header.TensorRecord`, a numpy array) or a
            ``(shape, dtype)`` pair.

    Returns:
        A :class:`GraphInfo`.

    Raises:
        CmzError: check ``graph``; the message names the node (index and op)
            and what was expected and found.
    """
    producer: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.outputs:
            producer.setdefault(v, i)
    shapes: dict[str, Shape] = {}
    where: dict[str, str] = {}
    for k, v in enumerate(graph.inputs):
        if v.name in shapes:
            _fail(f"graph input #{k}: value {v.name!r} is defined twice (already by {where[v.name]})")
        shapes[v.name] = tuple(v.shape)
        where[v.name] = f"graph input #{k}"
    used: dict[str, None] = {}
    for i, n in enumerate(graph.nodes):
        what = f"graph node #{i} ({n.op})"
        ins = []
        for v in n.inputs:
            if v not in shapes:
                if v in producer:
                    _fail(f"{what}: uses value {v!r} before it is defined (by node #{producer[v]}); expected nodes in topological order (the list is out of order or has a cycle)")
                _fail(f"{what}: uses value {v!r}, which no graph input or node defines (a dangling name)")
            ins.append(shapes[v])
        params = {}
        for role, name in n.params.items():
            if name not in tensors:
                _fail(f"{what}: expected param {role!r} to name a tensor of the file; found {name!r}, which is not in it")
            shape, dtype = _tensor_meta(tensors[name])
            if dtype not in C.FLOAT_DTYPES:
                _fail(f"{what}: expected param {role!r} (tensor {name!r}) of a float dtype {list(C.FLOAT_DTYPES)}; found {dtype}")
            if any(d < 1 for d in shape):
                _fail(f"{what}: expected param {role!r} (tensor {name!r}) without empty dims; found shape {list(shape)}")
            params[role] = shape
            used[name] = None
        out = infer_shape(what, n, ins, params)
        numel = math.prod(out[1:])
        if len(out) > C.MAX_NDIM or numel > C.MAX_VALUE_ELEMENTS or any(d < 1 for d in out[1:]):
            _fail(f"{what}: expected an output of ≤ {C.MAX_NDIM} dims, each ≥ 1, and ≤ 2**32 elements per sample (MAX_VALUE_ELEMENTS); found {_fmt(out)}")
        for v in n.outputs:
            if v in shapes:
                _fail(f"{what}: defines value {v!r}, which is defined twice (already by {where[v]})")
            shapes[v] = out
            where[v] = f"node #{i}"
    seen = set()
    for k, v in enumerate(graph.outputs):
        what = f"graph output #{k} {v.name!r}"
        if v.name not in shapes:
            _fail(f"{what}: expected a value defined by a graph input or node; found none (a dangling name)")
        if v.name in seen:
            _fail(f"{what}: expected each output once; found it twice")
        seen.add(v.name)
        if tuple(v.shape) != shapes[v.name]:
            _fail(f"{what}: expected the declared shape to equal the inferred shape {_fmt(shapes[v.name])}; found {_fmt(v.shape)}")
    return GraphInfo(shapes, tuple(used))
