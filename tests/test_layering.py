"""The import layering of DESIGN §1, read from the source (every import
statement, lazy ones inside functions included):

* ``cmodel.kernels`` imports neither ``cmodel`` (outside the kernels) nor
  ``cmodel.runtime`` nor torch;
* ``cmodel.format`` and ``cmodel.codecs`` never import ``encode``,
  ``runtime``, ``train``, ``bench`` or the CLI;
* ``cmodel.encode`` never imports ``runtime``, ``train``, ``bench`` or the CLI;
* ``cmodel.runtime`` never imports ``encode``, ``train``, ``bench`` or the CLI;
* only the CLI, ``bench``, ``train`` (and the public API in
  ``cmodel/__init__.py``, lazily) reach ``cmodel.runtime``;
* nothing but the CLI imports the CLI, and nothing below ``bench`` (other
  than the demo in ``train``) imports ``bench``.

The checker is a plain function of (module name, source), so the last tests
feed it one broken module per rule and see it fail.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# folder -> import name (pyproject's package-dir mapping)
FOLDERS = {"cmodel": "cmodel", "runtime": "cmodel.runtime", "kernels": "cmodel.kernels"}

# The layer of a module: the first matching prefix.
LAYERS = [
    ("cmodel.kernels", "kernels"),
    ("cmodel.runtime", "runtime"),
    ("cmodel.format", "format"),
    ("cmodel.codecs", "codecs"),
    ("cmodel.encode", "encode"),
    ("cmodel.train", "train"),
    ("cmodel.bench", "bench"),
    ("cmodel.cli", "cli"),
    ("cmodel.errors", "base"),
    ("cmodel._version", "base"),
    ("cmodel._moved", "api"),
    ("cmodel", "api"),
]

# layer -> layers of cmodel it may import (its own always allowed)
ALLOWED = {
    "base": set(),
    "kernels": set(),
    "format": {"base", "codecs", "kernels"},
    "codecs": {"base", "format", "kernels"},
    "encode": {"base", "format", "codecs", "kernels"},
    "runtime": {"base", "format", "codecs", "kernels"},
    "train": {"base", "format", "codecs", "kernels", "encode", "runtime", "bench", "api"},
    "bench": {"base", "format", "codecs", "kernels", "encode", "runtime", "api"},
    "cli": {"base", "format", "codecs", "kernels", "encode", "runtime", "train", "bench", "api"},
    "api": {"base", "format", "codecs", "encode", "runtime"},
}
# Third-party imports a layer must never make.
FORBIDDEN_EXTERNAL = {"kernels": {"torch", "safetensors", "onnx", "onnxruntime"}}


def layer_of(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module}: no layer")


def imports_of(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``."""
    pkg = module if is_package else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = base + ("." + node.module if node.module else "")
            else:
                target = node.module
            # ``from pkg import name``: name may be a submodule
            if target in ("cmodel", "cmodel.runtime", "cmodel.kernels") or (node.module is None):
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def _cmodel_module(name: str) -> str | None:
    """The cmodel module an imported name refers to, or None (external or
    a name inside the top-level API such as ``cmodel.open``)."""
    if name != "cmodel" and not name.startswith("cmodel."):
        return None
    return name


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    layer = layer_of(module)
    bad = []
    for line, name in imports_of(module, source, is_package):
        top = name.split(".")[0]
        if top in FORBIDDEN_EXTERNAL.get(layer, ()):
            bad.append(f"{module}:{line} imports {name} (layer {layer} must not import {top})")
            continue
        if _cmodel_module(name) is None:
            continue
        try:
            target = layer_of(name)
        except AssertionError:
            continue
        if target != layer and target not in ALLOWED[layer]:
            bad.append(f"{module}:{line} imports {name} (layer {layer} must not import layer {target})")
    return bad


def project_modules():
    for folder, import_name in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([import_name, *parts]), path


def test_every_module_has_a_layer():
    for module, _ in project_modules():
        layer_of(module)


def test_project_follows_the_layering():
    bad = []
    for module, path in project_modules():
        bad += violations(module, path.read_text(), path.name == "__init__.py")
    assert not bad, "\n".join(bad)


def test_every_package_says_what_it_owns():
    for module, path in project_modules():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc) > 80, f"{module}: expected a docstring saying what the package owns; found {doc!r}"


# The checker itself: one broken module per rule.
BROKEN = [
    ("cmodel.kernels.evil", "from cmodel import errors"),
    ("cmodel.kernels.evil", "from ..runtime import session"),
    ("cmodel.kernels.cuda.evil", "import torch"),
    ("cmodel.format.evil", "from ..encode import encoder"),
    ("cmodel.format.evil", "def f():\n    from ..runtime import Session\n"),
    ("cmodel.codecs.evil", "from cmodel.train import Masks"),
    ("cmodel.codecs.evil", "from ..bench import timing"),
    ("cmodel.encode.evil", "from ..runtime.graph import Graph"),
    ("cmodel.encode.evil", "from .. import cli"),
    ("cmodel.runtime.evil", "from ..encode import rules"),
    ("cmodel.runtime.backends.evil", "from ...train import masks"),
    ("cmodel.runtime.evil", "from ..bench.timing import interleave"),
    ("cmodel.bench.evil", "from ..cli import main"),
]


@pytest.mark.parametrize("module,source", BROKEN)
def test_checker_catches_a_broken_rule(module, source):
    assert violations(module, source), f"{module}: {source!r} should break the layering"


@pytest.mark.parametrize("module,source", [
    ("cmodel.kernels.fine", "import numpy as np\nfrom .entries import threads_for\nfrom numba import cuda"),
    ("cmodel.codecs.fine", "from ..kernels import huffman\nfrom ..format.constants import MAX_CODE_LENGTH"),
    ("cmodel.runtime.backends.fine", "from ...format.container import CmzFile\nfrom ...kernels import conv"),
    ("cmodel.train.fine", "from ..runtime.capture import capture\nfrom ..encode import encoder"),
])
def test_checker_accepts_allowed_imports(module, source):
    assert not violations(module, source)
