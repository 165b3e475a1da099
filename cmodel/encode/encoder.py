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

import os
from typing import Callable, Mapping

import numpy as np

from .._version import __version__
from ..codecs import entries as sparse
from ..codecs import huffman, quantize
from ..errors import CmzError
from ..format import constants as C
from ..format.container import ContainerWriter
from ..format.encodings import matrix_shape
from ..format.header import segment_roles
from .report import CATEGORY, CompressionReport, TensorReport
from .rules import DEFAULTS, Plan, Prequantised, check_options, plan
from .tensors import to_numpy

PRODUCER = {"name": "cmodel", "version": __version__}


def prune(w: np.ndarray, sparsity: float | None = None, threshold: float | None = None) -> np.ndarray:
    """The encoder's pruning mask (True = kept): magnitude pruning by
    :func:`cmodel.codecs.quantize.prune_mask`, and exact zeros are never kept (a
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
        A :class:`cmodel.codecs.quantize.CodebookResult` over the matrix view.

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
    :mod:`cmodel.encode.encoder` for the reasons).

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
