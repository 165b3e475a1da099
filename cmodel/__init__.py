"""cmodel: the ``.cmz`` compressed-model format.

Public API::

    cmodel.save_file(tensors, path, rules=None, metadata=None)   # compress + write
    cmodel.save_model(module, example_input, path)   # capture graph + weights (torch)
    cmodel.load_file(path) -> dict[str, np.ndarray]   # read everything
    with cmodel.open(path) as f:                     # lazy, memory-mapped
        f.metadata, f.tensor_names(), f.record(name), f.read(name)

Every problem with a file's content raises :class:`CmzError`.  The format is
specified in ``spec/cmz.md``.

Layout, one package per concern (DESIGN §1; ``tests/test_layering.py``
enforces who may import whom):

* :mod:`cmodel.format` — the container of the spec: constants, header,
  reader/writer, encodings;
* :mod:`cmodel.codecs` — Huffman, relative-index entries, k-means and pruning;
* :mod:`cmodel.encode` — rules, plan, encoder, report, checkpoint files;
* :mod:`cmodel.train` — pruning with retraining, sensitivity, trained
  quantisation, datasets, the demo pipeline (torch);
* :mod:`cmodel.runtime` — graph, capture, ``Session`` and its backends;
* :mod:`cmodel.kernels` — Numba CPU and CUDA kernels (import nothing of cmodel);
* :mod:`cmodel.bench` — benchmarks; :mod:`cmodel.cli` — the ``cmz`` command.
"""

from __future__ import annotations

import os
import numpy as np

from . import _moved
from ._version import __version__
from .encode import CompressionReport, save_file
from .errors import CmzError
from .format.constants import FORMAT_VERSION
from .format.container import CmzFile

_moved.install()  # the flat layout's module paths (cmodel.encoder, ...) still import

__all__ = ["CmzError", "CmzFile", "CompressionReport", "FORMAT_VERSION", "__version__", "load_file", "open", "save_file", "save_model"]

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


def save_model(module, example_input, path: str | os.PathLike, rules=None, metadata=None, options=None) -> CompressionReport:
    """Capture a ``torch.nn.Module`` as a graph (spec §10) and write it with
    its compressed weights into one ``.cmz``, which
    :class:`cmodel.runtime.Session` runs.

    BatchNorm that follows a conv or linear is folded into it first, so the
    compressed weights are the folded ones; tensor names are the module's
    state-dict names.

    Args:
        module: the model (put in eval mode for the capture, then restored).
        example_input: a float32 tensor or array with a batch dimension first
            (a tuple of them for several inputs); any batch size runs later.
        path, rules, metadata, options: as for :func:`save_file`.

    Returns:
        The :class:`CompressionReport` of the written file.

    Raises:
        CmzError: check ``input`` for a module or op the graph cannot
            express (naming it and its module path), or a missing torch;
            ``encoder_options`` for bad rules or options.

    Example:
        >>> cmodel.save_model(model, torch.zeros(1, 3, 224, 224), "m.cmz")  # doctest: +SKIP
    """
    from .runtime.capture import capture  # lazy: torch is optional (DESIGN §1)

    graph, tensors = capture(module, example_input)
    return save_file(tensors, path, rules=rules, metadata=metadata, options=options, graph=graph)
