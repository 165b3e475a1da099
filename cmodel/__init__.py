"""cmodel: the ``.cmz`` compressed-model format.

Public API::

    cmodel.save_file(tensors, path, metadata=None)   # write
    cmodel.load_file(path) -> dict[str, np.ndarray]   # read everything
    with cmodel.open(path) as f:                     # lazy, memory-mapped
        f.metadata, f.tensor_names(), f.record(name), f.read(name)

Every problem with a file's content raises :class:`CmzError`.  The format is
specified in ``spec/cmz.md``.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ._version import __version__
from .constants import FORMAT_VERSION
from .container import CmzFile, ContainerWriter
from .errors import CmzError
from .tensors import to_numpy

__all__ = ["CmzError", "CmzFile", "FORMAT_VERSION", "__version__", "load_file", "open", "save_file"]

PRODUCER = {"name": "cmodel", "version": __version__}


def open(path: str | os.PathLike) -> CmzFile:  # noqa: A001 - mirrors safetensors.safe_open
    """Open a ``.cmz`` file for lazy, memory-mapped reading.

    Args:
        path: the file.

    Returns:
        A :class:`CmzFile`; use it as a context manager or call ``close()``.

    Raises:
        CmzError: the file is not a sound ``.cmz`` (structure checks; segment
            CRCs are checked when a tensor is read, or by ``verify()``).
        OSError: the file cannot be opened.

    Example:
        >>> with cmodel.open("model.cmz") as f:          # doctest: +SKIP
        ...     w = f.read("fc1.weight")
    """
    return CmzFile(path)


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.cmz`` file into dense numpy arrays.

    Raises:
        CmzError: the file is not sound.
        OSError: the file cannot be opened.
    """
    with CmzFile(path) as f:
        return {name: f.read(name) for name in f.tensor_names()}


def save_file(tensors: Mapping[str, object], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to ``path`` as a ``.cmz`` file, atomically.

    Args:
        tensors: name → numpy array or torch tensor, kept in the order given.
        path: the target; it is replaced only once the new file is complete.
        metadata: str → str pairs stored in the header.

    Raises:
        CmzError: ``check='input'`` for an unsupported tensor, name or metadata.
    """
    if not isinstance(tensors, Mapping):
        raise CmzError("input", f"tensors: expected a mapping of name to tensor; found {type(tensors).__name__}")
    meta = dict(metadata or {})
    for k, v in meta.items():
        if type(k) is not str or type(v) is not str:
            raise CmzError("input", f"metadata: expected str keys and values; found {type(k).__name__} → {type(v).__name__}")
    w = ContainerWriter(path, metadata=meta, producer=PRODUCER)
    for name, value in tensors.items():
        if type(name) is not str:
            raise CmzError("input", f"tensor names: expected str; found {type(name).__name__} {name!r}")
        arr, dtype = to_numpy(name, value)
        w.add_tensor(name, arr.shape, dtype, "raw", {}, {"data": arr.reshape(-1).view(np.uint8)})
    w.write()
