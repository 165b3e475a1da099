"""Every CPU runtime kernel has a CUDA twin that compiles to PTX and has a
simulator parity test (issue 5).

The CPU kernels are enumerated from the code, not from a list kept here:

* ``cmodel.kernels.sparse_linear.__all__`` and ``.codebook_linear.__all__``;
* the public ``*conv2d`` functions of ``cmodel.kernels.conv``;
* ``cmodel.kernels.huffman.decode_chunks``;
* every ``ops_numpy`` function the cpu backend runs: the ``ops.<name>``
  references of ``NumpyBackend``'s ``prepare_<op>`` members that
  ``CpuBackend`` does not override, and those of ``runtime/backends/cpu.py``, minus
  ``HOST_HELPERS``.

A twin is ``cmodel.kernels.cuda.<mod>.<name>`` (``ops_numpy`` functions:
``<mod>`` = ``ops``) and must

(a) be covered by its module's ``PTX_KERNELS`` (compiled for sm_80/sm_90 by
    tests/test_cuda_ptx.py): every CUDA kernel the twin launches, found by
    walking the source of the twin and of the module's functions and
    classes it uses, is listed there, and it launches at least one -- or it
    is itself a listed kernel, or a view named in the module's ``VIEWS``;
(b) be called by a simulator test: a ``tests/cuda_sim/test_*.py`` module
    that imports ``cmodel.kernels.cuda.<mod>`` calls it (``alias.name(...)``,
    ``name(...)``, ``alias.name[grid, block](...)``), or names it in its
    ``TWINS_TESTED`` set (for calls through ``getattr``).  The sim modules are
    parsed, never imported (they need the simulator).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIM_TESTS = ROOT / "tests" / "cuda_sim"
CUDA_PKG = "cmodel.kernels.cuda"

# ops_numpy functions the backends call once per node at prepare time, on
# the host (per-channel constants, window bounds); the cuda backend calls the
# same functions.  Not kernels, so no twins.
HOST_HELPERS = {"batch_norm_coefficients", "adaptive_bounds"}


def _ops_refs(nodes) -> set[str]:
    return {n.attr for tree in nodes for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ops"}


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _members(cls: ast.ClassDef) -> dict[str, ast.AST]:
    out = {}
    for st in cls.body:
        if isinstance(st, ast.FunctionDef):
            out[st.name] = st
        elif isinstance(st, ast.Assign):
            for t in st.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = st.value
    return out


def cpu_backend_ops() -> set[str]:
    session = ast.parse((ROOT / "runtime" / "backends" / "base.py").read_text())
    cpu = ast.parse((ROOT / "runtime" / "backends" / "cpu.py").read_text())
    numpy_members = _members(_class(session, "NumpyBackend"))
    overridden = set(_members(_class(cpu, "CpuBackend")))
    inherited = [v for k, v in numpy_members.items() if k.startswith("prepare_") and k not in overridden]
    return (_ops_refs(inherited) | _ops_refs([cpu])) - HOST_HELPERS


def cpu_kernels() -> list[tuple[str, str]]:
    """(cuda module, name) of every CPU runtime kernel."""
    from cmodel.kernels import codebook_linear, conv, huffman, sparse_linear

    out = [("sparse_linear", n) for n in sparse_linear.__all__] + [("codebook_linear", n) for n in codebook_linear.__all__]
    out += [("conv", n) for n, f in vars(conv).items() if n.endswith("conv2d") and not n.startswith("_") and inspect.isfunction(f)]
    assert callable(huffman.decode_chunks)
    out.append(("huffman", "decode_chunks"))
    out += [("ops", n) for n in sorted(cpu_backend_ops())]
    return out


def test_enumeration_finds_the_kernels():
    names = {n for _, n in cpu_kernels()}
    # a sample the enumeration must find, so a broken walk fails here
    assert {"sparse_matmul", "codebook_matmul", "sparse_conv2d", "dense_conv2d", "decode_chunks", "relu", "max_pool2d",
            "scale_shift", "linear", "cat", "softmax", "identity"} <= names
    assert "conv2d" not in names  # the cpu backend runs conv on its kernels, not ops_numpy's


def _is_kernel_dispatcher(obj) -> bool:
    return (not inspect.isfunction(obj) and inspect.isfunction(getattr(obj, "py_func", None))
            and not getattr(obj, "targetoptions", {}).get("device", False))


def launched_kernels(module, fn) -> set:
    """Python functions of the CUDA kernels ``fn`` launches: names in its
    source that are kernel dispatchers of ``module``, following the
    module's own functions, classes and containers of dispatchers."""
    kernels, seen = set(), set()

    def classify(obj, depth=0):
        if _is_kernel_dispatcher(obj):
            kernels.add(obj.py_func)
        elif inspect.isfunction(obj) and obj.__module__ == module.__name__:
            visit(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for m in vars(obj).values():
                if inspect.isfunction(m):
                    visit(m)
        elif isinstance(obj, (dict, list, tuple)) and depth == 0:
            for v in (obj.values() if isinstance(obj, dict) else obj):
                classify(v, 1)

    def visit(f):
        if f in seen:
            return
        seen.add(f)
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and n.id in vars(module):
                classify(vars(module)[n.id])

    visit(fn)
    return kernels


def _sim_calls() -> dict[str, set[str]]:
    """cuda module -> twin names called (or declared) by the simulator tests."""
    found: dict[str, set[str]] = {}
    for path in sorted(SIM_TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        aliases, direct = {}, {}  # local name -> cuda module; local name -> (module, function)
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module == CUDA_PKG:
                for a in n.names:
                    aliases[a.asname or a.name] = a.name
            elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(CUDA_PKG + "."):
                mod = n.module.rsplit(".", 1)[1]
                found.setdefault(mod, set())
                for a in n.names:
                    direct[a.asname or a.name] = (mod, a.name)
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.startswith(CUDA_PKG + ".") and a.asname:
                        aliases[a.asname] = a.name.rsplit(".", 1)[1]
        for mod in aliases.values():
            found.setdefault(mod, set())
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call):
                continue
            f = n.func.value if isinstance(n.func, ast.Subscript) else n.func  # kernel[grid, block](...)
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in aliases:
                found[aliases[f.value.id]].add(f.attr)
            elif isinstance(f, ast.Name) and f.id in direct:
                mod, name = direct[f.id]
                found[mod].add(name)
        declared = next((st.value for st in tree.body if isinstance(st, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "TWINS_TESTED" for t in st.targets)), None)
        if declared is not None:
            names = ast.literal_eval(declared)
            for mod in set(aliases.values()) | {m for m, _ in direct.values()}:
                found[mod] |= set(names)
    return found


def test_launch_walk_finds_the_kernels():
    from cmodel.kernels.cuda import conv, ops

    assert launched_kernels(conv, conv.sparse_conv2d) == {conv._sparse_conv_kernel}
    assert launched_kernels(conv, conv.dense_conv2d) == {conv._gemm_conv_kernel}
    assert launched_kernels(ops, ops.relu) == {ops._unary_kernel}
    assert launched_kernels(ops, ops.batch_norm) == {ops._scale_shift_kernel}
    assert launched_kernels(ops, ops.flatten) == set()


def test_sim_call_finder_sees_the_conv_tests():
    calls = _sim_calls()
    assert {"sparse_conv2d", "codebook_conv2d", "dense_conv2d"} <= calls.get("conv", set())


@pytest.mark.parametrize("mod, name", cpu_kernels())
def test_kernel_has_a_cuda_twin(mod, name):
    try:
        module = importlib.import_module(f"{CUDA_PKG}.{mod}")
    except ModuleNotFoundError as e:
        pytest.fail(f"{name}: expected a CUDA twin in {CUDA_PKG}.{mod}; found no such module ({e})")
    twin = getattr(module, name, None)
    assert twin is not None, f"expected {CUDA_PKG}.{mod}.{name}, the twin of the CPU kernel; found none"
    ptx = {fn for fn, sigs in getattr(module, "PTX_KERNELS", []) if sigs}
    assert ptx, f"expected {CUDA_PKG}.{mod}.PTX_KERNELS with signatures; found none"
    if _is_kernel_dispatcher(twin):
        assert twin.py_func in ptx, f"{mod}.{name} is a kernel missing from PTX_KERNELS"
    elif name in getattr(module, "VIEWS", ()):
        assert not launched_kernels(module, twin), f"{mod}.{name} is declared a view but launches kernels"
    else:
        launched = launched_kernels(module, twin)
        assert launched, f"{mod}.{name}: expected the CUDA kernels it launches; found none"
        missing = sorted(f.__name__ for f in launched - ptx)
        assert not missing, f"{mod}.{name} launches {missing}, not in PTX_KERNELS"
    tested = _sim_calls().get(mod, set())
    assert name in tested, f"expected a simulator test in tests/cuda_sim calling {CUDA_PKG}.{mod}.{name}; found none"


def test_cuda_backend_prepares_every_op():
    """Every graph op has its own device kernel in the cuda backend (an
    inherited numpy one would be handed device arrays); importing the
    backend needs no GPU."""
    from cmodel.runtime import OPS
    from cmodel.runtime.backends.cuda import CudaBackend

    missing = sorted(op for op in OPS if "prepare_" + op not in CudaBackend.__dict__)
    assert not missing, f"ops without a cuda kernel: {missing}"
