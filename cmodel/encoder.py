"""The Deep Compression encoder: select → prune → share weights → relative
index → pack or Huffman-code → write (DESIGN §4, spec §6).

Defaults, and why:

* **Which tensors are compressed.** Float tensors with at least two
  dimensions and at least ``MIN_COMPRESS_ELEMENTS`` elements: conv and linear
  weights, embeddings.  Biases, norm parameters and buffers (1-D), integer
  tensors and tiny tensors stay raw: a codebook, scales and the 64-byte
  alignment of each segment cost more than they save on a few hundred
  weights.
* **How.** No pruning; a dense ``codebook`` of ``2**8`` values with one
  float16 scale per row (float32 where a scale would overflow float16),
  Huffman-coded codes.  Near-lossless: measured on real models, 8-bit
  row-scaled codebooks keep output error small where post-training pruning
  of transformers and mobile nets does not (DESIGN §4).
* **Protected tensors.** The first conv (first 4-D weight), the last linear
  (last 2-D weight) and depthwise convs (4-D with one input channel per
  group) are the layers whose accuracy suffers most from pruning and coarse
  codebooks.  The global options ``sparsity``, ``threshold`` and ``bits``
  do not apply to them; a rule that matches them by name does.
* **Sparse tensors** (a ``sparsity`` or ``threshold`` was asked for) store
  ``2**bits - 1`` centroids plus the reserved zero, with relative indices of
  ``index_bits`` bits; ``index_bits='auto'`` (the default) picks the width
  that gives the smallest stream, counting the fillers each width needs.
* **Prequantised tensors** (:class:`Prequantised`: a codebook, codes and row
  scales that training already fixed, e.g. by :mod:`cmodel.train`'s trained
  quantisation) are written as given: no pruning, no k-means, only relative
  indexing and coding.  The file format is the same; the report counts them
  like any other compressed tensor.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from . import constants as C, huffman, quantize, sparse
from ._version import __version__
from .container import ContainerWriter
from .encodings import matrix_shape
from .errors import CmzError
from .header import segment_roles
from .tensors import to_numpy

PRODUCER = {"name": "cmodel", "version": __version__}

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


def prune(w: np.ndarray, sparsity: float | None = None, threshold: float | None = None) -> np.ndarray:
    """The encoder's pruning mask (True = kept): magnitude pruning by
    :func:`cmodel.quantize.prune_mask`, and exact zeros are never kept (a
    kept zero would be stored as a nonzero centroid).  Training code uses this
    to prune exactly as the encoder does."""
    return quantize.prune_mask(w, sparsity=sparsity, threshold=threshold) & (w != 0)


def gaps_from_entries(deltas: np.ndarray, codes: np.ndarray, index_bits: int) -> np.ndarray:
    """The zero run before every real (non-filler) entry, recovered from
    relative-index entries: each filler before it adds ``2**r`` positions."""
    real = np.flatnonzero(codes)
    fillers_before = np.diff(real, prepend=-1) - 1
    return deltas[real].astype(np.int64) + (fillers_before.astype(np.int64) << index_bits)


def choose_index_bits(gaps: np.ndarray, real_codes: np.ndarray, bits: int, coding: str, chunk_symbols: int) -> int:
    """The index width r in 1..8 giving the smallest entry stream.

    A gap of g zeros needs ``g >> r`` fillers and a final delta ``g % 2**r``.
    Packed size is exact; the Huffman size is that of the length-limited
    codes built for the delta and code fields, plus tables and chunk
    offsets, up to the padding of chunks to whole bytes (ties go to the
    smaller r).
    """
    g_vals, g_counts = np.unique(gaps, return_counts=True)
    code_hist = np.bincount(real_codes, minlength=1 << bits).astype(np.int64)
    best = None
    for r in range(1, 9):
        fill = int(np.sum((g_vals >> r) * g_counts))
        n = len(gaps) + fill
        if coding == "packed":
            size = -(-n * (r + bits) // 8)
        else:
            dh = np.bincount(g_vals & ((1 << r) - 1), weights=g_counts, minlength=1 << r)
            dh[(1 << r) - 1] += fill
            ch = code_hist.copy()
            ch[0] += fill
            chunks = -(-n // chunk_symbols) + 1
            size = (_huffman_bits(dh) + _huffman_bits(ch)) / 8 + (1 << r) + 16 * chunks
        if best is None or size < best[0]:
            best = (size, r)
    return best[1]


def _huffman_bits(hist: np.ndarray) -> int:
    hist = np.asarray(hist, np.int64)
    return int(np.dot(hist, huffman.code_lengths(hist).astype(np.int64)))


@dataclass
class TensorReport:
    """One tensor's line of the compression report."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    protected: str | None
    elements: int
    fp32_bytes: int
    kept: int
    bits: int = 0
    index_bits: int = 0
    entries: int = 0
    fillers: int = 0
    order: str = ""
    coding: str = ""
    bytes: dict = field(default_factory=dict)  # category -> bytes
    packed_bytes: int = 0  # size with packed coding (P+Q)
    pruned_bytes: int = 0  # size after pruning alone: float32 values + relative indices (P)

    @property
    def stored_bytes(self) -> int:
        return sum(self.bytes.values())


# Report categories of each segment role.
CATEGORY = {
    "data": "raw",
    "codebook": "codebook",
    "scales": "scales",
    "codes": "codes",
    "deltas": "indices",
    "pointers": "pointers",
    "code_lengths": "huffman_tables",
    "delta_lengths": "huffman_tables",
    "code_chunks": "huffman_tables",
    "delta_chunks": "huffman_tables",
}
CATEGORIES = ("codes", "indices", "pointers", "codebook", "scales", "huffman_tables", "raw")


def _build_codebook(p: Plan, w2d: np.ndarray) -> quantize.CodebookResult:
    """Prune (sparse plans) and share one tensor's weights (DESIGN §4 steps 2-3)."""
    o = p.options
    mask = None
    if p.sparse:
        try:
            mask = prune(w2d, o["sparsity"] or None, o["threshold"])
        except CmzError as e:
            raise CmzError(e.check, f"tensor {p.name!r}: {e}") from None
    scale = o["scale"]
    scale_dtypes = ["float16", "float32"] if o["scale_dtype"] == "auto" else [o["scale_dtype"]]
    for i, sd in enumerate(scale_dtypes):
        try:
            return quantize.build_codebook(w2d, o["bits"], p.sparse, mask, scale, np.dtype(o["codebook_dtype"]), np.dtype(sd))
        except CmzError as e:
            if i + 1 == len(scale_dtypes) or scale == "none":
                raise CmzError(e.check, f"tensor {p.name!r}: {e}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def share_weights(name: str, w, options: Mapping) -> quantize.CodebookResult:
    """The codebook, codes and row scales the encoder would store for one
    tensor with these options (pruning and k-means exactly as in
    :func:`save_file`; the protection defaults do not apply, the options are
    taken as given).  Training code builds its trained-quantisation
    codebooks with this, then writes them back through :class:`Prequantised`.

    Args:
        name: the tensor's name (for messages).
        w: the weight, numpy array or torch tensor, float, ≥ 2 dims.
        options: encoder options (:data:`OPTION_KEYS`), e.g.
            ``{"bits": 6, "threshold": 0.0}`` (sparse: keep the nonzeros).

    Returns:
        A :class:`cmodel.quantize.CodebookResult` over the matrix view.

    Raises:
        CmzError: ``check='encoder_options'`` for a bad option; ``input``
            for a tensor that is not float with ≥ 2 dims.
    """
    a, dtype = to_numpy(name, w)
    if dtype not in C.FLOAT_DTYPES or a.ndim < 2:
        raise CmzError("input", f"tensor {name!r}: expected a float tensor with ≥ 2 dims; found {dtype} of shape {list(a.shape)}")
    opts = dict(DEFAULTS)
    opts.update(check_options(options, f"tensor {name!r}"))
    if dtype == "bfloat16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    w2d = a.reshape(matrix_shape(a.shape))
    if w2d.dtype == np.float16:
        w2d = w2d.astype(np.float32)
    return _build_codebook(Plan(name, True, opts), w2d)


def _encode_tensor(p: Plan, a: np.ndarray, dtype: str):
    """Compress one tensor: returns (params, segments in role order, report)."""
    o = p.options
    rows, cols = matrix_shape(a.shape)
    w = (a.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else a
    w2d = w.reshape(rows, cols)
    if w2d.dtype == np.float16:
        w2d = w2d.astype(np.float32)
    fp32 = a.size * 4
    rep = TensorReport(p.name, a.shape, dtype, "", p.protected, a.size, fp32, a.size)
    if p.prequantised is not None:  # training fixed codes, codebook and scales: store them as given
        pq = p.prequantised
        cb = quantize.CodebookResult(pq.codebook, pq.codes.reshape(rows, cols), pq.scales, pq.codebook.size)
    else:
        cb = _build_codebook(p, w2d)
    b = o["bits"]
    params = {"bits": b, "coding": o["coding"], "codebook_dtype": str(cb.codebook.dtype), "scale": "none" if cb.scales is None else str(cb.scales.dtype)}
    segs = {"codebook": cb.codebook.astype(cb.codebook.dtype.newbyteorder("<"))}
    if cb.scales is not None:
        segs["scales"] = cb.scales.astype(cb.scales.dtype.newbyteorder("<"))
    if o["coding"] == "huffman":
        params["chunk_symbols"] = o["chunk_symbols"]
    rep.bits, rep.coding = b, o["coding"]
    side = sum(s.nbytes for s in segs.values())
    if p.sparse:
        codes = cb.codes
        kept = int(np.count_nonzero(codes))
        order = o["order"]
        r = o["index_bits"]
        if r == "auto":
            _, d8, c8 = sparse.relative_index_encode(codes, 8, order)
            r = choose_index_bits(gaps_from_entries(d8, c8, 8), c8[c8 != 0], b, o["coding"], o["chunk_symbols"])
            del d8, c8
        pointers, deltas, ecodes = sparse.relative_index_encode(codes, r, order)
        n = int(deltas.size)

        params.update(index_bits=r, order=order, n_entries=n, pointer_dtype=str(pointers.dtype))
        segs["pointers"] = pointers.astype(pointers.dtype.newbyteorder("<"))
        if o["coding"] == "packed":
            segs["entries"] = sparse.pack_entries(deltas, ecodes, r, b)
        else:
            for field_, syms, nbits in (("code", ecodes, b), ("delta", deltas, r)):
                lengths = huffman.code_lengths(np.bincount(syms, minlength=1 << nbits))
                stream, offsets = huffman.encode(syms, lengths, o["chunk_symbols"])
                segs[f"{field_}_lengths"] = lengths
                segs[f"{field_}s"] = np.frombuffer(stream, np.uint8)
                segs[f"{field_}_chunks"] = offsets.astype("<u8")
        rep.encoding, rep.kept, rep.entries, rep.index_bits, rep.order = "sparse", kept, n, r, order
        rep.fillers = n - kept
        rep.packed_bytes = side + pointers.nbytes + -(-n * (r + b) // 8)
        rep.pruned_bytes = pointers.nbytes + -(-n * (32 + r) // 8)
    else:
        flat = cb.codes.reshape(-1)
        if o["coding"] == "packed":
            segs["codes"] = sparse.pack_bits(flat, b)
        else:
            lengths = huffman.code_lengths(np.bincount(flat, minlength=1 << b))
            stream, offsets = huffman.encode(flat, lengths, o["chunk_symbols"])
            segs["code_lengths"] = lengths
            segs["codes"] = np.frombuffer(stream, np.uint8)
            segs["code_chunks"] = offsets.astype("<u8")
        rep.encoding, rep.entries = "codebook", a.size
        rep.packed_bytes = side + -(-a.size * b // 8)
        rep.pruned_bytes = fp32
    roles = segment_roles(rep.encoding, o["coding"], params["scale"])
    ordered = {role: segs[role] for role in roles}
    for role, s in ordered.items():
        n = np.asarray(s).nbytes
        if role == "entries":  # packed sparse entries: b bits of code, r of index each
            code_part = rep.entries * rep.bits // 8
            rep.bytes["codes"] = rep.bytes.get("codes", 0) + code_part
            rep.bytes["indices"] = rep.bytes.get("indices", 0) + n - code_part
        else:
            cat = CATEGORY[role]
            rep.bytes[cat] = rep.bytes.get(cat, 0) + n
    return params, ordered, rep


@dataclass
class CompressionReport:
    """Where every byte of a written ``.cmz`` goes, per tensor and in total,
    with the Deep Compression paper's stage ratios.

    Stage sizes (weights only, per tensor then summed): *pruning* = float32
    values of the kept entries plus relative indices and pointers (dense
    tensors: fp32); *+quantisation* = packed codes, indices, pointers,
    codebook and scales; *+Huffman* = the stored bytes.  The whole-file ratio
    divides the state dict's fp32 size by the file size.
    """

    path: str
    tensors: list[TensorReport]
    preamble_bytes: int
    header_bytes: int
    padding_bytes: int
    file_bytes: int

    def totals(self) -> dict:
        cats = {c: sum(t.bytes.get(c, 0) for t in self.tensors) for c in CATEGORIES}
        cats["header"] = self.header_bytes
        cats["preamble"] = self.preamble_bytes
        cats["padding"] = self.padding_bytes
        return cats

    def to_dict(self) -> dict:
        fp32 = sum(t.fp32_bytes for t in self.tensors)
        pruned = sum(t.pruned_bytes if t.encoding != "raw" else t.stored_bytes for t in self.tensors)
        packed = sum(t.packed_bytes if t.encoding != "raw" else t.stored_bytes for t in self.tensors)
        stored = sum(t.stored_bytes for t in self.tensors)
        return {
            "path": self.path,
            "tensors": [
                {
                    "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "encoding": t.encoding,
                    "protected": t.protected, "elements": t.elements, "fp32_bytes": t.fp32_bytes,
                    "kept_percent": 100.0 * t.kept / t.elements if t.elements else 100.0,
                    "bits": t.bits, "index_bits": t.index_bits, "order": t.order, "coding": t.coding,
                    "entries": t.entries, "fillers": t.fillers, "bytes": dict(t.bytes), "stored_bytes": t.stored_bytes,
                    "weight_bits_huffman": 8 * t.bytes.get("codes", 0) / t.entries if t.entries else 0.0,
                    "index_bits_huffman": 8 * t.bytes.get("indices", 0) / t.entries if t.entries else 0.0,
                    "ratio_pq": t.fp32_bytes / t.packed_bytes if t.packed_bytes else None,
                    "ratio_pqh": t.fp32_bytes / t.stored_bytes if t.stored_bytes else None,
                }
                for t in self.tensors
            ],
            "totals": self.totals(),
            "fp32_bytes": fp32,
            "file_bytes": self.file_bytes,
            "ratio_pruning": fp32 / pruned if pruned else None,
            "ratio_quantisation": fp32 / packed if packed else None,
            "ratio_huffman": fp32 / stored if stored else None,
            "ratio_file": fp32 / self.file_bytes,
        }

    def format_table(self) -> str:
        d = self.to_dict()
        head = ("tensor", "shape", "enc", "kept%", "bits", "idx", "w bits(H)", "i bits(H)", "fillers", "stored B", "P+Q", "P+Q+H")
        rows = [head]
        for t in d["tensors"]:
            comp = t["encoding"] != "raw"
            rows.append((
                t["name"] + (" *" if t["protected"] else ""),
                "×".join(map(str, t["shape"])) or "scalar",
                t["encoding"],
                f"{t['kept_percent']:.1f}",
                str(t["bits"]) if comp else "-",
                str(t["index_bits"]) if t["encoding"] == "sparse" else "-",
                f"{t['weight_bits_huffman']:.2f}" if comp and t["coding"] == "huffman" else "-",
                f"{t['index_bits_huffman']:.2f}" if t["encoding"] == "sparse" and t["coding"] == "huffman" else "-",
                f"{t['fillers']:,}" if t["encoding"] == "sparse" else "-",
                f"{t['stored_bytes']:,}",
                f"{t['ratio_pq']:.1f}×" if comp and t["ratio_pq"] else "-",
                f"{t['ratio_pqh']:.1f}×" if comp and t["ratio_pqh"] else "-",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        if any(t["protected"] for t in d["tensors"]):
            lines.append("* protected by default (first conv, last linear, depthwise): global sparsity/threshold/bits do not apply")
        lines.append("")
        tot = d["totals"]
        lines.append("bytes: " + ", ".join(f"{k} {v:,}" for k, v in tot.items() if v) + f"  = {sum(tot.values()):,} (file {d['file_bytes']:,})")

        def ratio(x):
            return f"{x:.1f}×" if x else "-"

        lines.append(
            f"fp32 {d['fp32_bytes']:,} B → pruning {ratio(d['ratio_pruning'])}, +quantisation {ratio(d['ratio_quantisation'])}, "
            f"+Huffman {ratio(d['ratio_huffman'])} (weights); whole file {d['file_bytes']:,} B = {ratio(d['ratio_file'])}"
        )
        return "\n".join(lines)


def save_file(
    tensors: Mapping[str, object],
    path: str | os.PathLike,
    rules=None,
    metadata: Mapping[str, str] | None = None,
    *,
    options: Mapping | None = None,
    producer: Mapping[str, str] | None | str = "default",
    progress: Callable[[int, int, str], None] | None = None,
    graph: Mapping | object | None = None,
) -> CompressionReport:
    """Compress tensors into a ``.cmz`` file, atomically, and report sizes.

    With no ``rules`` and no ``options`` the result is near-lossless: float
    tensors with ≥ 2 dims and ≥ 1024 elements become 8-bit row-scaled
    codebooks, Huffman-coded; everything else is stored raw (spec §6,
    :mod:`cmodel.encoder` for the reasons).

    Args:
        tensors: name → numpy array, torch tensor or :class:`Prequantised`
            (stored with exactly its codes, codebook and scales), kept in
            the order given.
        path: the target; it is replaced only once the new file is complete.
        rules: glob pattern → option dict (or a list of (pattern, options)
            pairs). Every matching pattern applies, in order, later ones
            overriding earlier ones. Keys: ``skip``, ``compress``,
            ``sparsity``, ``threshold``, ``bits``, ``index_bits`` (int or
            ``'auto'``), ``order`` (``row``/``col``), ``coding``
            (``huffman``/``packed``), ``codebook_dtype``, ``scale``
            (``row``/``none``), ``scale_dtype``, ``chunk_symbols``,
            ``raw_dtype`` (``keep``, or ``float16`` to store float tensors
            that stay raw as float16).
            ``{"*": {"skip": True}}`` stores everything raw (lossless).
        metadata: str → str pairs stored in the header.
        options: global options (same keys) applied before the rules; the
            lossy ones (sparsity, threshold, bits) skip protected tensors
            (first conv, last linear, depthwise convs).
        producer: the header's producer map (default: ``PRODUCER``, this
            package; None omits it, as the golden vectors do).
        progress: called as ``progress(i, n, name)`` before each tensor.
        graph: the network's graph (spec §10), stored in the header: a
            :class:`cmodel.runtime.graph.Graph` or its header map
            (``graph_to_header``).  Only its being a map is checked here;
            :func:`cmodel.save_model` validates it against the tensors.

    Returns:
        A :class:`CompressionReport`; ``print(report.format_table())``.

    Raises:
        CmzError: ``check='input'`` for an unsupported tensor, name or
            metadata; ``check='encoder_options'`` for a bad option or rule.

    Example:
        >>> cmodel.save_file(sd, "m.cmz", rules={"fc*": {"sparsity": 0.9, "bits": 5}})  # doctest: +SKIP
    """
    if not isinstance(tensors, Mapping):
        raise CmzError("input", f"tensors: expected a mapping of name to tensor; found {type(tensors).__name__}")
    arrays = {}
    prequantised = {}
    for name, value in tensors.items():
        if type(name) is not str:
            raise CmzError("input", f"tensor names: expected str; found {type(name).__name__} {name!r}")
        if isinstance(value, Prequantised):
            prequantised[name] = value
            arrays[name] = (value.dequantize(), "float32")
        else:
            arrays[name] = to_numpy(name, value)
    plans = plan(arrays, rules, options, prequantised)
    if producer == "default":
        producer = PRODUCER
    if graph is not None and not isinstance(graph, Mapping):
        if not callable(getattr(graph, "to_header", None)):
            raise CmzError("input", f"graph: expected a Graph or its header map; found {type(graph).__name__}")
        graph = graph.to_header()
    w = ContainerWriter(path, metadata=dict(metadata or {}), producer=dict(producer) if producer else None, graph=dict(graph) if graph is not None else None)
    reports = []
    try:
        for i, p in enumerate(plans):
            a, dtype = arrays[p.name]
            if progress:
                progress(i, len(plans), p.name)
            if p.compress:
                params, segs, rep = _encode_tensor(p, a, dtype)
                w.add_tensor(p.name, a.shape, dtype, rep.encoding, params, segs)
            else:
                fp32 = a.size * 4 if dtype in C.FLOAT_DTYPES else a.nbytes
                if p.options["raw_dtype"] == "float16" and dtype in ("float32", "float64"):
                    a, dtype = a.astype("<f2"), "float16"
                w.add_tensor(p.name, a.shape, dtype, "raw", {}, {"data": a.reshape(-1).view(np.uint8)})
                rep = TensorReport(p.name, a.shape, dtype, "raw", p.protected, a.size, fp32, a.size, bytes={"raw": a.nbytes})
            reports.append(rep)
            arrays[p.name] = None  # drop our reference early; the writer holds the payloads
        if progress:
            progress(len(plans), len(plans), "")
        w.write()
    except BaseException:
        w.abort()
        raise
    header = w.header_length
    file_bytes = os.path.getsize(path)
    stored = sum(r.stored_bytes for r in reports)
    padding = file_bytes - C.PREAMBLE_SIZE - header - stored
    return CompressionReport(os.fspath(path), reports, C.PREAMBLE_SIZE, header, padding, file_bytes)
