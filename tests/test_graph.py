"""runtime/graph.py: the graph IR (spec §10) — the op table against the
spec, round trips, and every malformed graph rejected at load (check
``graph``), one attack per case."""

import copy
import json
import math
import re

import msgpack
import numpy as np
import pytest

import cmodel
from cmodel.format import constants as C
from cmodel.runtime import Session
from cmodel.runtime.graph import ABSENT, OPS, REQUIRED, Graph, Node, ValueInfo, graph_from_header, graph_to_header, validate
from test_spec import SPEC, table

# --- the op table in the spec and in code -------------------------------------------------

ATTR_RE = re.compile(r"^`(\w+)`(\?)?: (\S+)(?: (≥ -?[\d.]+|-?\d+\.\.-?\d+|one of [\w, ]+?))?(?: = (.+))?$")


def _range(a):
    if a.choices:
        return "one of " + ", ".join(a.choices)
    if a.min is not None and a.max is not None:
        return f"{a.min}..{a.max}"
    if a.min is not None:
        return f"≥ {a.min:g}" if isinstance(a.min, float) else f"≥ {a.min}"
    return None


def test_op_table_matches_spec():
    rows = table("ops")
    assert [r[0] for r in rows] == list(OPS)
    for op, inputs, params, attrs in rows:
        d = OPS[op]
        hi = "n" if d.max_inputs is None else str(d.max_inputs)
        assert inputs == (str(d.min_inputs) if hi == str(d.min_inputs) else f"{d.min_inputs}..{hi}"), op
        roles = [] if params == "—" else [p.strip().strip("`") for p in params.split(",")]
        assert [r.rstrip("?").rstrip("`") for r in roles if not r.endswith("?")] == list(d.params), op
        assert [r[:-1].rstrip("`") for r in roles if r.endswith("?")] == list(d.optional_params), op
        cells = [] if attrs == "—" else [c.strip() for c in attrs.split(";")]
        # table() strips the cell's outer backticks; restore them for the regex
        cells = [c if c.startswith("`") else "`" + c for c in cells]
        cells = [c if c.count("`") % 2 == 0 else c + "`" for c in cells]
        parsed = {}
        for c in cells:
            m = ATTR_RE.match(c)
            assert m, f"{op}: cannot parse attribute cell {c!r}"
            parsed[m.group(1)] = m.groups()[1:]
        assert list(parsed) == list(d.attrs), op
        for name, (optional, typ, rng, default) in parsed.items():
            a = d.attrs[name]
            assert typ == a.type, (op, name)
            assert (rng or None) == _range(a), (op, name)
            assert bool(optional) == (a.default is ABSENT), (op, name)
            if default is None:
                assert a.default in (REQUIRED, ABSENT), (op, name)
            else:
                assert json.loads(default) == a.default, (op, name)


def test_spec_checks_graph_after_data_stage():
    assert C.CHECKS[-1] == "graph" and C.CHECKS.index("graph") > C.CHECKS.index("entries")
    assert "graph" in C.HEADER_OPTIONAL_KEYS
    assert "## 10. Graph\n" in SPEC and "reserved" not in SPEC.split("## 10. Graph")[1].split("## 11.")[0].lower()


# --- a small valid graph ---------------------------------------------------------------------


def base_tensors():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "fc.weight": rng.standard_normal((5, 36)).astype(np.float32),
        "fc.bias": rng.standard_normal(5).astype(np.float32),
        "steps": np.arange(4, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }


def base_graph() -> dict:
    def node(op, ins, out, params=None, attrs=None):
        return {"op": op, "inputs": ins, "outputs": [out], "params": params or {}, "attrs": attrs or {}}

    return {
        "inputs": [{"name": "x", "shape": [None, 2, 6, 6], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [None, 5], "dtype": "float32"}],
        "nodes": [
            node("conv2d", ["x"], "c", {"weight": "conv.weight", "bias": "conv.bias"}, {"padding": [1, 1, 1, 1]}),
            node("relu", ["c"], "r"),
            node("max_pool2d", ["r"], "p", attrs={"kernel": [2, 2], "stride": [2, 2]}),
            node("flatten", ["p"], "f"),
            node("linear", ["f"], "y", {"weight": "fc.weight", "bias": "fc.bias"}),
        ],
    }


def write(path, graph, tensors=None):
    cmodel.save_file(tensors if tensors is not None else base_tensors(), path, rules={"*": {"skip": True}}, graph=graph)
    return path


def test_base_graph_loads_and_runs(tmp_path):
    with Session(write(tmp_path / "g.cmz", base_graph())) as s:
        (y,) = s.run(np.ones((3, 2, 6, 6), np.float32))
        assert y.shape == (3, 5)
        assert s.info.shapes == {"x": (None, 2, 6, 6), "c": (None, 4, 6, 6), "r": (None, 4, 6, 6), "p": (None, 4, 3, 3), "f": (None, 36), "y": (None, 5)}
        assert s.info.tensors == ("conv.bias", "conv.weight", "fc.bias", "fc.weight")  # first use, roles sorted


def test_round_trip_and_defaults():
    g = graph_from_header(base_graph())
    assert g.nodes[0].attrs == {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}
    assert g.nodes[2].attrs == {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}
    assert g.nodes[3].attrs == {"start_dim": 1, "end_dim": -1}
    h = graph_to_header(g)
    assert list(h) == ["inputs", "outputs", "nodes"]
    assert all(list(n) == ["op", "inputs", "outputs", "params", "attrs"] for n in h["nodes"])
    assert all(list(n["attrs"]) == sorted(n["attrs"]) and list(n["params"]) == sorted(n["params"]) for n in h["nodes"])
    assert graph_from_header(h) == g
    assert graph_to_header(graph_from_header(h)) == h  # complete form is a fixed point
    assert g.to_header() == h


def test_graph_in_the_file(tmp_path):
    p = write(tmp_path / "g.cmz", base_graph())
    with cmodel.open(p) as f:
        f.verify()
        h = f.graph
        assert h == base_graph()
        h["nodes"].clear()  # a copy: the file's view is unchanged
        assert f.graph == base_graph()
    with cmodel.open(write(tmp_path / "w.cmz", None)) as f:
        assert f.graph is None
    # a Graph object is accepted too, and stored in canonical form
    write(tmp_path / "o.cmz", graph_from_header(base_graph()))
    with cmodel.open(tmp_path / "o.cmz") as f:
        assert f.graph == graph_to_header(graph_from_header(base_graph()))
        raw = f._mm[32 : 32 + f.header_length]
    assert list(msgpack.unpackb(raw))[-1] == "graph"  # the last top-level key


def test_validate_accepts_records_arrays_and_pairs(tmp_path):
    g = graph_from_header(base_graph())
    arrays = base_tensors()
    info = validate(g, arrays)
    assert validate(g, {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}) == info
    with cmodel.open(write(tmp_path / "g.cmz", base_graph())) as f:
        assert validate(g, {n: f.record(n) for n in f.tensor_names()}) == info


def test_no_graph_is_a_graph_error(tmp_path):
    with pytest.raises(cmodel.CmzError) as e:
        Session(write(tmp_path / "w.cmz", None))
    assert e.value.check == "graph" and "found none" in str(e.value)


def test_data_checks_come_before_the_graph(tmp_path):
    # Spec §7 order: a bad segment CRC is reported before a bad graph.
    g = base_graph()
    g["nodes"][0]["op"] = "conv3d"
    p = write(tmp_path / "g.cmz", g)
    with cmodel.open(p) as f:
        at = f.data_start + f.record("fc.weight").segments["data"].offset
    blob = bytearray(p.read_bytes())
    blob[at] ^= 1  # a byte of a tensor the graph uses
    p.write_bytes(bytes(blob))
    with pytest.raises(cmodel.CmzError) as e:
        Session(p)
    assert e.value.check == "segment_crc"


def test_writer_rejects_a_non_map_graph(tmp_path):
    with pytest.raises(cmodel.CmzError) as e:
        write(tmp_path / "g.cmz", [1, 2])
    assert e.value.check == "input"
    assert not (tmp_path / "g.cmz").exists()


# --- malformed graphs: each rejected at load with check 'graph' -------------------------------


def _set(path, value):
    def f(g):
        obj = g
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return f


def _del(path):
    def f(g):
        obj = g
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return f


def _swap(i, j):
    def f(g):
        g["nodes"][i], g["nodes"][j] = g["nodes"][j], g["nodes"][i]

    return f


def _node(i, **kw):
    def f(g):
        g["nodes"][i].update(kw)

    return f


def _append(node):
    def f(g):
        g["nodes"].append(node)

    return f


def _n(op, ins, out, params=None, attrs=None):
    return {"op": op, "inputs": ins, "outputs": [out], "params": params or {}, "attrs": attrs or {}}


MALFORMED = {
    # structure (§10.5 items 1-3)
    "graph-missing-nodes": (_del(["nodes"]), "graph: missing required key 'nodes'"),
    "graph-unknown-key": (_set(["extra"], 1), "graph: unknown key 'extra'"),
    "inputs-empty": (_set(["inputs"], []), "graph inputs: expected a non-empty array"),
    "outputs-not-array": (_set(["outputs"], {"y": 1}), "graph outputs: expected a non-empty array"),
    "nodes-not-array": (_set(["nodes"], {}), "graph nodes: expected an array of nodes; found map"),
    "input-unknown-key": (_set(["inputs", 0, "layout"], "nchw"), "graph input #0: unknown key 'layout'"),
    "input-batch-not-nil": (_set(["inputs", 0, "shape"], [1, 2, 6, 6]), "expected shape[0] to be nil"),
    "input-zero-dim": (_set(["inputs", 0, "shape"], [None, 2, 0, 6]), "int in 1..2**32; found int 0"),
    "input-float-dim": (_set(["inputs", 0, "shape"], [None, 2, 6.0, 6]), "found float 6.0"),
    "input-too-many-dims": (_set(["inputs", 0, "shape"], [None] + [1] * C.MAX_NDIM), "1..32 dims"),
    "input-too-many-elements": (_set(["inputs", 0, "shape"], [None, 2, 2**16, 2**16]), "expected at most 2**32 elements per sample (MAX_VALUE_ELEMENTS); shape [N, 2, 65536, 65536] has 8589934592"),
    # a graph of a few bytes must not make a run allocate without bound (§9 MAX_VALUE_ELEMENTS)
    "activation-bomb-adaptive": (_append(_n("adaptive_avg_pool2d", ["c"], "z", attrs={"output_size": [2**20, 2**20]})), "graph node #5 (adaptive_avg_pool2d): expected an output of ≤ 32 dims, each ≥ 1, and ≤ 2**32 elements per sample"),
    "activation-bomb-padding": (_set(["nodes", 0, "attrs", "padding"], [2**20, 2**20, 2**20, 2**20]), "graph node #0 (conv2d): expected the padded input to hold at most 2**32 elements per sample (MAX_VALUE_ELEMENTS); found 2 × 2097158 × 2097158"),
    "activation-bomb-pool": (_set(["nodes", 2, "attrs"], {"kernel": [2**40, 2**40], "stride": [1, 1], "padding": [2**39, 2**39]}), "graph node #2 (max_pool2d): expected the padded input to hold at most 2**32 elements"),
    "input-dtype": (_set(["inputs", 0, "dtype"], "float16"), "expected dtype one of ['float32']; found 'float16'"),
    "value-name-empty": (_set(["inputs", 0, "name"], ""), "graph input #0 name: expected a name of 1..1024 UTF-8 bytes"),
    "value-name-bin": (_set(["outputs", 0, "name"], b"y"), "graph output #0 name: expected a name of type str; found bin"),
    "node-unknown-op": (_node(0, op="conv3d"), "graph node #0: expected op one of"),
    "node-op-not-str": (_node(1, op=7), "graph node #1: expected op one of"),
    "node-missing-attrs": (_del(["nodes", 1, "attrs"]), "graph node #1: missing required key 'attrs'"),
    "node-unknown-key": (_node(1, name="relu"), "graph node #1: unknown key 'name'"),
    "node-two-outputs": (_node(1, outputs=["r", "r2"]), "graph node #1 (relu): expected outputs as an array of exactly 1 value name"),
    "node-no-inputs": (_node(1, inputs=[]), "graph node #1 (relu): expected 1 input(s); found 0"),
    "node-too-many-inputs": (_node(1, inputs=["c", "c"]), "graph node #1 (relu): expected 1 input(s); found 2"),
    "node-input-not-str": (_node(1, inputs=[3]), "graph node #1 (relu) input #0: expected a name of type str; found int"),
    "params-not-map": (_node(4, params=["fc.weight"]), "graph node #4 (linear): expected params as a map"),
    "param-unknown-role": (_set(["nodes", 4, "params", "scale"], "fc.bias"), "graph node #4 (linear): unknown param role 'scale'"),
    "param-missing-weight": (_del(["nodes", 4, "params", "weight"]), "graph node #4 (linear): missing param 'weight'"),
    "param-on-relu": (_set(["nodes", 1, "params", "weight"], "fc.weight"), "graph node #1 (relu): unknown param role 'weight'; expected none"),
    "attrs-not-map": (_node(1, attrs=[]), "graph node #1 (relu): expected attrs as a map"),
    "attr-unknown": (_set(["nodes", 1, "attrs", "inplace"], True), "graph node #1 (relu): unknown attribute 'inplace'"),
    "attr-missing-required": (_del(["nodes", 2, "attrs", "kernel"]), "graph node #2 (max_pool2d): missing required attribute 'kernel'"),
    "attr-short-array": (_set(["nodes", 0, "attrs", "stride"], [1]), "expected attribute 'stride' an array of 2 ints ≥ 1; found array [1]"),
    "attr-zero-stride": (_set(["nodes", 0, "attrs", "stride"], [0, 1]), "expected attribute 'stride' an array of 2 ints ≥ 1"),
    "attr-negative-padding": (_set(["nodes", 0, "attrs", "padding"], [1, 1, -1, 1]), "expected attribute 'padding' an array of 4 ints ≥ 0"),
    "attr-padding-pair": (_set(["nodes", 0, "attrs", "padding"], [1, 1]), "expected attribute 'padding' an array of 4 ints"),
    "attr-groups-str": (_set(["nodes", 0, "attrs", "groups"], "1"), "expected attribute 'groups' an int ≥ 1; found str '1'"),
    "attr-groups-bool": (_set(["nodes", 0, "attrs", "groups"], True), "expected attribute 'groups' an int ≥ 1; found bool True"),
    "attr-groups-huge": (_set(["nodes", 0, "attrs", "groups"], 2**63), "expected attribute 'groups' an int ≥ 1"),
    "attr-ceil-int": (_set(["nodes", 2, "attrs", "ceil_mode"], 1), "expected attribute 'ceil_mode' a bool; found int 1"),
    "attr-slope-int": (_node(1, op="leaky_relu", attrs={"negative_slope": 0}), "expected attribute 'negative_slope' a finite float; found int 0"),
    "attr-slope-nan": (_node(1, op="leaky_relu", attrs={"negative_slope": math.nan}), "expected attribute 'negative_slope' a finite float; found float nan"),
    "attr-gelu-erf": (_node(1, op="gelu", attrs={"approximate": "erf"}), "expected attribute 'approximate' one of ['none', 'tanh']; found str 'erf'"),
    "attr-flatten-dim-range": (_set(["nodes", 3, "attrs", "start_dim"], 40), "expected attribute 'start_dim' an int -32..31; found int 40"),
    # names and order (§10.5 item 4)
    "dangling-input": (_node(1, inputs=["nope"]), "graph node #1 (relu): uses value 'nope', which no graph input or node defines (a dangling name)"),
    "out-of-order": (_swap(0, 1), "graph node #0 (relu): uses value 'c' before it is defined (by node #1)"),
    "self-cycle": (_node(1, inputs=["r"]), "graph node #1 (relu): uses value 'r' before it is defined (by node #1)"),
    "two-cycle": (lambda g: (g["nodes"][1].update(inputs=["p"])), "graph node #1 (relu): uses value 'p' before it is defined (by node #2)"),
    "defined-twice": (_node(1, outputs=["c"]), "graph node #1 (relu): defines value 'c', which is defined twice (already by node #0)"),
    "shadows-input": (_node(0, outputs=["x"]), "graph node #0 (conv2d): defines value 'x', which is defined twice (already by graph input #0)"),
    "duplicate-input": (lambda g: g["inputs"].append(dict(g["inputs"][0])), "graph input #1: value 'x' is defined twice"),
    # parameters (§10.5 item 4)
    "param-missing-tensor": (_set(["nodes", 4, "params", "weight"], "fc.w"), "graph node #4 (linear): expected param 'weight' to name a tensor of the file; found 'fc.w'"),
    "param-int-tensor": (_set(["nodes", 4, "params", "bias"], "steps"), "expected param 'bias' (tensor 'steps') of a float dtype"),
    "param-empty-tensor": (_set(["nodes", 4, "params", "bias"], "empty"), "expected param 'bias' (tensor 'empty') without empty dims"),
    "linear-weight-shape": (_set(["nodes", 4, "params", "weight"], "conv.weight"), "graph node #4 (linear): expected param 'weight' of shape [out_features, 36] (input features 36); found [4, 2, 3, 3]"),
    "linear-bias-shape": (_set(["nodes", 4, "params", "bias"], "conv.bias"), "graph node #4 (linear): expected param 'bias' of shape [5]; found [4]"),
    "conv-weight-rank": (_set(["nodes", 0, "params", "weight"], "fc.weight"), "graph node #0 (conv2d): expected param 'weight' of rank 4"),
    "conv-groups-channels": (_set(["nodes", 0, "attrs", "groups"], 2), "graph node #0 (conv2d): expected param 'weight' of shape [4, 1, 3, 3] (in_channels 2 / groups 2); found [4, 2, 3, 3]"),
    "conv-groups-divide": (_set(["nodes", 0, "attrs", "groups"], 3), "expected in_channels 2 and out_channels 4 divisible by groups 3"),
    "conv-kernel-extent": (_set(["nodes", 0, "attrs", "dilation"], [4, 1]), "graph node #0 (conv2d): expected the padded input (6 + 1 + 1 along height) to cover the kernel extent 9"),
    # shapes (§10.5 item 4)
    "conv-rank": (_set(["inputs", 0, "shape"], [None, 2, 36]), "graph node #0 (conv2d): expected an input of rank 4; found shape [N, 2, 36]"),
    "pool-padding": (_set(["nodes", 2, "attrs", "padding"], [2, 0]), "graph node #2 (max_pool2d): expected padding ≤ kernel / 2 along height; found padding 2, kernel 2"),
    "pool-too-small": (_set(["nodes", 2, "attrs", "kernel"], [7, 2]), "graph node #2 (max_pool2d): expected the input (6 along height, padded by 0 each side) to cover the kernel extent 7"),
    "flatten-batch": (_set(["nodes", 3, "attrs", "start_dim"], 0), "graph node #3 (flatten): expected start_dim not to be the batch dimension 0"),
    "flatten-rank": (_set(["nodes", 3, "attrs", "end_dim"], 4), "graph node #3 (flatten): expected end_dim in -4..3 for an input of rank 4; found 4"),
    "flatten-order": (lambda g: g["nodes"][3]["attrs"].update(start_dim=3, end_dim=2), "expected start_dim ≤ end_dim"),
    "reshape-batch": (_node(3, op="reshape", attrs={"shape": [-1, 36]}), "graph node #3 (reshape): expected shape[0] = 0 (copy the batch dimension); found -1"),
    "reshape-count": (_node(3, op="reshape", attrs={"shape": [0, 35]}), "graph node #3 (reshape): expected shape [0, 35] to hold the 36 elements per sample"),
    "reshape-two-holes": (_node(3, op="reshape", attrs={"shape": [0, -1, -1]}), "at most one -1"),
    "reshape-indivisible": (_node(3, op="reshape", attrs={"shape": [0, -1, 5]}), "divisible by 5"),
    "add-scalar-and-two": (_append(_n("add", ["y", "y"], "z", attrs={"scalar": 1.0})), "graph node #5 (add): expected no attribute 'scalar' with two inputs"),
    "mul-no-scalar": (_append(_n("mul", ["y"], "z")), "graph node #5 (mul): expected attribute 'scalar' with one input; found none"),
    "add-rank": (_append(_n("add", ["c", "y"], "z")), "graph node #5 (add): expected both inputs of the same rank; found [N, 4, 6, 6] and [N, 5]"),
    "add-broadcast": (_append(_n("add", ["c", "p"], "z")), "graph node #5 (add): expected broadcastable inputs (each dim equal or 1); found [N, 4, 6, 6] and [N, 4, 3, 3] at dim 2"),
    "cat-batch": (_append(_n("cat", ["y", "y"], "z", attrs={"dim": 0})), "graph node #5 (cat): expected dim not to be the batch dimension 0"),
    "cat-mismatch": (_append(_n("cat", ["c", "p"], "z", attrs={"dim": 1})), "graph node #5 (cat): expected input #1 to match input #0 [N, 4, 6, 6] in every dim but 1; found [N, 4, 3, 3]"),
    "softmax-batch": (_append(_n("softmax", ["y"], "z", attrs={"dim": -2})), "graph node #5 (softmax): expected dim not to be the batch dimension 0; found -2"),
    "bn-param-shape": (_append(_n("batch_norm", ["y"], "z", {"running_mean": "fc.bias", "running_var": "conv.bias"})), "graph node #5 (batch_norm): expected param 'running_var' of shape [5]; found [4]"),
    "bn-eps-negative": (_append(_n("batch_norm", ["y"], "z", {"running_mean": "fc.bias", "running_var": "fc.bias"}, {"eps": -1.0})), "expected attribute 'eps' a finite float ≥ 0.0; found float -1.0"),
    # outputs (§10.5 item 5)
    "output-dangling": (_set(["outputs", 0, "name"], "logits"), "graph output #0 'logits': expected a value defined by a graph input or node; found none"),
    "output-shape": (_set(["outputs", 0, "shape"], [None, 6]), "graph output #0 'y': expected the declared shape to equal the inferred shape [N, 5]; found [N, 6]"),
    "output-twice": (lambda g: g["outputs"].append(dict(g["outputs"][0])), "graph output #1 'y': expected each output once; found it twice"),
    "output-dtype": (_set(["outputs", 0, "dtype"], "int64"), "graph output #0 'y': expected dtype one of ['float32']"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_graph_rejected_at_load(tmp_path, case):
    mutate, fragment = MALFORMED[case]
    g = copy.deepcopy(base_graph())
    mutate(g)
    p = write(tmp_path / "g.cmz", g)
    with cmodel.open(p) as f:  # a tensor reader does not look inside the graph
        f.verify()
    with pytest.raises(cmodel.CmzError) as e:
        Session(p)
    assert e.value.check == "graph", str(e.value)
    assert fragment in str(e.value)


def test_validate_directly_names_node():
    g = graph_from_header(base_graph())
    g.nodes[4] = Node("linear", ["f"], ["y"], {"weight": "fc.weight"}, {})
    t = base_tensors()
    t["fc.weight"] = np.zeros((5, 35), np.float32)
    with pytest.raises(cmodel.CmzError) as e:
        validate(g, t)
    assert str(e.value) == "graph node #4 (linear): expected param 'weight' of shape [out_features, 36] (input features 36); found [5, 35]"


def test_graph_dataclasses():
    g = Graph([ValueInfo("x", (None, 3))], [ValueInfo("x", (None, 3))], [])
    assert validate(g, {}).shapes == {"x": (None, 3)}  # an output may name an input
    assert graph_to_header(g)["inputs"] == [{"name": "x", "shape": [None, 3], "dtype": "float32"}]


def test_cmz_verify_runs_the_graph_check(tmp_path, capsys):
    from cmodel.cli import main

    assert main(["verify", str(write(tmp_path / "ok.cmz", base_graph()))]) == 0
    assert "a graph of 5 nodes" in capsys.readouterr().out
    g = base_graph()
    g["nodes"][4]["params"]["weight"] = "no.such.weight"  # a dangling parameter name
    assert main(["verify", str(write(tmp_path / "bad.cmz", g))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[check: graph]" in err and "no.such.weight" in err
