"""``Session``: load a ``.cmz`` that carries a graph and run it (DESIGN §5).

Loading does all the work that can be done once: every check of spec §7
(CRCs and data checks of every tensor, then the graph), decoding each tensor
once into the form the backend runs on, and preparing one kernel per node.
``run`` then only checks its inputs and calls the kernels in order, so a bad
file fails at load, never at run.

A backend is a small object (see :class:`NumpyBackend`): ``load_tensor``
turns a tensor of the file into what its kernels use, and ``prepare_<op>``
methods turn one node into a kernel, a callable ``kernel(list of arrays) ->
list of arrays``.  ``NumpyBackend`` is the reference (dense weights, the
functions of :mod:`cmodel.runtime.ops_numpy`); a faster backend subclasses it
and overrides only what it speeds up (``load_tensor`` with
``keep_compressed = True``, ``prepare_linear``, ``prepare_conv2d``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..container import CmzFile
from ..encodings import Compressed
from ..errors import CmzError
from . import ops_numpy as ops
from .graph import Graph, GraphInfo, Node, Shape, ValueInfo, graph_from_header, validate

Kernel = Callable[[list], list]

# The backend ``Session`` uses when none is named (DESIGN §5).
DEFAULT_BACKEND = "cpu"


@dataclass(frozen=True)
class NodeInfo:
    """What a backend knows about a node when it prepares it: its index in
    the graph and its input and output shapes (``None`` at index 0: the batch
    size, known only at run time)."""

    index: int
    inputs: tuple[Shape, ...]
    output: Shape


def _nbytes(obj) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, Compressed):
        return sum(a.nbytes for a in (obj.codebook, obj.scales, obj.pointers, obj.entries) if a is not None)
    return 0


class NumpyBackend:
    """The reference backend: dense float32 weights and numpy ops.

    Subclass hooks:
        keep_compressed: when True, ``load_tensor`` returns ``codebook`` and
            ``sparse`` tensors as :class:`cmodel.encodings.Compressed`
            (Huffman decoded once into packed entries) instead of dense
            arrays; the inherited ``prepare_*`` methods densify what they
            get through :meth:`dense`, so only the overridden ones see the
            compressed form.
        prepare_<op>(node, params, info) -> kernel: ``params`` maps the
            node's parameter roles to loaded tensors (an ndarray or a
            Compressed), ``info`` is a :class:`NodeInfo`; the kernel takes
            the list of input arrays and returns the list of output arrays.
            Kernels must not write to their inputs.
        keep(obj): call on every weight object a kernel holds, so that
            :meth:`weight_bytes` counts it.
        accept_input(x) / finish_outputs(ys, xs): how ``run`` takes its
            inputs and returns its outputs (a device backend takes device
            arrays and copies its outputs back); see their docstrings.
    """

    name = "numpy"
    keep_compressed = False

    def __init__(self):
        self._held: dict[int, object] = {}

    # -- weights -------------------------------------------------------------

    def load_tensor(self, f: CmzFile, name: str):
        """Run the tensor's CRC and data checks and decode it, once per
        session: a float32 array, or (``keep_compressed``) a Compressed for
        ``codebook``/``sparse`` tensors."""
        if f.record(name).encoding == "raw":
            return np.ascontiguousarray(f.read(name), dtype=np.float32)
        c = f.read_compressed(name)
        if self.keep_compressed:
            return c
        return np.ascontiguousarray(c.dense(), dtype=np.float32)

    def dense(self, w) -> np.ndarray:
        """A loaded tensor as a dense float32 array."""
        if isinstance(w, Compressed):
            return np.ascontiguousarray(w.dense(), dtype=np.float32)
        return w

    def keep(self, obj):
        self._held[id(obj)] = obj
        return obj

    def weight_bytes(self) -> int:
        return sum(_nbytes(o) for o in self._held.values())

    # -- run inputs and outputs ------------------------------------------------

    # What ``accept_input`` takes, for the Session's error message.
    input_kind = "a numpy array"

    def accept_input(self, x):
        """One run input as the array the kernels take (Session then checks
        its dtype and shape), or None when the backend cannot take it."""
        return x if isinstance(x, np.ndarray) else None

    def finish_outputs(self, ys: list, xs: list) -> list:
        """The graph outputs as ``run`` returns them: C-contiguous float32
        arrays, none sharing memory with an input or another output."""
        out = []
        for y in ys:
            y = np.ascontiguousarray(y, dtype=np.float32)
            if any(np.may_share_memory(y, x) for x in xs) or any(y is o for o in out):
                y = y.copy()
            out.append(y)
        return out

    def _param(self, params, role):
        return self.keep(self.dense(params[role])) if role in params else None

    # -- nodes -----------------------------------------------------------------

    def prepare(self, node: Node, params: dict, info: NodeInfo) -> Kernel:
        """One kernel for ``node``: dispatches to ``prepare_<op>``."""
        fn = getattr(self, "prepare_" + node.op, None)
        if fn is None:
            raise CmzError("graph", f"graph node #{info.index} ({node.op}): expected an op backend {self.name!r} implements; found none")
        return fn(node, params, info)

    def prepare_linear(self, node, params, info):
        w, b = self._param(params, "weight"), self._param(params, "bias")
        return lambda xs: [ops.linear(xs[0], w, b)]

    def prepare_conv2d(self, node, params, info):
        w, b = self._param(params, "weight"), self._param(params, "bias")
        a = node.attrs
        stride, padding, dilation, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
        return lambda xs: [ops.conv2d(xs[0], w, b, stride, padding, dilation, groups)]

    def prepare_batch_norm(self, node, params, info):
        d = {r: self.dense(params[r]) if r in params else None for r in ("running_mean", "running_var", "weight", "bias")}
        scale, shift = ops.batch_norm_coefficients(d["running_mean"], d["running_var"], d["weight"], d["bias"], node.attrs["eps"])
        self.keep(scale), self.keep(shift)
        return lambda xs: [ops.scale_shift(xs[0], scale, shift)]

    def _unary(fn):  # noqa: N805 - a decorator factory used in the class body
        def prepare(self, node, params, info):
            return lambda xs: [fn(xs[0])]

        return prepare

    prepare_relu = _unary(ops.relu)
    prepare_relu6 = _unary(ops.relu6)
    prepare_sigmoid = _unary(ops.sigmoid)
    prepare_tanh = _unary(ops.tanh)
    prepare_silu = _unary(ops.silu)
    prepare_hardswish = _unary(ops.hardswish)
    prepare_hardsigmoid = _unary(ops.hardsigmoid)
    prepare_dropout = _unary(ops.identity)
    prepare_identity = _unary(ops.identity)
    del _unary

    def prepare_leaky_relu(self, node, params, info):
        slope = node.attrs["negative_slope"]
        return lambda xs: [ops.leaky_relu(xs[0], slope)]

    def prepare_gelu(self, node, params, info):
        approximate = node.attrs["approximate"]
        return lambda xs: [ops.gelu(xs[0], approximate)]

    def prepare_max_pool2d(self, node, params, info):
        a = node.attrs
        args = (tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["ceil_mode"])
        return lambda xs: [ops.max_pool2d(xs[0], *args)]

    def prepare_avg_pool2d(self, node, params, info):
        a = node.attrs
        args = (tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), a["ceil_mode"], a["count_include_pad"])
        return lambda xs: [ops.avg_pool2d(xs[0], *args)]

    def prepare_adaptive_avg_pool2d(self, node, params, info):
        _, _, h, w = info.inputs[0]
        oh, ow = node.attrs["output_size"]
        bounds = (ops.adaptive_bounds(h, oh), ops.adaptive_bounds(w, ow))
        return lambda xs: [ops.adaptive_avg_pool2d(xs[0], (oh, ow), bounds)]

    def prepare_flatten(self, node, params, info):
        s, e = node.attrs["start_dim"], node.attrs["end_dim"]
        return lambda xs: [ops.flatten(xs[0], s, e)]

    def prepare_reshape(self, node, params, info):
        shape = info.output  # resolved: [None, d1, d2, ...]
        return lambda xs: [ops.reshape(xs[0], shape)]

    def prepare_add(self, node, params, info):
        s = node.attrs.get("scalar")
        if s is None:
            return lambda xs: [ops.add(xs[0], xs[1])]
        return lambda xs: [ops.add(xs[0], scalar=s)]

    def prepare_mul(self, node, params, info):
        s = node.attrs.get("scalar")
        if s is None:
            return lambda xs: [ops.mul(xs[0], xs[1])]
        return lambda xs: [ops.mul(xs[0], scalar=s)]

    def prepare_cat(self, node, params, info):
        dim = node.attrs["dim"] % len(info.output)
        return lambda xs: [ops.cat(xs, dim)]

    def prepare_softmax(self, node, params, info):
        dim = node.attrs["dim"] % len(info.output)
        return lambda xs: [ops.softmax(xs[0], dim)]

    def prepare_log_softmax(self, node, params, info):
        dim = node.attrs["dim"] % len(info.output)
        return lambda xs: [ops.log_softmax(xs[0], dim)]


def _cpu():
    from .cpu import CpuBackend  # imports the Numba kernels only when asked for

    return CpuBackend()


def _cuda():
    from .cuda import CudaBackend  # numba-cuda only when asked for; raises CmzError without a GPU

    return CudaBackend()


# Backend name → factory.  The one place backends are chosen (STYLE: "backends
# chosen in one place, the choice published, unknown values fail loudly").
BACKENDS: dict[str, Callable[[], NumpyBackend]] = {
    "cpu": _cpu,
    "cuda": _cuda,
    "numpy": NumpyBackend,
}


def make_backend(name: str) -> NumpyBackend:
    """The backend object for ``name``.

    Raises:
        CmzError: check ``input``: an unknown or unavailable backend.
    """
    if type(name) is not str or name not in BACKENDS:
        raise CmzError("input", f"backend: expected one of {sorted(BACKENDS)}; found {name!r}")
    return BACKENDS[name]()


class Session:
    """Run the graph of a ``.cmz`` file on numpy arrays.

    Args:
        path: the file.
        backend: ``'numpy'`` (reference: dense weights), ``'cpu'`` (Numba
            kernels on the compressed weights) or ``'cuda'`` (Numba CUDA
            kernels, :mod:`cmodel.runtime.cuda`); published as
            ``session.backend``.
        device_outputs: (``'cuda'`` only) ``run`` returns numba device
            arrays instead of numpy arrays.

    Raises:
        CmzError: the file fails a check of spec §7, including ``graph``
            (a file without a graph fails that check too); check ``input``
            for an unknown backend.
        OSError: the file cannot be opened.

    Example:
        >>> with Session("lenet.cmz") as s:                       # doctest: +SKIP
        ...     (logits,) = s.run(np.zeros((4, 1, 28, 28), np.float32))
    """

    def __init__(self, path: str | os.PathLike, backend: str = DEFAULT_BACKEND, *, device_outputs: bool = False):
        impl = make_backend(backend)
        if device_outputs:
            if not hasattr(impl, "device_outputs"):
                raise CmzError("input", f"device_outputs: expected False for backend {impl.name!r} (only a device backend returns device arrays); found {device_outputs!r}")
            impl.device_outputs = True
        self.backend: str = impl.name
        self._impl = impl
        self.path = os.fspath(path)
        self._file: CmzFile | None = None
        self._file = CmzFile(self.path)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        f = self._file
        header_graph = f.graph
        if header_graph is None:
            raise CmzError("graph", "expected a graph in the header to run (spec §10); found none (a weights-only file: read it with cmodel.load_file)")
        # Spec §7 order: the data-stage checks of every tensor, in file
        # order, then the graph.  Each tensor is decoded once, here.
        loaded = {name: self._impl.load_tensor(f, name) for name in f.tensor_names()}
        graph = graph_from_header(header_graph)
        info = validate(graph, {name: f.record(name) for name in f.tensor_names()})
        self.graph: Graph = graph
        self.info: GraphInfo = info
        self._plan(graph, info, loaded)

    def _plan(self, graph: Graph, info: GraphInfo, loaded: dict) -> None:
        # Only nodes that an output depends on run.
        needed = {v.name for v in graph.outputs}
        live_nodes = []
        for i in range(len(graph.nodes) - 1, -1, -1):
            n = graph.nodes[i]
            if any(v in needed for v in n.outputs):
                needed.update(n.inputs)
                live_nodes.append(i)
        live_nodes.reverse()
        slot = {v.name: k for k, v in enumerate(graph.inputs)}
        for i in live_nodes:
            for v in graph.nodes[i].outputs:
                slot[v] = len(slot)
        last_use = {}
        for step, i in enumerate(live_nodes):
            for v in graph.nodes[i].inputs:
                last_use[slot[v]] = step
        keep = {slot[v.name] for v in graph.outputs}
        steps = []
        self._nodes: list[Node] = []
        for step, i in enumerate(live_nodes):
            n = graph.nodes[i]
            params = {role: loaded[name] for role, name in n.params.items()}
            kernel = self._impl.prepare(n, params, NodeInfo(i, tuple(info.shapes[v] for v in n.inputs), info.shapes[n.outputs[0]]))
            ins = tuple(slot[v] for v in n.inputs)
            outs = tuple(slot[v] for v in n.outputs)
            free = tuple(sorted({s for s in ins if last_use.get(s) == step and s not in keep and s >= len(graph.inputs)}))
            steps.append((kernel, ins, outs, free))
            self._nodes.append(n)
        self._steps = steps
        self._n_slots = len(slot)
        self._out_slots = [slot[v.name] for v in graph.outputs]

    # -- public ------------------------------------------------------------------

    @property
    def inputs(self) -> list[ValueInfo]:
        """The graph inputs: name, shape (``None`` = any batch) and dtype."""
        return list(self.graph.inputs)

    @property
    def outputs(self) -> list[ValueInfo]:
        return list(self.graph.outputs)

    @property
    def metadata(self) -> dict[str, str]:
        return self._file.metadata

    def kernels(self) -> list[tuple[Node, Kernel]]:
        """``(node, kernel)`` for every node that runs, in run order (nodes no
        graph output depends on are left out); ``kernel(list of input
        arrays) -> list of output arrays``.  For benchmarks and debugging."""
        return [(n, step[0]) for n, step in zip(self._nodes, self._steps)]

    def weight_bytes(self) -> int:
        """Bytes of weights the session holds (numpy backend: the dense
        float32 arrays; compressed backends: codebooks, scales, pointers and
        entries)."""
        return self._impl.weight_bytes()

    def _check_inputs(self, inputs) -> list[np.ndarray]:
        specs = self.graph.inputs
        if isinstance(inputs, np.ndarray) or hasattr(inputs, "__cuda_array_interface__") or getattr(inputs, "__cuda_ndarray__", False):
            inputs = [inputs]  # one array (a CUDA array too: the backend decides whether it takes it)
        elif isinstance(inputs, Mapping):
            names = [v.name for v in specs]
            extra = sorted(k for k in inputs if k not in names)
            missing = [k for k in names if k not in inputs]
            if extra or missing:
                raise CmzError("input", f"inputs: expected arrays for {names}; found {'no ' + repr(missing[0]) if missing else 'unknown ' + repr(extra[0])}")
            inputs = [inputs[k] for k in names]
        elif not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
            raise CmzError("input", f"inputs: expected a numpy array or a list of {len(specs)}; found {type(inputs).__name__}")
        if len(inputs) != len(specs):
            raise CmzError("input", f"inputs: expected {len(specs)} array(s), one per graph input {[v.name for v in specs]}; found {len(inputs)}")
        batch = None
        checked = []
        for x, v in zip(inputs, specs):
            want = "[N, " + ", ".join(map(str, v.shape[1:])) + "]" if len(v.shape) > 1 else "[N]"
            a = self._impl.accept_input(x)
            if a is None:
                raise CmzError("input", f"input {v.name!r}: expected {self._impl.input_kind} of shape {want} (any N ≥ 1), float32; found {type(x).__name__}")
            x = a
            if x.dtype != np.float32:
                raise CmzError("input", f"input {v.name!r}: expected dtype float32; found {x.dtype}")
            if x.ndim != len(v.shape) or tuple(x.shape[1:]) != tuple(v.shape[1:]) or x.shape[0] < 1:
                raise CmzError("input", f"input {v.name!r}: expected shape {want} (any N ≥ 1); found {list(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise CmzError("input", f"input {v.name!r}: expected the batch size {batch} of the first input; found {x.shape[0]}")
            batch = x.shape[0]
            checked.append(x)
        return checked

    def run(self, inputs) -> list[np.ndarray]:
        """Run the graph.

        Args:
            inputs: one float32 array per graph input (a single array when
                there is one input, a list in graph order, or a dict by
                input name), each of the input's shape with any batch
                size N ≥ 1 (the same N for all).

        Returns:
            One float32 array per graph output, in order, each with the
            batch size of the inputs.

        Raises:
            CmzError: check ``input``: an input of the wrong number, type,
                dtype or shape (the message names the input).
        """
        if self._file is None:
            raise ValueError(f"{self.path}: the session is closed")
        xs = self._check_inputs(inputs)
        vals: list = [None] * self._n_slots
        vals[: len(xs)] = xs
        for kernel, ins, outs, free in self._steps:
            res = kernel([vals[s] for s in ins])
            for s, r in zip(outs, res):
                vals[s] = r
            for s in free:
                vals[s] = None
        return self._impl.finish_outputs([vals[s] for s in self._out_slots], xs)

    def close(self) -> None:
        """Release the file (the mapping is unmapped once no array views it)."""
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.path!r}, backend={self.backend!r})"
