"""CUDA kernel tests under Numba's CUDA simulator; see tests/conftest.py."""

import os

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # pragma: no cover - guarded by tests/conftest.py
    raise RuntimeError("tests/cuda_sim needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
