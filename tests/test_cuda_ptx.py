"""Every CUDA kernel compiles to PTX for sm_80 and sm_90, without a GPU.

Each module of ``cmodel.kernels.cuda`` (every ``kernels/cuda/*.py`` whose
name does not start with ``_``) lists its kernels in ``PTX_KERNELS``:
``(python function, [signature, ...])`` covering every signature its
wrappers launch (the simulator tests check that).  Each (kernel, signature,
compute capability) is compiled with ``numba.cuda.compile_ptx`` as its own
test; a module without ``PTX_KERNELS`` fails.  NVVM comes from the
``numba-cuda[cu13]`` wheels (dev and cuda extras); no driver is needed.
"""

from __future__ import annotations

import importlib
import pathlib
import types as pytypes

import pytest

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the dev/cuda extra) is not installed")
import cmodel.kernels.cuda as package  # noqa: E402

CCS = ((8, 0), (9, 0))
MODULES = sorted(p.stem for p in pathlib.Path(package.__file__).parent.glob("*.py") if not p.stem.startswith("_"))


def cases():
    out = []
    for name in MODULES:
        mod = importlib.import_module(f"{package.__name__}.{name}")
        kernels = getattr(mod, "PTX_KERNELS", None)
        if not kernels:
            out.append(pytest.param(name, None, None, None, id=f"{name}-no-PTX_KERNELS"))
            continue
        for fn, sigs in kernels:
            fn = getattr(fn, "py_func", fn)
            for i, sig in enumerate(sigs):
                for cc in CCS:
                    out.append(pytest.param(name, fn, tuple(sig), cc, id=f"{name}.{fn.__name__}-sig{i}-sm{cc[0]}{cc[1]}"))
    return out


def test_every_module_is_covered():
    assert {"codebook_linear", "conv", "huffman", "ops", "sparse_linear"} <= set(MODULES), MODULES


@pytest.fixture
def target_cc(monkeypatch):
    """Device functions called by a kernel are compiled through a dispatcher
    that asks the current device for its compute capability (numba-cuda
    0.30), which needs a driver; ``compile_ptx`` itself does not.  Answer
    with the capability being compiled for."""
    import numba.cuda.dispatcher as dispatcher

    def use(cc):
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: pytypes.SimpleNamespace(compute_capability=cc), raising=False)

    return use


@pytest.mark.parametrize("module,fn,sig,cc", cases())
def test_kernel_compiles_to_ptx(target_cc, module, fn, sig, cc):
    assert fn is not None, f"cmodel.kernels.cuda.{module}: expected PTX_KERNELS, a list of (kernel, [signature, ...]); found none"
    target_cc(cc)
    ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
    assert isinstance(ptx, str) and ".entry" in ptx
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
