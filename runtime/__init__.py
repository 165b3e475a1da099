"""The cmodel runtime: graph IR, capture from ``torch.nn.Module``, and the
executor that runs a ``.cmz`` on its compressed weights.

Public API::

    from cmodel.runtime import Session
    with Session("model.cmz", backend="numpy") as s:   # every check runs here
        outputs = s.run(x)                             # list of float32 arrays

    from cmodel.runtime import capture                 # needs torch
    graph, tensors = capture(model, example_input)

The graph format is spec §10.  torch is imported only by ``capture``.
"""

from __future__ import annotations

from .graph import OPS, Graph, GraphInfo, Node, ValueInfo, graph_from_header, graph_to_header, validate
from .backends import BACKENDS, DEFAULT_BACKEND, make_backend
from .backends.base import NodeInfo, NumpyBackend
from .session import Session

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "OPS",
    "Graph",
    "GraphInfo",
    "Node",
    "NodeInfo",
    "NumpyBackend",
    "Session",
    "ValueInfo",
    "capture",
    "graph_from_header",
    "graph_to_header",
    "make_backend",
    "validate",
]


def capture(module, example_input):
    """Capture a ``torch.nn.Module`` as ``(Graph, tensors)``; see
    :func:`cmodel.runtime.capture.capture` (imported lazily: torch is
    optional)."""
    from .capture import capture as _capture

    return _capture(module, example_input)
