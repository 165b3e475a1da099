"""The compression report: where every byte of a written ``.cmz`` goes, per
tensor and in total, with the Deep Compression paper's stage ratios
(DESIGN §4 step 5)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
