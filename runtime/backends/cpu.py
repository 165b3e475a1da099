"""The ``cpu`` backend: Numba kernels on the compressed weights (DESIGN §5).

Linear and conv2d run on the packed entries of ``codebook`` and ``sparse``
tensors as the file stores them (Huffman streams decoded once at load into
packed entries); no layer's weights are ever expanded to a dense copy.  Raw
weights use BLAS (linear) and the im2col GEMM kernel (conv).  Every other op
is the numpy reference's.
"""

from __future__ import annotations

import numpy as np

from ...codecs import entries as _sparse
from ...format.encodings import Compressed
from ...kernels import codebook_linear as _codebook, conv as _conv, sparse_linear as _sparse_linear
from . import ops_numpy as ops
from .base import NumpyBackend


def _row_order(w: Compressed) -> Compressed:
    """A column-order sparse weight re-encoded in row order (what the conv
    kernel walks); still compressed, done once at load."""
    d, c = _sparse.unpack_entries(w.entries, w.n_entries, w.index_bits, w.bits)
    codes = _sparse.relative_index_decode(w.pointers, d, c, (w.rows, w.cols), w.index_bits, "col")
    p, d, c = _sparse.relative_index_encode(codes, w.index_bits, "row")
    entries = _sparse.pack_entries(d, c, w.index_bits, w.bits)
    return Compressed(w.name, w.shape, w.dtype, w.encoding, w.rows, w.cols, w.bits, w.index_bits, "row", w.codebook, w.scales, p, entries, int(d.size))


class CpuBackend(NumpyBackend):
    """Numba kernels on compressed weights; see the module docstring."""

    name = "cpu"
    keep_compressed = True

    def _bias(self, params):
        return self.keep(np.ascontiguousarray(self.dense(params["bias"]), np.float32)) if "bias" in params else None

    def prepare_linear(self, node, params, info):
        w, b = params["weight"], self._bias(params)
        if not isinstance(w, Compressed):
            w = self.keep(np.ascontiguousarray(w, np.float32))
            return lambda xs: [ops.linear(xs[0], w, b)]
        self.keep(w)

        def run(xs):
            x = xs[0]
            lead = x.shape[:-1]
            x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), np.float32)
            out = np.empty((x2.shape[0], w.rows), np.float32)
            if w.encoding == "sparse":
                _sparse_linear.sparse_matmul(w.entries, w.n_entries, w.width, w.index_bits, w.pointers, w.codebook, w.scales, b, x2, out, w.order)
            else:
                _codebook.codebook_matmul(w.entries, w.bits, w.codebook, w.scales, b, x2, out)
            return [out.reshape(*lead, w.rows)]

        return run

    def prepare_conv2d(self, node, params, info):
        w, b = params["weight"], self._bias(params)
        a = node.attrs
        stride, padding, dilation, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
        if isinstance(w, Compressed):
            if w.encoding == "sparse" and w.order == "col":
                w = _row_order(w)
            self.keep(w)
            ksize = tuple(w.shape[2:4])
            k_out = w.rows
        else:
            w = self.keep(np.ascontiguousarray(w, np.float32))
            k_out = w.shape[0]

        def run(xs):
            x = np.ascontiguousarray(xs[0], np.float32)
            n, _, h, wd = x.shape
            oh, ow = info.output[2], info.output[3]
            out = np.empty((n, k_out, oh, ow), np.float32)
            if not isinstance(w, Compressed):
                _conv.dense_conv2d(w, b, x, out, stride, padding, dilation, groups)
            elif w.encoding == "sparse":
                _conv.sparse_conv2d(w.entries, w.n_entries, w.width, w.index_bits, w.pointers, w.codebook, w.scales, b, x, out, ksize, stride, padding, dilation, groups)
            else:
                _conv.codebook_conv2d(w.entries, w.bits, w.codebook, w.scales, b, x, out, ksize, stride, padding, dilation, groups)
            return [out]

        return run
