"""Tensor encodings (spec §6): one class per encoding, registered by name.

An encoding knows how to check a record's sizes against its shape and dtype
(before any data is read), how to check its data once the segment CRCs have
been verified, and how to decode it to a dense numpy array.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import constants as C
from .errors import CmzError
from .header import TensorRecord

# A function returning the CRC-verified bytes of one segment of a record.
SegmentBytes = Callable[[TensorRecord, str], memoryview]

REGISTRY: dict[str, "Encoding"] = {}


def register(cls):
    REGISTRY[cls.name] = cls()
    return cls


class Encoding:
    name = ""

    def check_record(self, rec: TensorRecord) -> None:
        """Check sizes implied by shape/dtype/params; no data is read."""
        raise NotImplementedError

    def check_data(self, rec: TensorRecord, seg: SegmentBytes) -> None:
        """Check the content of CRC-verified segments."""
        raise NotImplementedError

    def decode(self, rec: TensorRecord, seg: SegmentBytes) -> np.ndarray:
        """Return the dense tensor (after ``check_data``)."""
        raise NotImplementedError


def storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(C.DTYPES[dtype][0])


@register
class Raw(Encoding):
    """Little-endian C-order bytes of the tensor (spec §6.1)."""

    name = "raw"

    def check_record(self, rec):
        expected = rec.numel * C.DTYPES[rec.dtype][1]
        found = rec.segments["data"].length
        if found != expected:
            raise CmzError(
                "segment",
                f"tensor {rec.name!r}: expected a data segment of {expected} bytes "
                f"(shape {list(rec.shape)}, {rec.dtype}); found {found}",
            )

    def check_data(self, rec, seg):
        if rec.dtype == "bool":
            a = np.frombuffer(seg(rec, "data"), dtype=np.uint8)
            bad = [(int(i), int(a[i])) for i in np.flatnonzero(a > 1)[:1]]
            del a  # a view into the map: must not outlive this frame in a traceback
            if bad:
                i, v = bad[0]
                raise CmzError("data", f"tensor {rec.name!r}: expected bool bytes 0 or 1; found {v} at element {i}")

    def decode(self, rec, seg):
        a = np.frombuffer(seg(rec, "data"), dtype=storage_dtype(rec.dtype))
        if rec.dtype == "bfloat16":
            out = (a.astype(np.uint32) << 16).view(np.float32)
        elif rec.dtype == "bool":
            out = a.view(np.bool_).copy()
        else:
            out = a.astype(a.dtype.newbyteorder("="), copy=True)
        return out.reshape(rec.shape)
