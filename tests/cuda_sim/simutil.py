"""Helpers of the simulator tests: record every kernel launch of a
``cmodel.kernels.cuda`` module and check each against its ``PTX_KERNELS``,
so the signatures compiled to PTX are the ones the wrappers really launch."""

from __future__ import annotations

import contextlib

import numpy as np
import numba
from numba import types

from cmodel.kernels.cuda import _host


def arg_type(a):
    """The Numba type a real launch would give ``a`` (the simulator passes
    its own array stand-ins, which ``numba.typeof`` does not know)."""
    if isinstance(a, (bool, np.bool_)):
        return types.boolean
    if isinstance(a, (int, np.integer)):
        return types.int64 if isinstance(a, int) else numba.from_dtype(np.asarray(a).dtype)
    if isinstance(a, (float, np.floating)):
        return types.float64 if isinstance(a, float) else numba.from_dtype(np.asarray(a).dtype)
    dt, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
    if dt is not None and shape is not None:
        return types.Array(numba.from_dtype(np.dtype(dt)), len(shape), "C")
    raise TypeError(f"launch argument of type {type(a).__name__}")


@contextlib.contextmanager
def recorded_launches(monkeypatch, *modules):
    """Yield a list that fills with ``(python function, argument types)`` of
    every launch through ``_host.launch`` by ``modules``."""
    seen = []
    real = _host.launch

    def launch(kernel, grid, block, stream, *args):
        seen.append((kernel.py_func, tuple(arg_type(a) for a in args)))
        return real(kernel, grid, block, stream, *args)

    for m in modules:
        monkeypatch.setattr(m, "launch", launch)
    yield seen


def assert_covered(seen, ptx_kernels):
    """Every recorded launch has its exact signature in ``ptx_kernels``."""
    table = {}
    for fn, sigs in ptx_kernels:
        table.setdefault(fn, set()).update(tuple(s) for s in sigs)
    assert seen, "no kernel was launched"
    for fn, sig in seen:
        assert fn in table, f"{fn.__name__} is launched but not in PTX_KERNELS"
        assert sig in table[fn], f"{fn.__name__} launched with {sig}, not among its PTX_KERNELS signatures"
