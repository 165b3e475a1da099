"""Hostile compressed ``.cmz`` files: ``codebook`` and ``sparse`` tensors
(DESIGN §3, §6; constants.CHECKS).

Each file starts as a valid one written by ``cmodel.save_file``; the test
parses it into (header map, segment payloads), changes one thing, and
rebuilds it with :func:`build`, which lays the segments out and recomputes
every length and CRC, so the intended defect is the only one.  One attack per
test, with a comment naming it.  Each must raise CmzError with the expected
``check`` and a message naming the problem, from ``cmodel.open`` or, for
defects in segment contents, from ``read`` / ``read_compressed`` /
``verify`` / ``load_file`` — before any kernel runs on the bad data — and
``cmz verify`` must exit 1 with one line on stderr.

Raw-tensor and container attacks live in test_hostile.py.
"""

from __future__ import annotations

import copy
import struct
import zlib

import msgpack
import numpy as np
import pytest

import cmodel
from flips import undetected_byte_flips
from test_hostile import cli_rejects
from cmodel.codecs import entries as sparse
from cmodel.codecs import huffman
from cmodel.format import constants as C
from cmodel.errors import CmzError

# --- parsing and rebuilding files ---------------------------------------------------


def align(n: int) -> int:
    return -(-n // C.ALIGNMENT) * C.ALIGNMENT


def parse(blob: bytes) -> tuple[dict, dict]:
    """``(header map, {(tensor name, role): payload bytes})`` of a valid file."""
    magic, major, minor, flags, hlen, hcrc, reserved = struct.unpack(C.PREAMBLE_FORMAT, blob[: C.PREAMBLE_SIZE])
    assert magic == C.MAGIC and zlib.crc32(blob[32 : 32 + hlen]) == hcrc
    hdr = msgpack.unpackb(blob[32 : 32 + hlen], raw=False)
    start = align(32 + hlen)
    payloads = {}
    for t in hdr["tensors"]:
        for role, (off, length, crc) in t["segments"].items():
            payloads[(t["name"], role)] = blob[start + off : start + off + length]
            assert zlib.crc32(payloads[(t["name"], role)]) == crc
    return hdr, payloads


def build(hdr: dict, payloads: dict) -> bytes:
    """A file from a header map and payloads: segments laid out in record
    order and, within a record, in the order of its ``segments`` map, each
    on the next 64-byte boundary; lengths, CRCs, header CRC and padding
    recomputed."""
    hdr = copy.deepcopy(hdr)
    data = bytearray()
    for t in hdr["tensors"]:
        for role in t["segments"]:
            b = bytes(payloads[(t["name"], role)])
            off = align(len(data))
            data += bytes(off - len(data)) + b
            t["segments"][role] = [off, len(b), zlib.crc32(b)]
    h = msgpack.packb(hdr, use_bin_type=True)
    pre = struct.pack(C.PREAMBLE_FORMAT, C.MAGIC, 1, 0, 0, len(h), zlib.crc32(h), 0)
    return pre + h + bytes(align(32 + len(h)) - 32 - len(h)) + bytes(data)


def record(hdr: dict, name: str = "w") -> dict:
    return next(t for t in hdr["tensors"] if t["name"] == name)


# --- the valid files attacks start from --------------------------------------------------

BIAS = np.linspace(-1, 1, 16).astype(np.float32)


def _weights(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


BASES = {
    # sparse: 16×64, 75% pruned, 2-bit codes, 3-bit relative indices (fillers occur)
    "sparse-huffman": ((16, 64), {"sparsity": 0.75, "bits": 2, "index_bits": 3}),
    "sparse-packed": ((16, 64), {"sparsity": 0.75, "bits": 2, "index_bits": 3, "coding": "packed"}),
    "sparse-packed-col": ((16, 64), {"sparsity": 0.75, "bits": 3, "index_bits": 2, "coding": "packed", "order": "col"}),
    "sparse-huffman-noscale": ((16, 64), {"sparsity": 0.75, "bits": 2, "index_bits": 3, "scale": "none"}),
    # codebook: 2-bit Huffman; 3-bit packed over 33×33 (3267 bits: 5 padding bits)
    "codebook-huffman": ((16, 64), {"bits": 2}),
    "codebook-packed": ((33, 33), {"bits": 3, "coding": "packed"}),
    # Huffman codes in 8 chunks of 128 symbols
    "codebook-chunked": ((16, 64), {"bits": 4, "chunk_symbols": 128}),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bases")
    out = {}
    for key, (shape, opts) in BASES.items():
        p = d / f"{key}.cmz"
        cmodel.save_file({"w": _weights(shape, 1), "b": BIAS}, p, rules={"w": {"compress": True, **opts}})
        out[key] = p.read_bytes()
    return out


def base(bases, key):
    hdr, payloads = parse(bases[key])
    return hdr, record(hdr), payloads


def arr(payloads, role, dtype, name="w"):
    """A writable copy of a segment as an array."""
    return np.frombuffer(payloads[(name, role)], dtype).copy()


# --- asserting ---------------------------------------------------------------------------


def rejects(tmp_path, capsys, blob, check, fragment, *, deferred=None):
    """``blob`` fails ``check`` with ``fragment`` in the message: at open, or
    (``deferred`` = a tensor name) on read, read_compressed, verify and
    load_file while open succeeds.  Then the same through ``cmz verify``."""
    assert check in C.CHECKS
    p = tmp_path / "hostile.cmz"
    p.write_bytes(blob)
    errors = []
    if deferred is None:
        with pytest.raises(CmzError) as ei:
            cmodel.open(p)
        errors.append(ei.value)
    else:
        with cmodel.open(p) as f:  # structure is sound: open succeeds
            assert deferred in f.tensor_names()
        uses = (lambda f: f.read(deferred), lambda f: f.read_compressed(deferred), lambda f: f.verify())
        for use in uses:
            with pytest.raises(CmzError) as ei:
                with cmodel.open(p) as f:
                    use(f)
            errors.append(ei.value)
        with pytest.raises(CmzError) as ei:
            cmodel.load_file(p)
        errors.append(ei.value)
        with cmodel.open(p) as f:
            assert f.read("b").tolist() == BIAS.tolist()  # the other tensor still reads
    for e in errors:
        assert e.check == check, str(e)
        assert fragment in str(e), str(e)
    cli_rejects(p, check, capsys)


def test_build_reproduces_the_writer_byte_for_byte(bases, tmp_path):
    # The helper itself: parse + build of an untouched file gives it back, so
    # every file below differs from a valid one only by its edit.
    for key, blob in bases.items():
        assert build(*parse(blob)) == blob, key
        p = tmp_path / f"{key}.cmz"
        p.write_bytes(blob)
        with cmodel.open(p) as f:
            f.verify()
            assert f.record("w").encoding == ("sparse" if key.startswith("sparse") else "codebook")


# --- header parameters (check "params", at open) ---------------------------------------------


@pytest.mark.parametrize("bits", [0, 9])
def test_bits_out_of_range(bases, tmp_path, capsys, bits):
    # Attack: bits 0 (an empty codebook) or 9 (codes that do not fit a byte).
    hdr, rec, pl = base(bases, "sparse-huffman")
    rec["bits"] = bits
    rejects(tmp_path, capsys, build(hdr, pl), "params", f"expected bits an int in 1..8; found int {bits}")


@pytest.mark.parametrize("index_bits", [0, 9])
def test_index_bits_out_of_range(bases, tmp_path, capsys, index_bits):
    # Attack: relative indices of 0 or 9 bits.
    hdr, rec, pl = base(bases, "sparse-packed")
    rec["index_bits"] = index_bits
    rejects(tmp_path, capsys, build(hdr, pl), "params", "expected index_bits an int in 1..8")


def test_unknown_order(bases, tmp_path, capsys):
    # Attack: an order that is neither row nor col.
    hdr, rec, pl = base(bases, "sparse-packed")
    rec["order"] = "diag"
    rejects(tmp_path, capsys, build(hdr, pl), "params", "expected order one of ['row', 'col']; found str 'diag'")


@pytest.mark.parametrize("key", ["sparse-packed", "codebook-huffman"])
def test_unknown_coding(bases, tmp_path, capsys, key):
    # Attack: coding 'zstd', not defined in 1.0.
    hdr, rec, pl = base(bases, key)
    rec["coding"] = "zstd"
    rejects(tmp_path, capsys, build(hdr, pl), "params", "expected coding one of ['packed', 'huffman']; found str 'zstd'")


@pytest.mark.parametrize("key", ["sparse-huffman", "codebook-huffman"])
def test_chunk_symbols_missing_with_huffman(bases, tmp_path, capsys, key):
    # Attack: a Huffman stream without its chunk size (how many symbols per chunk?).
    hdr, rec, pl = base(bases, key)
    del rec["chunk_symbols"]
    rejects(tmp_path, capsys, build(hdr, pl), "params", "expected chunk_symbols exactly when coding is 'huffman'; found coding 'huffman' without it")


@pytest.mark.parametrize("key", ["sparse-packed", "codebook-packed"])
def test_chunk_symbols_with_packed(bases, tmp_path, capsys, key):
    # Attack: a chunk size on a packed stream (a key no reader looks at).
    hdr, rec, pl = base(bases, key)
    rec["chunk_symbols"] = 64
    rejects(tmp_path, capsys, build(hdr, pl), "params", "found coding 'packed' with it")


@pytest.mark.parametrize("chunk_symbols", [0, 2**24 + 1, -1])
def test_chunk_symbols_out_of_range(bases, tmp_path, capsys, chunk_symbols):
    # Attack: chunk size 0 (division by zero), or beyond the limit.
    hdr, rec, pl = base(bases, "codebook-huffman")
    rec["chunk_symbols"] = chunk_symbols
    rejects(tmp_path, capsys, build(hdr, pl), "params", "expected chunk_symbols an int in 1..")


@pytest.mark.parametrize("dtype", ["int32", "bool", "uint8"])
def test_compressed_tensor_with_integer_dtype(bases, tmp_path, capsys, dtype):
    # Attack: a codebook tensor claiming an integer dtype (decoded floats
    # would be cast to garbage integers).
    hdr, rec, pl = base(bases, "codebook-packed")
    rec["dtype"] = dtype
    rejects(tmp_path, capsys, build(hdr, pl), "params", f"expected a float dtype ['float64', 'float32', 'float16', 'bfloat16'] for a compressed tensor; found '{dtype}'")


@pytest.mark.parametrize("field, value", [("codebook_dtype", "float64"), ("scale", "row"), ("pointer_dtype", "int32"), ("n_entries", -1), ("bits", "2"), ("bits", 2.0), ("bits", True)])
def test_bad_parameter_values(bases, tmp_path, capsys, field, value):
    # Attack: a parameter of the wrong type or outside its allowed values.
    hdr, rec, pl = base(bases, "sparse-packed")
    rec[field] = value
    rejects(tmp_path, capsys, build(hdr, pl), "params", f"expected {field}")


def test_sparse_key_on_a_codebook_tensor(bases, tmp_path, capsys):
    # Attack: a key another encoding defines (order on a dense codebook).
    hdr, rec, pl = base(bases, "codebook-packed")
    rec["order"] = "row"
    rejects(tmp_path, capsys, build(hdr, pl), "tensor_keys", "unknown key 'order'")


@pytest.mark.parametrize("key", ["n_entries", "pointer_dtype", "index_bits", "scale"])
def test_missing_sparse_key(bases, tmp_path, capsys, key):
    # Attack: a sparse record without one of its required keys.
    hdr, rec, pl = base(bases, "sparse-packed")
    del rec[key]
    rejects(tmp_path, capsys, build(hdr, pl), "tensor_keys", f"missing required key {key!r}")


# --- segment sets and sizes (check "segment", at open) ----------------------------------------


def test_scales_segment_when_scale_is_none(bases, tmp_path, capsys):
    # Attack: scale 'none' but a scales segment still present (bytes no one checks).
    hdr, rec, pl = base(bases, "sparse-huffman")
    rec["scale"] = "none"
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "unknown key 'scales'")


def test_scale_without_scales_segment(bases, tmp_path, capsys):
    # Attack: scale 'float32' with no scales segment to read them from.
    hdr, rec, pl = base(bases, "sparse-huffman-noscale")
    rec["scale"] = "float32"
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "missing required key 'scales'")


def test_huffman_segments_on_a_packed_record(bases, tmp_path, capsys):
    # Attack: coding switched to packed, Huffman segments left in place.
    hdr, rec, pl = base(bases, "codebook-huffman")
    rec["coding"] = "packed"
    del rec["chunk_symbols"]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "unknown key 'code_chunks'")


@pytest.mark.parametrize("key, dtype", [("sparse-huffman", "<f4"), ("codebook-packed", "<f4")])
def test_codebook_shorter_than_2_to_the_bits(bases, tmp_path, capsys, key, dtype):
    # Attack: a codebook of 2**bits - 1 values.  A code beyond the codebook
    # cannot exist otherwise (b-bit codes, 2**b values), so this is the one
    # way to get there, and it is refused before any data is read.
    hdr, rec, pl = base(bases, key)
    b = rec["bits"]
    pl[("w", "codebook")] = pl[("w", "codebook")][:-4]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", f"expected a codebook segment of {4 << b} bytes (2**{b} float32 values); found {(4 << b) - 4}")


def test_codebook_longer_than_2_to_the_bits(bases, tmp_path, capsys):
    # Attack: extra codebook values (hidden bytes).
    hdr, rec, pl = base(bases, "codebook-huffman")
    pl[("w", "codebook")] += bytes(4)
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a codebook segment of 16 bytes")


def test_bits_changed_without_the_codebook(bases, tmp_path, capsys):
    # Attack: bits raised to 3 over a 2-bit file: codes would index past the
    # 4-value codebook; the codebook size no longer matches.
    hdr, rec, pl = base(bases, "sparse-packed")
    rec["bits"] = 3
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a codebook segment of 32 bytes (2**3 float32 values); found 16")


def test_scales_of_the_wrong_size(bases, tmp_path, capsys):
    # Attack: one scale fewer than rows (the last row would read past it).
    hdr, rec, pl = base(bases, "sparse-huffman")
    pl[("w", "scales")] = pl[("w", "scales")][:-2]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a scales segment of 32 bytes (16 rows of float16); found 30")


@pytest.mark.parametrize("field", ["code", "delta"])
def test_lengths_segment_of_the_wrong_size(bases, tmp_path, capsys, field):
    # Attack: a Huffman table with one length more than the alphabet has symbols.
    hdr, rec, pl = base(bases, "sparse-huffman")
    bits = rec["bits"] if field == "code" else rec["index_bits"]
    pl[("w", f"{field}_lengths")] += b"\x00"
    rejects(tmp_path, capsys, build(hdr, pl), "segment", f"expected a {field}_lengths segment of {1 << bits} bytes (one code length per symbol of 2**{bits}); found {(1 << bits) + 1}")


def test_chunk_offsets_segment_of_the_wrong_size(bases, tmp_path, capsys):
    # Attack: one chunk offset missing.
    hdr, rec, pl = base(bases, "codebook-chunked")
    pl[("w", "code_chunks")] = pl[("w", "code_chunks")][:-8]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a code_chunks segment of 72 bytes (8 chunks + 1 uint64 offsets); found 64")


def test_pointers_segment_of_the_wrong_size(bases, tmp_path, capsys):
    # Attack: pointers for one line fewer than the matrix has.
    hdr, rec, pl = base(bases, "sparse-packed-col")
    item = C.DTYPES[rec["pointer_dtype"]][1]
    pl[("w", "pointers")] = pl[("w", "pointers")][:-item]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", f"expected a pointers segment of {65 * item} bytes (64 cols + 1")


def test_packed_entries_of_the_wrong_size(bases, tmp_path, capsys):
    # Attack: packed entries one byte short of n_entries × (r + b) bits.
    hdr, rec, pl = base(bases, "sparse-packed")
    pl[("w", "entries")] = pl[("w", "entries")][:-1]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a entries segment of")


def test_packed_codes_of_the_wrong_size(bases, tmp_path, capsys):
    # Attack: dense packed codes one byte short of numel × b bits.
    hdr, rec, pl = base(bases, "codebook-packed")
    pl[("w", "codes")] = pl[("w", "codes")][:-1]
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a codes segment of 409 bytes (1089 codes of 3 bits); found 408")


def test_n_entries_larger_than_the_element_count(bases, tmp_path, capsys):
    # Attack: more entries than positions (each entry covers at least one);
    # the entries segment is grown to match, so only the count is wrong.
    hdr, rec, pl = base(bases, "sparse-packed")
    n = 16 * 64 + 1
    rec["n_entries"] = n
    pl[("w", "entries")] = bytes(-(-n * 5 // 8))
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected n_entries ≤ the element count 1024 (each entry covers ≥ 1 position); found 1025")


def test_n_entries_larger_than_the_stream_can_hold(tmp_path, capsys):
    # Attack: a Huffman stream claiming more symbols than 8 per byte (every
    # code is at least one bit).  The base file codes each entry's code with
    # the one-symbol table (1 bit each), so one more entry cannot fit.
    x = np.zeros((64, 64), np.float32)
    x[:, ::2] = 0.5  # 2048 equal kept values, gap 1: one code, no fillers
    src = tmp_path / "src.cmz"
    cmodel.save_file({"w": x, "b": BIAS}, src, rules={"w": {"threshold": 0.0, "bits": 1, "index_bits": 1, "compress": True}})
    hdr, pl = parse(src.read_bytes())
    rec = record(hdr)
    assert rec["n_entries"] == 2048 and len(pl[("w", "codes")]) == 256
    rec["n_entries"] = 2049
    rejects(tmp_path, capsys, build(hdr, pl), "segment", "expected a codes stream of at least 257 bytes for 2049 symbols (≥ 1 bit each); found 256")


def test_pointer_dtype_too_narrow_for_n_entries(bases, tmp_path, capsys):
    # Attack: a pointer dtype that cannot hold the entry count (pointers
    # would wrap).  The smallest pointer type the format allows is used for
    # n_entries just past its range.
    hdr, rec, pl = base(bases, "sparse-packed")
    narrow = C.PARAMS["pointer_dtype"][1][0]
    limit = 1 << (8 * C.DTYPES[narrow][1])
    if limit > 1 << 20:
        pytest.skip(f"the narrowest pointer dtype, {narrow}, needs a file of {limit} entries to overflow")
    rec["shape"] = [1, limit]
    rec["pointer_dtype"] = narrow
    rec["n_entries"] = limit
    pl[("w", "scales")] = pl[("w", "scales")][:2]
    pl[("w", "pointers")] = np.array([0, 0], f"<{C.DTYPES[narrow][0][1:]}").tobytes()
    pl[("w", "entries")] = bytes(-(-limit * 5 // 8))
    rejects(tmp_path, capsys, build(hdr, pl), "segment", f"expected a pointer_dtype that holds {limit} entries")


# --- codebook and scales contents (check "codebook", deferred) --------------------------------


@pytest.mark.parametrize("value", [0.5, -0.0], ids=["nonzero", "negative-zero"])
@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_sparse_codebook_zero_is_not_plus_zero(tmp_path, capsys, value, codebook_dtype):
    # Attack: code 0 (the fillers' and pruned weights' value) is not +0.0;
    # -0.0 would flip the sign of zeros, 0.5 would add weights at every filler.
    src = tmp_path / "src.cmz"
    cmodel.save_file({"w": _weights((16, 64), 1), "b": BIAS}, src, rules={"w": {"sparsity": 0.75, "bits": 2, "codebook_dtype": codebook_dtype}})
    hdr, pl = parse(src.read_bytes())
    cb = arr(pl, "codebook", codebook_dtype)
    assert cb[0] == 0 and not np.signbit(cb[0])
    cb[0] = value
    pl[("w", "codebook")] = cb.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "codebook", "expected codebook[0] to be +0.0", deferred="w")


@pytest.mark.parametrize("key", ["sparse-huffman", "codebook-packed", "codebook-huffman"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_codebook_value(bases, tmp_path, capsys, key, value):
    # Attack: NaN or ±Inf in a used codebook entry (poisons every output).
    hdr, rec, pl = base(bases, key)
    cb = arr(pl, "codebook", "<f4")
    cb[1] = value
    pl[("w", "codebook")] = cb.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "codebook", "expected finite codebook values; found", deferred="w")


def test_nan_in_codebook_padding(bases, tmp_path, capsys):
    # Attack: NaN in the unused last codebook entry (no code points at it).
    hdr, rec, pl = base(bases, "sparse-packed-col")
    cb = arr(pl, "codebook", "<f4")
    cb[-1] = np.nan
    pl[("w", "codebook")] = cb.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "codebook", f"at code {len(cb) - 1}", deferred="w")


@pytest.mark.parametrize("key", ["sparse-huffman", "codebook-packed"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_row_scale(bases, tmp_path, capsys, key, value):
    # Attack: Inf or NaN as a row scale.
    hdr, rec, pl = base(bases, key)
    s = arr(pl, "scales", "<" + C.DTYPES[rec["scale"]][0][1:])
    s[3] = value
    pl[("w", "scales")] = s.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "codebook", "expected finite row scales; found", deferred="w")
    rejects(tmp_path, capsys, build(hdr, pl), "codebook", "at row 3", deferred="w")


# --- Huffman tables and streams (check "huffman", deferred) ------------------------------------


def _lengths(pl, field="code"):
    return arr(pl, f"{field}_lengths", np.uint8)


def test_over_subscribed_table(bases, tmp_path, capsys):
    # Attack: lengths whose Kraft sum exceeds 1 (two symbols share a code).
    hdr, rec, pl = base(bases, "codebook-huffman")
    lengths = _lengths(pl)
    assert np.count_nonzero(lengths) >= 3
    lengths[np.argmax(lengths)] = 1
    lengths[lengths == 0] = 1
    pl[("w", "code_lengths")] = lengths.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "over-subscribed code", deferred="w")


@pytest.mark.parametrize("field", ["code", "delta"])
def test_incomplete_table(bases, tmp_path, capsys, field):
    # Attack: lengths whose Kraft sum is below 1 (some bit patterns decode to nothing).
    hdr, rec, pl = base(bases, "sparse-huffman")
    lengths = _lengths(pl, field)
    assert np.count_nonzero(lengths) >= 3
    lengths[np.argmax(lengths)] += 1
    pl[("w", f"{field}_lengths")] = lengths.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", f"{field}s stream: code lengths: expected a complete prefix code", deferred="w")
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "incomplete code", deferred="w")


def test_code_length_13(bases, tmp_path, capsys):
    # Attack: a code longer than MAX_CODE_LENGTH (12): the one-lookup decode
    # table would be indexed past its 4096 entries.
    hdr, rec, pl = base(bases, "codebook-chunked")
    lengths = _lengths(pl)
    lengths[int(np.argmax(lengths))] = 13
    pl[("w", "code_lengths")] = lengths.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected 0..12 (MAX_CODE_LENGTH); found 13", deferred="w")


def test_single_used_symbol_of_length_2(tmp_path, capsys):
    # Attack: one used symbol with length 2 (the one-symbol code must be the bit 0).
    src = tmp_path / "src.cmz"
    cmodel.save_file({"w": np.full((8, 32), 0.5, np.float32), "b": BIAS}, src, rules={"w": {"compress": True, "bits": 2}})
    hdr, pl = parse(src.read_bytes())
    lengths = _lengths(pl)
    assert np.count_nonzero(lengths) == 1
    lengths[lengths == 1] = 2
    pl[("w", "code_lengths")] = lengths.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected length 1 for the only used symbol", deferred="w")


def test_no_used_symbol_for_a_non_empty_stream(bases, tmp_path, capsys):
    # Attack: an all-zero table for a stream of 1024 codes.
    hdr, rec, pl = base(bases, "codebook-huffman")
    pl[("w", "code_lengths")] = bytes(4)
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected at least one used symbol", deferred="w")


def test_chunk_offsets_not_ending_at_the_stream_length(bases, tmp_path, capsys):
    # Attack: the last chunk offset points past the stream (a read past the segment).
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    off[-1] += 1
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected the last to be the stream length", deferred="w")


def test_chunk_offsets_not_starting_at_zero(bases, tmp_path, capsys):
    # Attack: the first chunk starts inside the stream (skipping bytes).
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    off[0] = 1
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected the first to be 0", deferred="w")


def test_chunk_offsets_decreasing(bases, tmp_path, capsys):
    # Attack: chunk offsets that go backwards (a chunk of negative length).
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    off[3], off[4] = off[4], off[3]
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "expected non-decreasing values", deferred="w")


def test_chunk_claiming_more_than_8_symbols_per_byte(bases, tmp_path, capsys):
    # Attack: chunk offsets that leave a chunk of 128 symbols 15 bytes.
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    off[2] = off[1] + 15
    assert off[3] >= off[2]
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "chunk 1: expected at most 8 symbols per byte (120 for 15 bytes); found 128 symbols", deferred="w")


@pytest.mark.parametrize("chunk", [0, 3, 7])
def test_truncated_chunk(bases, tmp_path, capsys, chunk):
    # Attack: one chunk's last byte removed (offsets adjusted to match): its
    # codes run past its end into the next chunk, or past the stream.
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    stream = bytearray(pl[("w", "codes")])
    del stream[int(off[chunk + 1]) - 1]
    off[chunk + 1 :] -= 1
    pl[("w", "codes")] = bytes(stream)
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", f"chunk {chunk}: expected 128 codes", deferred="w")
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "truncated chunk", deferred="w")


def test_chunk_with_a_trailing_byte(bases, tmp_path, capsys):
    # Attack: an extra byte after a chunk's last code (hidden data).
    hdr, rec, pl = base(bases, "codebook-chunked")
    off = arr(pl, "code_chunks", "<u8")
    stream = bytearray(pl[("w", "codes")])
    stream.insert(int(off[2]), 0)
    off[2:] += 1
    pl[("w", "codes")] = bytes(stream)
    pl[("w", "code_chunks")] = off.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "huffman", "unused trailing bytes", deferred="w")


# --- pointers (check "pointers", deferred) -----------------------------------------------------


def _pointers(rec, pl):
    return arr(pl, "pointers", "<" + C.DTYPES[rec["pointer_dtype"]][0][1:])


@pytest.mark.parametrize("key", ["sparse-huffman", "sparse-packed-col"])
def test_non_monotone_pointers(bases, tmp_path, capsys, key):
    # Attack: two pointers swapped: a line of negative length.
    hdr, rec, pl = base(bases, key)
    p = _pointers(rec, pl)
    i = int(np.flatnonzero(np.diff(p.astype(np.int64)) > 0)[1])
    p[i], p[i + 1] = p[i + 1], p[i]
    pl[("w", "pointers")] = p.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "pointers", f"expected non-decreasing values; found pointers[{i + 1}]", deferred="w")


def test_pointers_not_starting_at_zero(bases, tmp_path, capsys):
    # Attack: the first line starts after entry 0 (entries no line owns).
    hdr, rec, pl = base(bases, "sparse-huffman")
    p = _pointers(rec, pl)
    assert p[1] >= 1
    p[0] = 1
    pl[("w", "pointers")] = p.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "pointers", "pointers[0]: expected 0; found 1", deferred="w")


@pytest.mark.parametrize("delta", [-1, 1])
def test_last_pointer_is_not_n_entries(bases, tmp_path, capsys, delta):
    # Attack: the last line ends before the last entry, or past it.
    hdr, rec, pl = base(bases, "sparse-packed")
    p = _pointers(rec, pl)
    n = rec["n_entries"]
    assert p[-1] == n and p[-2] < n
    p[-1] = n + delta
    pl[("w", "pointers")] = p.tobytes()
    rejects(tmp_path, capsys, build(hdr, pl), "pointers", f"pointers[-1]: expected the entry count {n}; found {n + delta}", deferred="w")


# --- entries (check "entries", deferred) ---------------------------------------------------------


def _set_entries(rec, pl, deltas, codes):
    """Store edited entries in the record's own coding: repacked, or
    Huffman-coded again with a table fitted to the new symbols."""
    r, b = rec["index_bits"], rec["bits"]
    if rec["coding"] == "packed":
        pl[("w", "entries")] = sparse.pack_entries(deltas, codes, r, b).tobytes()
        return
    for field, syms, bits in (("code", codes, b), ("delta", deltas, r)):
        lengths = huffman.code_lengths(np.bincount(syms, minlength=1 << bits))
        stream, offsets = huffman.encode(syms, lengths, rec["chunk_symbols"])
        pl[("w", f"{field}_lengths")] = lengths.tobytes()
        pl[("w", f"{field}s")] = stream
        pl[("w", f"{field}_chunks")] = offsets.astype("<u8").tobytes()


def _entries(rec, pl):
    r, b, n = rec["index_bits"], rec["bits"], rec["n_entries"]
    if rec["coding"] == "packed":
        return sparse.unpack_entries(pl[("w", "entries")], n, r, b)
    out = []
    for field in ("code", "delta"):
        out.append(huffman.decode(pl[("w", f"{field}s")], np.frombuffer(pl[("w", f"{field}_chunks")], "<u8"),
                                  np.frombuffer(pl[("w", f"{field}_lengths")], np.uint8), n, rec["chunk_symbols"]))
    return out[1].copy(), out[0].copy()


@pytest.mark.parametrize("key", ["sparse-packed", "sparse-huffman", "sparse-packed-col"])
def test_deltas_running_past_the_end_of_a_line(bases, tmp_path, capsys, key):
    # Attack: the entries of one line edited so that Σ(delta + 1) exceeds the
    # line length (a kernel would write past the row / read past the column).
    hdr, rec, pl = base(bases, key)
    deltas, codes = _entries(rec, pl)
    p = _pointers(rec, pl).astype(np.int64)
    r = rec["index_bits"]
    line_len = 64 if rec["order"] == "row" else 16
    i = int(np.argmax(np.diff(p)))  # the line with the most entries
    deltas[p[i] : p[i + 1]] = (1 << r) - 1
    assert (p[i + 1] - p[i]) << r > line_len
    _set_entries(rec, pl, deltas, codes)
    rejects(tmp_path, capsys, build(hdr, pl), "entries", f"entries: {rec['order']} {i}, entry", deferred="w")
    rejects(tmp_path, capsys, build(hdr, pl), "entries", f"expected the entries to cover at most the line length {line_len}", deferred="w")


@pytest.mark.parametrize("key", ["sparse-packed", "sparse-huffman"])
def test_code_zero_entry_that_is_not_a_filler(bases, tmp_path, capsys, key):
    # Attack: a code-0 entry whose delta is not 2**r - 1: a pruned weight
    # stored as an entry (a filler in the wrong place shifts a line).
    hdr, rec, pl = base(bases, key)
    deltas, codes = _entries(rec, pl)
    r = rec["index_bits"]
    k = int(np.flatnonzero((codes != 0) & (deltas != (1 << r) - 1))[0])
    codes[k] = 0
    _set_entries(rec, pl, deltas, codes)
    rejects(tmp_path, capsys, build(hdr, pl), "entries", f"entry {k}: expected code 0 only in a filler with delta 2**r - 1 = {(1 << r) - 1}", deferred="w")


def test_packed_codes_with_nonzero_padding_bits(bases, tmp_path, capsys):
    # Attack: data smuggled into the 5 padding bits after the last 3-bit code.
    hdr, rec, pl = base(bases, "codebook-packed")
    codes = bytearray(pl[("w", "codes")])
    assert codes[-1] >> 3 == 0
    codes[-1] |= 0x80
    pl[("w", "codes")] = bytes(codes)
    rejects(tmp_path, capsys, build(hdr, pl), "entries", "expected zero padding in the last byte's 5 high bits; found byte 0x", deferred="w")


def test_packed_entries_with_nonzero_padding_bits(bases, tmp_path, capsys):
    # Attack: data smuggled into the padding bits after the last packed entry.
    hdr, rec, pl = base(bases, "sparse-packed")
    n, w = rec["n_entries"], rec["index_bits"] + rec["bits"]
    tail = n * w % 8
    if not tail:
        pytest.skip("no padding bits in this file")
    entries = bytearray(pl[("w", "entries")])
    entries[-1] |= 0x80
    pl[("w", "entries")] = bytes(entries)
    rejects(tmp_path, capsys, build(hdr, pl), "entries", f"expected zero padding in the last byte's {8 - tail} high bits", deferred="w")


# --- every single-byte change is detected ---------------------------------------------------------


@pytest.mark.parametrize(
    "shape, opts",
    [
        ((4, 24), {"sparsity": 0.7, "bits": 2, "index_bits": 2}),
        ((5, 13), {"bits": 3, "coding": "packed"}),
    ],
    ids=["sparse-huffman", "codebook-packed"],
)
def test_every_single_byte_change_is_detected(tmp_path, shape, opts):
    src = tmp_path / "src.cmz"
    cmodel.save_file({"w": _weights(shape, 3), "b": BIAS[:3]}, src, rules={"w": {"compress": True, **opts}}, metadata={"k": "v"})
    good = src.read_bytes()
    with cmodel.open(src) as f:
        f.verify()
        assert f.record("w").encoding == ("sparse" if "sparsity" in opts else "codebook")
    assert undetected_byte_flips(good, tmp_path / "flip.cmz") == []
