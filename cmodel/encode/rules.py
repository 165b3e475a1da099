"""Which tensors the encoder compresses, and how: defaults, global options,
glob rules, protected tensors, and the resolved per-tensor :class:`Plan`
(DESIGN §4 step 1).  :class:`Prequantised` carries a codebook, codes and
scales that training already fixed.  See :mod:`cmodel.encode.encoder` for
the reasons behind the defaults.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..codecs import quantize
from ..errors import CmzError
from ..format import constants as C
from ..format.encodings import matrix_shape

# Below this many elements a tensor stays raw unless a rule says compress:
# an 8-bit float32 codebook alone is 1 KiB, and every segment pads to 64 B.
MIN_COMPRESS_ELEMENTS = 1024

DEFAULTS = {
    "bits": 8,
    "index_bits": "auto",
    "order": "row",
    "coding": "huffman",
    "codebook_dtype": "float32",
    "scale": "row",
    "scale_dtype": "auto",
    "chunk_symbols": C.DEFAULT_CHUNK_SYMBOLS,
    "sparsity": None,
    "threshold": None,
    "raw_dtype": "keep",
}
# The global options that do not reach protected tensors.
LOSSY_OPTIONS = ("sparsity", "threshold", "bits")
OPTION_KEYS = ("skip", "compress") + tuple(DEFAULTS)

_CHOICES = {
    "order": C.ORDERS,
    "coding": C.CODINGS,
    "codebook_dtype": ("float32", "float16"),
    "scale": ("row", "none"),
    "scale_dtype": ("auto", "float32", "float16"),
    "raw_dtype": ("keep", "float16"),
}


def check_options(opts: Mapping, where: str) -> dict:
    """Validate one option dict (a rule's, or the global one).

    Raises:
        CmzError: ``check='encoder_options'`` naming the key, what was
            expected and what was found.
    """
    if not isinstance(opts, Mapping):
        raise CmzError("encoder_options", f"{where}: expected a dict of options; found {type(opts).__name__}")
    out = {}
    for k, v in opts.items():
        def bad(expected):
            raise CmzError("encoder_options", f"{where}: expected {k} {expected}; found {v!r}")

        if k not in OPTION_KEYS:
            raise CmzError("encoder_options", f"{where}: unknown option {k!r}; expected one of {', '.join(OPTION_KEYS)}")
        if k in ("skip", "compress"):
            if type(v) is not bool:
                bad("true or false")
        elif k == "sparsity":
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                bad("a number in 0..1")
        elif k == "threshold":
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v))):
                bad("a finite number ≥ 0")
        elif k == "bits":
            if type(v) is not int or not 1 <= v <= 8:
                bad("an int in 1..8")
        elif k == "index_bits":
            if v != "auto" and (type(v) is not int or not 1 <= v <= 8):
                bad("an int in 1..8 or 'auto'")
        elif k == "chunk_symbols":
            if type(v) is not int or not C.PARAMS["chunk_symbols"][1] <= v <= C.PARAMS["chunk_symbols"][2]:
                bad(f"an int in 1..{C.PARAMS['chunk_symbols'][2]}")
        elif v not in _CHOICES[k]:
            bad("one of " + ", ".join(_CHOICES[k]))
        out[k] = v
    if out.get("sparsity") is not None and out.get("threshold") is not None:
        raise CmzError("encoder_options", f"{where}: expected at most one of sparsity and threshold; found both")
    return out


def _rule_list(rules) -> list[tuple[str, dict]]:
    if rules is None:
        return []
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise CmzError("encoder_options", f"rules: expected a dict of glob pattern → options, or (pattern, options) pairs; found {item!r}")
        out.append((item[0], check_options(item[1], f"rule {item[0]!r}")))
    return out


def protected_tensors(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Names of the tensors the defaults protect, with the reason.

    ``shapes`` maps the float tensors' names to shapes, in state-dict order.
    """
    out = {}
    names = list(shapes)
    convs = [n for n in names if len(shapes[n]) == 4]
    linears = [n for n in names if len(shapes[n]) == 2]
    if convs:
        out[convs[0]] = "first conv"
    if linears:
        out[linears[-1]] = "last linear"
    for n in convs:
        if shapes[n][1] == 1 and shapes[n][0] > 1 and n not in out:
            out[n] = "depthwise conv"
    return out


@dataclass(frozen=True, eq=False)
class Prequantised:
    """A weight whose pruning and weight sharing are already decided: the
    encoder stores exactly these codes, codebook and scales (spec §6.2), and
    only relative-indexes and codes them.  Pass it as a tensor's value to
    :func:`save_file` (or in the tensors of ``save_model``'s capture).

    Attributes:
        codebook: ``[2**bits]`` float32 or float16 values, finite; for a
            sparse tensor ``codebook[0]`` is +0.0 (code 0 = pruned).
        codes: uint8 codes of the tensor's shape (≥ 2 dims; the shape of the
            decoded tensor), each ``< 2**bits``.
        scales: one float32/float16 scale per row of the matrix view
            (``shape[0]``), finite, or None.
        sparse: True to store as ``sparse`` (code 0 = a pruned weight),
            False as a dense ``codebook``.

    The decoded tensor is float32: ``float32(scales[row]) * float32(codebook[code])``
    (:meth:`dequantize`).  Global options and rules do not change what is
    stored (``sparsity``, ``threshold``, ``bits``, ``codebook_dtype``,
    ``scale``, ``scale_dtype``, ``skip``/``compress`` are ignored for it);
    ``index_bits``, ``order``, ``coding`` and ``chunk_symbols`` apply.

    Raises:
        CmzError: ``check='input'`` when a field breaks one of these rules.
    """

    codebook: np.ndarray
    codes: np.ndarray
    scales: np.ndarray | None
    sparse: bool

    def __post_init__(self):
        def bad(what):
            raise CmzError("input", f"prequantised tensor: expected {what}")

        cb, codes, sc = self.codebook, self.codes, self.scales
        if not isinstance(cb, np.ndarray) or cb.ndim != 1 or cb.dtype not in (np.float32, np.float16):
            bad(f"codebook a 1-D float32/float16 numpy array; found {getattr(cb, 'dtype', type(cb).__name__)} of shape {getattr(cb, 'shape', '?')}")
        bits = int(cb.size).bit_length() - 1
        if not (1 <= bits <= 8 and cb.size == 1 << bits):
            bad(f"a codebook of 2**bits values, bits in 1..8; found {cb.size} values")
        if not np.isfinite(cb).all():
            bad("finite codebook values; found NaN or infinity")
        if type(self.sparse) is not bool:
            bad(f"sparse true or false; found {self.sparse!r}")
        if self.sparse and cb[:1].view(np.uint16 if cb.dtype == np.float16 else np.uint32)[0] != 0:
            bad(f"codebook[0] = +0.0 in a sparse tensor (code 0 is the pruned zero); found {cb[0]!r}")
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim < 2:
            bad(f"codes a uint8 numpy array with ≥ 2 dims; found {getattr(codes, 'dtype', type(codes).__name__)} of shape {getattr(codes, 'shape', '?')}")
        if codes.size and int(codes.max()) >= cb.size:
            bad(f"codes < {cb.size} (2**bits); found {int(codes.max())}")
        if sc is not None:
            if not isinstance(sc, np.ndarray) or sc.dtype not in (np.float32, np.float16) or sc.shape != (codes.shape[0],):
                bad(f"scales None or a float32/float16 array of shape ({codes.shape[0]},); found {getattr(sc, 'dtype', type(sc).__name__)} of shape {getattr(sc, 'shape', '?')}")
            if not np.isfinite(sc).all():
                bad("finite scales; found NaN or infinity")
            with np.errstate(over="ignore"):
                top = np.float32(np.abs(cb).max()) * np.float32(np.abs(sc).max() if sc.size else 0)
            if not np.isfinite(top):
                bad("max |codebook| × max |scale| within float32; found an overflow")

    @property
    def bits(self) -> int:
        return int(self.codebook.size).bit_length() - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        """The float32 tensor the decoder reproduces (spec §6.2)."""
        rows, cols = matrix_shape(self.shape)
        cb = quantize.CodebookResult(self.codebook, self.codes.reshape(rows, cols), self.scales, self.codebook.size)
        return cb.dequantize().reshape(self.shape)


@dataclass
class Plan:
    """What the encoder will do with one tensor."""

    name: str
    compress: bool
    options: dict
    protected: str | None = None
    prequantised: Prequantised | None = None

    @property
    def sparse(self) -> bool:
        if self.prequantised is not None:
            return self.prequantised.sparse
        return self.compress and (bool(self.options["sparsity"]) or self.options["threshold"] is not None)


def plan(arrays: Mapping[str, tuple[np.ndarray, str]], rules=None, options=None, prequantised: Mapping[str, Prequantised] | None = None) -> list[Plan]:
    """Resolve defaults, global options and rules for every tensor.

    Order: defaults, then ``options`` (except ``sparsity``/``threshold``/
    ``bits`` on protected tensors), then every rule whose glob pattern
    matches the name, in order, later ones overriding earlier ones.
    ``skip: v`` is the same as ``compress: not v``; a global ``compress``
    selects only float tensors.  Tensors in ``prequantised`` are always
    compressed, with their own bits, codebook and scales.
    """
    prequantised = prequantised or {}
    rule_list = _rule_list(rules)
    glob = check_options(options or {}, "options")
    floats = {n: a.shape for n, (a, dt) in arrays.items() if dt in C.FLOAT_DTYPES}
    protected = protected_tensors(floats)
    plans = []
    for name, (a, dtype) in arrays.items():
        is_float = dtype in C.FLOAT_DTYPES
        compress = is_float and a.ndim >= 2 and a.size >= MIN_COMPRESS_ELEMENTS
        opts = dict(DEFAULTS)
        for k, v in glob.items():
            if k in ("skip", "compress"):
                compress = (v if k == "compress" else not v) and (is_float or k == "skip")
            elif not (name in protected and k in LOSSY_OPTIONS):
                opts[k] = v
        for pattern, ropts in rule_list:
            if fnmatch.fnmatchcase(name, pattern):
                for k, v in ropts.items():
                    if k in ("skip", "compress"):
                        compress = v if k == "compress" else not v
                    else:
                        opts[k] = v
                        if k == "sparsity" and v is not None:
                            opts["threshold"] = None
                        if k == "threshold" and v is not None:
                            opts["sparsity"] = None
        pq = prequantised.get(name)
        if pq is not None:
            compress = True
            opts.update(bits=pq.bits, sparsity=None, threshold=None, codebook_dtype=str(pq.codebook.dtype),
                        scale="none" if pq.scales is None else "row")
        if compress and not is_float:
            raise CmzError("encoder_options", f"tensor {name!r}: expected a float tensor to compress; found {dtype}")
        plans.append(Plan(name, compress, opts, protected.get(name), pq))
    return plans
