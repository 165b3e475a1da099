"""The ``cuda`` backend: Numba CUDA kernels on the compressed weights
(DESIGN §5, issue 5).

``Session(path, backend="cuda")`` runs every node on the device:

* **Weights** are uploaded once, at load, in the packed form the kernels
  read: entries, pointers, codebook and row scales of ``codebook`` and
  ``sparse`` tensors, raw tensors as float32.  No layer is expanded to a
  dense copy on the device either.  Huffman-coded streams are decoded **on
  the host, once**, by the reader, and the packed result is uploaded: the
  reader's spec §6.6 checks (every delta sum inside its row, every code
  inside its codebook) run on the decoded entries before any kernel trusts
  them, and the kernels do no bounds checks.  Decoding on the device
  (:mod:`cmodel.kernels.cuda.huffman`) would either skip those checks or
  copy the entries back to check them; a load is done once per session, so
  the host decode costs nothing per run.  A tensor used by several nodes is
  uploaded once.
* **Activations** stay on the device between layers: every node's kernel
  takes and returns device arrays (:mod:`cmodel.kernels.cuda.conv`,
  ``.sparse_linear``, ``.codebook_linear``, ``.ops``), all launched on the session's one CUDA stream.
* **Inputs**: ``run`` takes numpy arrays (copied to the device once each)
  and any object with ``__cuda_array_interface__`` (numba device arrays,
  PyTorch CUDA tensors, CuPy arrays), used in place without a host copy;
  they must be C-contiguous float32.
* **Outputs**: numpy arrays by default (copied back, the stream
  synchronised); with ``Session(..., device_outputs=True)``, numba device
  arrays (the stream synchronised, so they are ready; none shares memory
  with an input or another output).

Column-order sparse conv weights are re-encoded in row order at load
(still compressed; the conv kernel walks rows), as the cpu backend does;
column-order linear weights run as stored (the EIE kernel skipping zero
activations).

Without numba-cuda or a CUDA device, asking for the backend is a
``CmzError`` (check ``input``) at load.  Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) the backend runs on the CPU, which is how the
tests check it without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from ...format.encodings import Compressed
from ...errors import CmzError
from . import ops_numpy as ops
from .base import NumpyBackend


def _simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def require_cuda():
    """Import ``numba.cuda`` and check for a device (the simulator counts).

    Returns:
        The ``numba.cuda`` module.

    Raises:
        CmzError: check ``input``, naming what is missing.
    """
    if importlib.util.find_spec("numba_cuda") is None:
        raise CmzError("input", "backend 'cuda': expected numba-cuda (pip install 'cmodel-cmz[cuda]'); found it not installed")
    from numba import cuda

    if _simulator():
        return cuda
    try:
        ok = cuda.is_available()
    except Exception as e:  # noqa: BLE001 - any driver failure means "not available"
        raise CmzError("input", f"backend 'cuda': expected a CUDA device and driver; found {type(e).__name__}: {e}") from None
    if not ok:
        raise CmzError("input", "backend 'cuda': expected a CUDA device with an NVIDIA driver for CUDA 13 (R580+); found none (numba.cuda.is_available() is False)")
    return cuda


def _is_cuda_array(x) -> bool:
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


def _span(d):
    """(first, end) device addresses of ``d``'s elements (simulator arrays
    are host memory)."""
    cai = getattr(d, "__cuda_array_interface__", None)
    if cai is not None:
        start = int(cai["data"][0])
    else:
        start = int(np.asarray(d._ary).ctypes.data)  # the simulator's stand-in
    return start, start + int(np.prod(d.shape, dtype=np.int64)) * np.dtype(d.dtype).itemsize


class CudaBackend(NumpyBackend):
    """Numba CUDA kernels on compressed weights; see the module docstring.

    Attributes:
        stream: the CUDA stream every kernel of the session runs on.
        device_outputs: when True, ``run`` returns device arrays.
    """

    name = "cuda"
    keep_compressed = True
    input_kind = "a numpy array or a CUDA array (__cuda_array_interface__)"

    def __init__(self):
        super().__init__()
        self.cuda = require_cuda()
        from ...kernels.cuda import codebook_linear, conv, ops as dops, sparse_linear  # numba-cuda present: import the twins

        self._conv, self._ops = conv, dops
        self._sparse_linear, self._codebook_linear = sparse_linear, codebook_linear
        self.stream = self.cuda.stream()
        self.device_outputs = False
        self._uploaded: dict[int, object] = {}  # id(host object) -> device form
        self._device: list = []  # every device array the session holds (weight_bytes)

    # -- weights -----------------------------------------------------------------

    def _up(self, a, dtype=None):
        """``a`` (a host array) on the device, uploaded once per object."""
        if a is None:
            return None
        key = id(a)
        if key not in self._uploaded:
            h = np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype))
            d = self.cuda.to_device(h, stream=self.stream)
            self._uploaded[key] = (a, d)  # keep ``a`` alive: ids stay unique
            self._device.append(d)
        return self._uploaded[key][1]

    def _weight(self, w: Compressed):
        """The device arrays of a compressed weight (entries, pointers,
        codebook, scales)."""
        return (self._up(w.entries), self._up(w.pointers), self._up(w.codebook, np.float32),
                self._up(w.scales, np.float32))

    def _bias(self, params):
        return self._up(self.dense(params["bias"]), np.float32) if "bias" in params else None

    def weight_bytes(self) -> int:
        """Bytes of the weights held on the device (packed entries,
        pointers, codebooks, scales, raw tensors)."""
        return sum(int(np.prod(d.shape, dtype=np.int64)) * np.dtype(d.dtype).itemsize for d in self._device)

    # -- run inputs and outputs ------------------------------------------------------

    def accept_input(self, x):
        if isinstance(x, np.ndarray):
            if x.dtype != np.float32:
                return x  # Session reports the dtype
            return self.cuda.to_device(np.ascontiguousarray(x), stream=self.stream)
        if not _is_cuda_array(x):
            return None
        d = x if getattr(x, "__cuda_ndarray__", False) else self.cuda.as_cuda_array(x)
        if d.size and not d.is_c_contiguous():
            raise CmzError("input", f"inputs: expected C-contiguous CUDA arrays; found a strided {np.dtype(d.dtype)} array of shape {tuple(d.shape)}")
        return d

    def finish_outputs(self, ys, xs):
        s = self.stream
        if not self.device_outputs:
            out = [y.copy_to_host(stream=s) for y in ys]
            s.synchronize()
            return out
        out, spans = [], [_span(x) for x in xs]
        for y in ys:
            a, b = _span(y)
            if any(a < e and f < b for f, e in spans):  # shares memory with an input or an earlier output
                c = self.cuda.device_array(y.shape, np.float32, stream=s)
                c.copy_to_device(y, stream=s)
                y = c
                a, b = _span(y)
            spans.append((a, b))
            out.append(y)
        s.synchronize()
        return out

    # -- nodes -----------------------------------------------------------------------

    def prepare(self, node, params, info):
        # Every op has a device kernel here; an inherited numpy kernel would
        # be handed device arrays.
        if "prepare_" + node.op not in CudaBackend.__dict__:
            raise CmzError("graph", f"graph node #{info.index} ({node.op}): expected an op backend 'cuda' implements; found none")
        return super().prepare(node, params, info)

    def prepare_linear(self, node, params, info):
        w, b, s = params["weight"], self._bias(params), self.stream
        if not isinstance(w, Compressed):
            wd = self._up(w, np.float32)
            return lambda xs: [self._ops.linear(xs[0], wd, b, stream=s)]
        ent, ptr, cb, sc = self._weight(w)

        def run(xs):
            x = xs[0]
            shape = tuple(int(v) for v in x.shape)
            x2 = x.reshape(int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])
            out = self.cuda.device_array((x2.shape[0], w.rows), np.float32, stream=s)
            if w.encoding == "sparse":
                self._sparse_linear.sparse_matmul(ent, w.n_entries, w.width, w.index_bits, ptr, cb, sc, b, x2, out, w.order, stream=s)
            else:
                self._codebook_linear.codebook_matmul(ent, w.bits, cb, sc, b, x2, out, stream=s)
            return [out.reshape(*shape[:-1], w.rows)]

        return run

    def prepare_conv2d(self, node, params, info):
        from .cpu import _row_order

        w, b, s, C = params["weight"], self._bias(params), self.stream, self._conv
        a = node.attrs
        stride, padding, dilation, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
        oh, ow = info.output[2], info.output[3]
        if not isinstance(w, Compressed):
            wd = self._up(w, np.float32)
            k_out = int(w.shape[0])
        else:
            if w.encoding == "sparse" and w.order == "col":
                w = _row_order(w)
            ent, ptr, cb, sc = self._weight(w)
            k_out, ksize = w.rows, tuple(w.shape[2:4])

        def run(xs):
            x = xs[0]
            out = self.cuda.device_array((int(x.shape[0]), k_out, oh, ow), np.float32, stream=s)
            if not isinstance(w, Compressed):
                C.dense_conv2d(wd, b, x, out, stride, padding, dilation, groups, stream=s)
            elif w.encoding == "sparse":
                C.sparse_conv2d(ent, w.n_entries, w.width, w.index_bits, ptr, cb, sc, b, x, out, ksize, stride,
                                padding, dilation, groups, stream=s)
            else:
                C.codebook_conv2d(ent, w.bits, cb, sc, b, x, out, ksize, stride, padding, dilation, groups, stream=s)
            return [out]

        return run

    def prepare_batch_norm(self, node, params, info):
        d = {r: self.dense(params[r]) if r in params else None for r in ("running_mean", "running_var", "weight", "bias")}
        scale, shift = ops.batch_norm_coefficients(d["running_mean"], d["running_var"], d["weight"], d["bias"], node.attrs["eps"])
        sd, hd, s = self._up(scale), self._up(shift), self.stream
        return lambda xs: [self._ops.scale_shift(xs[0], sd, hd, stream=s)]

    def _op(name, *attrs):  # noqa: N805 - a factory used in the class body
        """prepare_<name>: the device op of the same name on the first input,
        with ``attrs`` taken from the node."""

        def prepare(self, node, params, info):
            fn, s = getattr(self._ops, name), self.stream
            args = tuple(tuple(v) if isinstance(v, list) else v for v in (node.attrs[k] for k in attrs))
            return lambda xs: [fn(xs[0], *args, stream=s)]

        return prepare

    prepare_relu = _op("relu")
    prepare_relu6 = _op("relu6")
    prepare_sigmoid = _op("sigmoid")
    prepare_tanh = _op("tanh")
    prepare_silu = _op("silu")
    prepare_hardswish = _op("hardswish")
    prepare_hardsigmoid = _op("hardsigmoid")
    prepare_dropout = _op("identity")
    prepare_identity = _op("identity")
    prepare_leaky_relu = _op("leaky_relu", "negative_slope")
    prepare_gelu = _op("gelu", "approximate")
    prepare_max_pool2d = _op("max_pool2d", "kernel", "stride", "padding", "dilation", "ceil_mode")
    prepare_avg_pool2d = _op("avg_pool2d", "kernel", "stride", "padding", "ceil_mode", "count_include_pad")
    prepare_adaptive_avg_pool2d = _op("adaptive_avg_pool2d", "output_size")
    prepare_flatten = _op("flatten", "start_dim", "end_dim")
    del _op

    def prepare_reshape(self, node, params, info):
        shape, s = info.output, self.stream  # resolved: [None, d1, d2, ...]
        return lambda xs: [self._ops.reshape(xs[0], shape, stream=s)]

    def _binary(name):  # noqa: N805
        def prepare(self, node, params, info):
            fn, s, k = getattr(self._ops, name), self.stream, node.attrs.get("scalar")
            if k is None:
                return lambda xs: [fn(xs[0], xs[1], stream=s)]
            return lambda xs: [fn(xs[0], scalar=k, stream=s)]

        return prepare

    prepare_add = _binary("add")
    prepare_mul = _binary("mul")
    del _binary

    def prepare_cat(self, node, params, info):
        dim, s = node.attrs["dim"] % len(info.output), self.stream
        return lambda xs: [self._ops.cat(xs, dim, stream=s)]

    def prepare_softmax(self, node, params, info):
        dim, s = node.attrs["dim"] % len(info.output), self.stream
        return lambda xs: [self._ops.softmax(xs[0], dim, stream=s)]

    def prepare_log_softmax(self, node, params, info):
        dim, s = node.attrs["dim"] % len(info.output), self.stream
        return lambda xs: [self._ops.log_softmax(xs[0], dim, stream=s)]
