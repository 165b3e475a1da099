"""``Session``: load a ``.cmz`` that carries a graph and run it (DESIGN §5).

Loading does all the work that can be done once: every check of spec §7
(CRCs and data checks of every tensor, then the graph), decoding each tensor
once into the form the backend runs on, and preparing one kernel per node.
``run`` then only checks its inputs and calls the kernels in order, so a bad
file fails at load, never at run.

The backend (:mod:`cmodel.runtime.backends`, chosen through its one
registry) decodes the weights and prepares the kernels; see
:class:`cmodel.runtime.backends.base.NumpyBackend` for the interface.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from ..errors import CmzError
from ..format.container import CmzFile
from .backends import DEFAULT_BACKEND, make_backend
from .backends.base import Kernel, NodeInfo
from .graph import Graph, GraphInfo, Node, ValueInfo, graph_from_header, validate

class Session:
    """Run the graph of a ``.cmz`` file on numpy arrays.

    Args:
        path: the file.
        backend: ``'numpy'`` (reference: dense weights), ``'cpu'`` (Numba
            kernels on the compressed weights) or ``'cuda'`` (Numba CUDA
            kernels, :mod:`cmodel.runtime.backends.cuda`); published as
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
