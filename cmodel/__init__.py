"""cmodel: the ``.cmz`` compressed-model format.

Public API::

    cmodel.save_file(tensors, path, rules=None, metadata=None)   # compress + write
    cmodel.load_file(path) -> dict[str, np.ndarray]   # read everything
    with cmodel.open(path) as f:                     # lazy, memory-mapped
        f.metadata, f.tensor_names(), f.record(name), f.read(name)

Every problem with a file's content raises :class:`CmzError`.  The format is
specified in ``spec/cmz.md``.
"""

from __future__ import annotations

import os
import numpy as np

from ._version import __version__
from .constants import FORMAT_VERSION
from .container import CmzFile
from .encoder import CompressionReport, save_file
from .errors import CmzError

__all__ = ["CmzError", "CmzFile", "CompressionReport", "FORMAT_VERSION", "__version__", "load_file", "open", "save_file"]

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
