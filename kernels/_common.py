"""Shared by the sparse and dense codebook linear kernels: the row epilogue
(``y = scale * acc + bias``) and the wrappers' argument checks (O(1) each:
shapes, dtypes, contiguity; the data itself was validated by the reader)."""

from __future__ import annotations

import numba as nb
import numpy as np

_NO_F32 = np.zeros(0, np.float32)


def _vector(name, a, n):
    if a is None:
        return _NO_F32
    a = np.asarray(a)
    if a.dtype != np.float32 or a.shape != (n,):
        raise ValueError(f"{name}: expected float32[{n}] or None; found {a.dtype}{list(a.shape)}")
    return a


def _operands(x, out, cols_name):
    """(x 2-D, out 2-D, batch, rows, cols) after checking dtypes and shapes."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim in (1, 2) and x.flags.c_contiguous):
        raise ValueError(f"x: expected a C-contiguous float32 array [batch, {cols_name}] or [{cols_name}]; found {getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}")
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == x.ndim and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out: expected a writable C-contiguous float32 array with x's {x.ndim} dims; found {getattr(out, 'dtype', type(out).__name__)} {list(getattr(out, 'shape', []))}")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    out2 = out.reshape(1, -1) if out.ndim == 1 else out
    if out2.shape[0] != x2.shape[0]:
        raise ValueError(f"out: expected batch {x2.shape[0]} (as x); found {out2.shape[0]}")
    return x2, out2, x2.shape[0], out2.shape[1], x2.shape[1]


def _readonly(a):
    """``a`` as a read-only view.

    Numba compiles one specialisation per argument type, at about a second
    each; files give read-only entries and pointers, Huffman decoding writable
    ones.  One type each keeps it to one compile.
    """
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _fill_bias(out2, bias):
    out2[...] = bias if bias.size else 0.0


_NO_U8 = np.zeros(0, np.uint8)


@nb.njit(inline="always")
def _epilogue(acc, scales, bias, i):
    if scales.size:
        acc *= scales[i]
    if bias.size:
        acc += bias[i]
    return acc
