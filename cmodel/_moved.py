"""Old module paths of the flat layout (before the packages by concern),
kept importable: ``import cmodel.encoder`` gives the module now at
``cmodel.encode.encoder`` — the same module object, not a copy — so code
written against the old paths (``cmodel.encoder.save_file``,
``from cmodel import quantize``) keeps working.  New code uses the new
paths; nothing in the project imports an old one.  ``python -m`` takes the
new paths only (``python -m cmodel.bench.linear``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module -> module that holds its contents now
MOVED = {
    "cmodel.constants": "cmodel.format.constants",
    "cmodel.header": "cmodel.format.header",
    "cmodel.container": "cmodel.format.container",
    "cmodel.encodings": "cmodel.format.encodings",
    "cmodel.huffman": "cmodel.codecs.huffman",
    "cmodel.sparse": "cmodel.codecs.entries",
    "cmodel.quantize": "cmodel.codecs.quantize",
    "cmodel.encoder": "cmodel.encode.encoder",
    "cmodel.inputs": "cmodel.encode.checkpoints",
    "cmodel.tensors": "cmodel.encode.tensors",
    "cmodel.datasets": "cmodel.train.datasets",
    "cmodel.demo": "cmodel.train.demo",
    "cmodel.benchutil": "cmodel.bench.timing",
    "cmodel.bench_conv": "cmodel.bench.conv",
    "cmodel.bench_cuda": "cmodel.bench.cuda",
    "cmodel.bench_decode": "cmodel.bench.decode",
    "cmodel.bench_encode": "cmodel.bench.encode",
    "cmodel.bench_linear": "cmodel.bench.linear",
    "cmodel.bench_model": "cmodel.bench.model",
    "cmodel.runtime.ops_numpy": "cmodel.runtime.backends.ops_numpy",
    "cmodel.runtime.cpu": "cmodel.runtime.backends.cpu",
    "cmodel.runtime.cuda": "cmodel.runtime.backends.cuda",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system set the alias spec on the shared module object;
        # give it back its own.
        module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
