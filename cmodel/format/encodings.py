"""Tensor encodings (spec §6): one class per encoding, registered by name.

An encoding knows how to check a record's sizes against its shape and dtype
(before any data is read), how to check its data once the segment CRCs have
been verified, and how to decode it to a dense numpy array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import constants as C
from ..codecs import huffman, entries as sparse
from ..errors import CmzError
from .header import TensorRecord

# A function returning the CRC-verified bytes of one segment of a record.
SegmentBytes = Callable[[TensorRecord, str], memoryview]

REGISTRY: dict[str, "Encoding"] = {}


def register(cls):
    REGISTRY[cls.name] = cls()
    return cls


class Encoding:
    name = ""

    def check_record(self, rec: TensorRecord) -> None:
        """Check sizes implied by shape/dtype/params; no data is read."""
        raise NotImplementedError

    def check_data(self, rec: TensorRecord, seg: SegmentBytes) -> None:
        """Check the content of CRC-verified segments (spec §7, data stage)."""
        raise NotImplementedError

    def decode(self, rec: TensorRecord, seg: SegmentBytes) -> np.ndarray:
        """Return the dense tensor (after ``check_data``)."""
        raise NotImplementedError


def storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(C.DTYPES[dtype][0])


@register
class Raw(Encoding):
    """Little-endian C-order bytes of the tensor (spec §6.1)."""

    name = "raw"

    def check_record(self, rec):
        expected = rec.numel * C.DTYPES[rec.dtype][1]
        found = rec.segments["data"].length
        if found != expected:
            raise CmzError(
                "segment",
                f"tensor {rec.name!r}: expected a data segment of {expected} bytes "
                f"(shape {list(rec.shape)}, {rec.dtype}); found {found}",
            )

    def check_data(self, rec, seg):
        if rec.dtype == "bool":
            a = np.frombuffer(seg(rec, "data"), dtype=np.uint8)
            bad = [(int(i), int(a[i])) for i in np.flatnonzero(a > 1)[:1]]
            del a  # a view into the map: must not outlive this frame in a traceback
            if bad:
                i, v = bad[0]
                raise CmzError("data", f"tensor {rec.name!r}: expected bool bytes 0 or 1; found {v} at element {i}")

    def decode(self, rec, seg):
        a = np.frombuffer(seg(rec, "data"), dtype=storage_dtype(rec.dtype))
        if rec.dtype == "bfloat16":
            out = (a.astype(np.uint32) << 16).view(np.float32)
        elif rec.dtype == "bool":
            out = a.view(np.bool_).copy()
        else:
            out = a.astype(a.dtype.newbyteorder("="), copy=True)
        return out.reshape(rec.shape)


# --- compressed encodings (spec §6.2–§6.5) ----------------------------------


@dataclass(frozen=True, eq=False)
class Compressed:
    """A codebook or sparse tensor in the packed form kernels run on.

    ``entries`` is the LSB-first stream of ``n_entries`` fields of ``width``
    bits: ``delta | code << index_bits`` for sparse tensors, the plain code for
    codebook tensors (``index_bits`` 0).  For ``packed`` files it is a
    read-only view of the file; Huffman streams are decoded into it once.
    ``codebook`` and ``scales`` are float32 (exact widenings of what is stored).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    rows: int
    cols: int
    bits: int
    index_bits: int
    order: str
    codebook: np.ndarray
    scales: np.ndarray | None
    pointers: np.ndarray | None
    entries: np.ndarray
    n_entries: int

    @property
    def width(self) -> int:
        return self.bits + self.index_bits

    def fillers(self) -> int:
        """Number of filler entries (sparse; 0 for codebook tensors)."""
        if self.encoding != "sparse":
            return 0
        return sparse.count_fillers(sparse.unpack_entries(self.entries, self.n_entries, self.index_bits, self.bits)[1])

    def dense(self) -> np.ndarray:
        """The decoded tensor: ``float32(scale[row]) * codebook[code]`` in
        float32, then cast to ``dtype`` (spec §6.2)."""
        if self.encoding == "sparse":
            d, c = sparse.unpack_entries(self.entries, self.n_entries, self.index_bits, self.bits)
            codes = sparse.relative_index_decode(self.pointers, d, c, (self.rows, self.cols), self.index_bits, self.order)
        else:
            codes = sparse.unpack_bits(self.entries, self.bits, self.n_entries).reshape(self.rows, self.cols)
        out = self.codebook[codes]
        if self.scales is not None:
            out *= self.scales[:, None]
        return cast_float32(out, self.dtype).reshape(self.shape)


def cast_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 → the record dtype; bfloat16 rounds to nearest even and is
    returned widened back to float32, as ``read`` returns bfloat16."""
    if dtype == "bfloat16":
        u = a.view(np.uint32)
        rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) & np.uint32(0xFFFF0000)
        return np.where(np.isnan(a), a, rounded.view(np.float32))
    return a.astype(dtype)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix view ``[shape[0], prod(shape[1:])]`` (a scalar is 1×1)."""
    if not shape:
        return 1, 1
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols


def _size_error(rec, role, expected, why):
    found = rec.segments[role].length
    if found != expected:
        raise CmzError("segment", f"tensor {rec.name!r}: expected a {role} segment of {expected} bytes ({why}); found {found}")


def _n_chunks(n: int, chunk: int) -> int:
    return -(-n // chunk)


class _Shared(Encoding):
    """What codebook and sparse tensors have in common: a codebook, optional
    row scales, and one or two Huffman-coded streams."""

    def _symbols(self, rec) -> int:
        raise NotImplementedError

    def check_record(self, rec):
        p = rec.params
        rows, _ = matrix_shape(rec.shape)
        b = p["bits"]
        _size_error(rec, "codebook", (1 << b) * C.DTYPES[p["codebook_dtype"]][1], f"2**{b} {p['codebook_dtype']} values")
        if p["scale"] != "none":
            _size_error(rec, "scales", rows * C.DTYPES[p["scale"]][1], f"{rows} rows of {p['scale']}")
        if p["coding"] == "huffman":
            n = self._symbols(rec)
            chunks = _n_chunks(n, p["chunk_symbols"])
            for field, bits in self._streams(rec):
                _size_error(rec, f"{field}_lengths", 1 << bits, f"one code length per symbol of 2**{bits}")
                _size_error(rec, f"{field}_chunks", 8 * (chunks + 1), f"{chunks} chunks + 1 uint64 offsets")
                stream = rec.segments[f"{field}s"].length
                if n > 8 * stream:
                    raise CmzError("segment", f"tensor {rec.name!r}: expected a {field}s stream of at least {-(-n // 8)} bytes for {n} symbols (≥ 1 bit each); found {stream}")

    def _streams(self, rec):
        raise NotImplementedError

    def _tables(self, rec, seg):
        p = rec.params
        cb = np.frombuffer(seg(rec, "codebook"), dtype=p["codebook_dtype"]).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(cb))[:1]
        if bad.size:
            raise CmzError("codebook", f"tensor {rec.name!r}: expected finite codebook values; found {cb[bad[0]]} at code {int(bad[0])}")
        scales = None
        if p["scale"] != "none":
            scales = np.frombuffer(seg(rec, "scales"), dtype=p["scale"]).astype(np.float32)
            bad = np.flatnonzero(~np.isfinite(scales))[:1]
            if bad.size:
                raise CmzError("codebook", f"tensor {rec.name!r}: expected finite row scales; found {scales[bad[0]]} at row {int(bad[0])}")
        # Every decoded value must be finite in the record's dtype.
        top = float(np.abs(cb).max(initial=0.0)) * (float(np.abs(scales).max(initial=0.0)) if scales is not None else 1.0)
        limit = float(np.finfo(np.float16 if rec.dtype == "float16" else np.float32).max)
        if top > limit:
            raise CmzError("codebook", f"tensor {rec.name!r}: expected |scale × codebook value| ≤ {limit:.6g} (the largest finite {rec.dtype if rec.dtype == 'float16' else 'float32'}); found up to {top:.6g}")
        return cb, scales

    def _huffman(self, rec, seg, field: str) -> np.ndarray:
        n = self._symbols(rec)
        try:
            return huffman.decode(
                seg(rec, f"{field}s"),
                np.frombuffer(seg(rec, f"{field}_chunks"), "<u8"),
                np.frombuffer(seg(rec, f"{field}_lengths"), np.uint8),
                n,
                rec.params["chunk_symbols"],
            )
        except CmzError as e:
            raise CmzError("huffman", f"tensor {rec.name!r} {field}s stream: {e}") from None

    def check_data(self, rec, seg):
        self.load(rec, seg)

    def decode(self, rec, seg):
        return self.load(rec, seg).dense()


@register
class Codebook(_Shared):
    """Dense weight sharing: one b-bit code per element (spec §6.2)."""

    name = "codebook"

    def _symbols(self, rec):
        return rec.numel

    def _streams(self, rec):
        return [("code", rec.params["bits"])]

    def check_record(self, rec):
        super().check_record(rec)
        if rec.params["coding"] == "packed":
            b = rec.params["bits"]
            _size_error(rec, "codes", -(-rec.numel * b // 8), f"{rec.numel} codes of {b} bits")

    def load(self, rec, seg) -> Compressed:
        p = rec.params
        cb, scales = self._tables(rec, seg)
        rows, cols = matrix_shape(rec.shape)
        if p["coding"] == "huffman":
            entries = sparse.pack_bits(self._huffman(rec, seg, "code"), p["bits"])
        else:
            entries = np.frombuffer(seg(rec, "codes"), np.uint8)
            try:
                sparse.unpack_bits(entries, p["bits"], rec.numel)  # checks the padding bits
            except CmzError as e:
                raise CmzError("entries", f"tensor {rec.name!r} codes: {e}") from None
        return Compressed(rec.name, rec.shape, rec.dtype, "codebook", rows, cols, p["bits"], 0, "row", cb, scales, None, entries, rec.numel)


@register
class Sparse(_Shared):
    """Relative-index entries with fillers (spec §6.3)."""

    name = "sparse"

    def _symbols(self, rec):
        return rec.params["n_entries"]

    def _streams(self, rec):
        return [("code", rec.params["bits"]), ("delta", rec.params["index_bits"])]

    def check_record(self, rec):
        super().check_record(rec)
        p = rec.params
        n = p["n_entries"]
        if n > rec.numel:
            raise CmzError("segment", f"tensor {rec.name!r}: expected n_entries ≤ the element count {rec.numel} (each entry covers ≥ 1 position); found {n}")
        if n >= 1 << (8 * C.DTYPES[p["pointer_dtype"]][1]):
            raise CmzError("segment", f"tensor {rec.name!r}: expected a pointer_dtype that holds {n} entries; found {p['pointer_dtype']!r}")
        rows, cols = matrix_shape(rec.shape)
        lines = rows if p["order"] == "row" else cols
        _size_error(rec, "pointers", (lines + 1) * C.DTYPES[p["pointer_dtype"]][1], f"{lines} {p['order']}s + 1 {p['pointer_dtype']} pointers")
        if p["coding"] == "packed":
            w = p["index_bits"] + p["bits"]
            _size_error(rec, "entries", -(-n * w // 8), f"{n} entries of {w} bits")

    def load(self, rec, seg) -> Compressed:
        p = rec.params
        r, b, n = p["index_bits"], p["bits"], p["n_entries"]
        cb, scales = self._tables(rec, seg)
        if np.frombuffer(seg(rec, "codebook"), dtype=p["codebook_dtype"])[:1].view(np.uint8).any():
            raise CmzError("codebook", f"tensor {rec.name!r}: expected codebook[0] to be +0.0 (code 0 is the zero of fillers); found {cb[0]!r}")
        rows, cols = matrix_shape(rec.shape)
        pointers = np.frombuffer(seg(rec, "pointers"), "<" + C.DTYPES[p["pointer_dtype"]][0][1:])
        if p["coding"] == "huffman":
            codes = self._huffman(rec, seg, "code")
            deltas = self._huffman(rec, seg, "delta")
            entries = None
        else:
            entries = np.frombuffer(seg(rec, "entries"), np.uint8)
            try:
                deltas, codes = sparse.unpack_entries(entries, n, r, b)
            except CmzError as e:
                raise CmzError("entries", f"tensor {rec.name!r} entries: {e}") from None
        try:
            sparse.validate_entries(pointers, deltas, codes, (rows, cols), r, p["order"], 1 << b)
        except CmzError as e:
            raise CmzError(e.check, f"tensor {rec.name!r}: {e}") from None
        if entries is None:
            entries = sparse.pack_entries(deltas, codes, r, b)
        return Compressed(rec.name, rec.shape, rec.dtype, "sparse", rows, cols, b, r, p["order"], cb, scales, pointers, entries, n)
