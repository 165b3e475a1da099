"""The backend interface and the reference backend (DESIGN §5).

A backend is a small object: ``load_tensor`` turns a tensor of the file into
what its kernels use, and ``prepare_<op>`` methods turn one node into a
kernel, a callable ``kernel(list of arrays) -> list of arrays``.
:class:`NumpyBackend` is the reference (dense weights, the functions of
:mod:`cmodel.runtime.backends.ops_numpy`) and the oracle every other backend
is tested against; a faster backend subclasses it and overrides only what it
speeds up (``load_tensor`` with ``keep_compressed = True``,
``prepare_linear``, ``prepare_conv2d``).

Imports: numpy, :mod:`cmodel.format`, :mod:`cmodel.errors` and the graph
types; never :mod:`cmodel.runtime.session` nor another backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import CmzError
from ...format.container import CmzFile
from ...format.encodings import Compressed
from ..graph import Node, Shape
from . import ops_numpy as ops


Kernel = Callable[[list], list]


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
            ``sparse`` tensors as :class:`cmodel.format.encodings.Compressed`
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
