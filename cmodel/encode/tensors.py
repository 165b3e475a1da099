"""Turning user tensors (numpy arrays, torch tensors) into little-endian
bytes plus a format dtype name (spec §5).  torch is never imported here: a
torch tensor is recognised by its type's module and converted through its
own methods.
"""

from __future__ import annotations

import numpy as np

from ..errors import CmzError
from ..format import constants as C

_NUMPY_TO_FORMAT = {
    np.dtype(np.float64): "float64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int16): "int16",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint64): "uint64",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "bool",
}


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def to_numpy(name: str, value) -> tuple[np.ndarray, str]:
    """Return ``(C-contiguous little-endian array, format dtype name)``.

    bfloat16 (a torch tensor, or a numpy array of ``ml_dtypes.bfloat16``)
    comes back as its uint16 bit patterns with dtype name ``"bfloat16"``.

    Raises:
        CmzError: ``check='input'`` for an unsupported type or dtype.
    """
    if _is_torch_tensor(value):
        t = value.detach()
        if getattr(t, "is_sparse", False) or str(getattr(t, "layout", "")) != "torch.strided":
            raise CmzError("input", f"tensor {name!r}: expected a dense (strided) torch tensor; found layout {t.layout}")
        t = t.cpu().contiguous()
        if str(t.dtype) == "torch.bfloat16":
            import torch  # present: we hold one of its tensors

            return t.view(torch.int16).numpy().view(np.uint16).copy(), "bfloat16"
        try:
            value = t.numpy()
        except TypeError as e:
            raise CmzError("input", f"tensor {name!r}: expected a torch dtype with a numpy equivalent in {list(C.DTYPES)}; found {t.dtype} ({e})") from None
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise CmzError("input", f"tensor {name!r}: expected a numpy array or torch tensor; found {type(value).__name__}")
    if value.dtype.name == "bfloat16":  # ml_dtypes
        return value.astype(value.dtype, order="C", copy=False).view(np.uint16).astype("<u2", copy=False), "bfloat16"
    native = value.dtype.newbyteorder("=") if value.dtype.byteorder in "<>" else value.dtype
    fmt = _NUMPY_TO_FORMAT.get(native)
    if fmt is None:
        raise CmzError("input", f"tensor {name!r}: expected dtype one of {list(C.DTYPES)}; found {value.dtype}")
    if value.ndim > C.MAX_NDIM:
        raise CmzError("input", f"tensor {name!r}: expected at most {C.MAX_NDIM} dimensions (MAX_NDIM); found {value.ndim}")
    # astype keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    arr = value.astype(np.dtype(C.DTYPES[fmt][0]), order="C", copy=False)
    return arr, fmt
