"""Backends of the runtime, chosen in one place (STYLE: "backends chosen in
one place, the choice published, unknown values fail loudly").

* :mod:`.base` — the interface and the reference :class:`NumpyBackend`;
* :mod:`.ops_numpy` — the numpy reference of every graph op;
* :mod:`.cpu` — Numba kernels on the compressed weights (default);
* :mod:`.cuda` — Numba CUDA kernels (needs numba-cuda and a GPU).

:data:`BACKENDS` maps a name to a factory; a backend module is imported only
when its backend is asked for, so ``numpy`` needs no Numba compile and
``cuda`` no numba-cuda until used.  Nothing here imports the session.
"""

from __future__ import annotations

from typing import Callable

from ...errors import CmzError
from .base import NumpyBackend


# The backend ``Session`` uses when none is named (DESIGN §5).
DEFAULT_BACKEND = "cpu"


def _cpu():
    from .cpu import CpuBackend  # imports the Numba kernels only when asked for

    return CpuBackend()


def _cuda():
    from .cuda import CudaBackend  # numba-cuda only when asked for; raises CmzError without a GPU

    return CudaBackend()


# Backend name → factory.  The one place backends are chosen (STYLE: "backends
# chosen in one place, the choice published, unknown values fail loudly").
BACKENDS: dict[str, Callable[[], NumpyBackend]] = {
    "cpu": _cpu,
    "cuda": _cuda,
    "numpy": NumpyBackend,
}


def make_backend(name: str) -> NumpyBackend:
    """The backend object for ``name``.

    Raises:
        CmzError: check ``input``: an unknown or unavailable backend.
    """
    if type(name) is not str or name not in BACKENDS:
        raise CmzError("input", f"backend: expected one of {sorted(BACKENDS)}; found {name!r}")
    return BACKENDS[name]()
