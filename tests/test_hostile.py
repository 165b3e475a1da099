"""Hostile ``.cmz`` files (spec §6 of DESIGN.md, spec/cmz.md §7).

Every file here is built by hand with struct.pack and msgpack, one attack per
test, with a comment naming the attack.  Each test asserts the CmzError's
``check`` and a fragment of its message, and that ``cmz verify`` exits 1 with
one line on stderr and no traceback.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import msgpack
import pytest

import cmodel
from cmodel.format import constants as C
from cmodel.cli import main as cmz_main
from cmodel.errors import CmzError

CMZ = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "cmz"

# --- building files -----------------------------------------------------------

W = struct.pack("<2f", 1.0, -2.0)  # tensor "w": float32 [2]
M = bytes([1, 0, 1])  # tensor "m": bool [3]


def record(name="w", shape=(2,), dtype="float32", payload=W, offset=0, **changes):
    """A raw tensor record whose data segment holds ``payload`` at ``offset``."""
    r = {
        "name": name,
        "shape": list(shape),
        "dtype": dtype,
        "encoding": "raw",
        "segments": {"data": [offset, len(payload), zlib.crc32(payload)]},
    }
    r.update(changes)
    return r


def records():
    return [record(), record("m", (3,), "bool", M, 64)]


def header(tensors=None, **changes):
    h = {"metadata": {"k": "v"}, "tensors": records() if tensors is None else tensors}
    h.update(changes)
    return h


def data(*segments):
    """The data section: ``(offset, bytes)`` pieces with zero padding between."""
    out = bytearray()
    for off, b in segments:
        out += bytes(off - len(out)) + b
    return bytes(out)


DATA = data((0, W), (64, M))


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def cmz(hdr=None, body=DATA, *, magic=b"\x89CMZ\r\n\x1a\n", major=1, minor=0, flags=0,
        header_length=None, header_crc=None, reserved=0, padding=None) -> bytes:
    """A whole file: preamble, header (a map, or raw bytes), padding, data."""
    h = hdr if isinstance(hdr, bytes) else pack(header() if hdr is None else hdr)
    preamble = struct.pack(
        "<8sHHIQII",
        magic,
        major,
        minor,
        flags,
        len(h) if header_length is None else header_length,
        zlib.crc32(h) if header_crc is None else header_crc,
        reserved,
    )
    pad = bytes(-(32 + len(h)) % 64) if padding is None else padding
    return preamble + h + pad + body


# --- asserting ------------------------------------------------------------------


def rejects(tmp_path, capsys, blob, check, fragment, *, deferred=None):
    """Assert that the file ``blob`` fails ``check`` with ``fragment`` in the
    message: at open, or (``deferred`` = a tensor name) only when that tensor
    is read and on verify.  Then the same through ``cmz verify``."""
    assert check in C.CHECKS
    p = tmp_path / "hostile.cmz"
    p.write_bytes(blob)
    errors = []
    if deferred is None:
        with pytest.raises(CmzError) as ei:
            cmodel.open(p)
        errors.append(ei.value)
    else:
        cmodel.open(p).close()  # structure is sound: open succeeds
        for use in (lambda f: f.read(deferred), lambda f: f.verify()):
            with pytest.raises(CmzError) as ei:
                with cmodel.open(p) as f:
                    use(f)
            errors.append(ei.value)
        with pytest.raises(CmzError) as ei:
            cmodel.load_file(p)
        errors.append(ei.value)
    for e in errors:
        assert e.check == check, str(e)
        assert fragment in str(e)
    cli_rejects(p, check, capsys)
    return p


def cli_rejects(p, check, capsys):
    capsys.readouterr()
    rc = cmz_main(["verify", str(p)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert err.startswith(f"cmz: {p}: ") and err.rstrip().endswith(f"[check: {check}]"), err


def test_the_base_file_is_valid(tmp_path):
    # Every attack below changes one thing in this file.
    p = tmp_path / "base.cmz"
    p.write_bytes(cmz())
    with cmodel.open(p) as f:
        f.verify()
        assert f.read("w").tolist() == [1.0, -2.0]
        assert f.read("m").tolist() == [True, False, True]
    assert cmz_main(["verify", str(p)]) == 0


# --- preamble -------------------------------------------------------------------


def test_empty_file(tmp_path, capsys):
    # Attack: zero-byte file.
    rejects(tmp_path, capsys, b"", "preamble", "expected 32 bytes, found 0")


def test_file_shorter_than_preamble(tmp_path, capsys):
    # Attack: truncated inside the preamble.
    rejects(tmp_path, capsys, cmz()[:31], "preamble", "expected 32 bytes, found 31")


def test_bad_magic(tmp_path, capsys):
    # Attack: another format's magic.
    rejects(tmp_path, capsys, cmz(magic=b"GGUF\x03\x00\x00\x00"), "magic", "expected magic")


def test_magic_mangled_by_text_mode(tmp_path, capsys):
    # Attack: the file went through a text-mode transfer (\r\n -> \n).
    rejects(tmp_path, capsys, cmz().replace(b"\r\n", b"\n"), "magic", "mangled in text mode")


def test_magic_with_high_bit_stripped(tmp_path, capsys):
    # Attack: the file went through a 7-bit transport.
    blob = bytearray(cmz())
    blob[0] &= 0x7F
    rejects(tmp_path, capsys, bytes(blob), "magic", "expected magic")


@pytest.mark.parametrize("major, minor", [(2, 0), (1, 1), (0, 9)])
def test_unsupported_version(tmp_path, capsys, major, minor):
    # Attack: a format version this reader does not list.
    rejects(tmp_path, capsys, cmz(major=major, minor=minor), "version", f"found {major}.{minor}")


def test_nonzero_flags(tmp_path, capsys):
    # Attack: flags set (meaningless in 1.0).
    rejects(tmp_path, capsys, cmz(flags=1), "flags", "expected preamble flags 0; found 0x1")


def test_nonzero_reserved(tmp_path, capsys):
    # Attack: reserved field set.
    rejects(tmp_path, capsys, cmz(reserved=0xDEADBEEF), "reserved", "found 0xdeadbeef")


def test_header_length_beyond_file(tmp_path, capsys):
    # Attack: header length pointing past the end of the file.
    blob = cmz(header_length=len(pack(header())) + 1000)
    rejects(tmp_path, capsys, blob, "header_length", "EOF: reading header")


@pytest.mark.parametrize("length", [C.MAX_HEADER_BYTES + 1, 2**64 - 1])
def test_header_length_over_limit(tmp_path, capsys, length):
    # Attack: huge header length (would make a naive reader allocate it).
    rejects(tmp_path, capsys, cmz(header_length=length), "header_length", "MAX_HEADER_BYTES")


def test_header_crc_mismatch(tmp_path, capsys):
    # Attack: header bytes that do not match the preamble's CRC.
    crc = zlib.crc32(pack(header()))
    rejects(tmp_path, capsys, cmz(header_crc=crc ^ 1), "header_crc", "expected header CRC-32")


def test_nonzero_header_padding(tmp_path, capsys):
    # Attack: bytes smuggled into the padding after the header.
    n = -(32 + len(pack(header()))) % 64
    assert n > 0
    rejects(tmp_path, capsys, cmz(padding=bytes(n - 1) + b"\x01"), "header_padding", "expected zero bytes")


# --- msgpack ----------------------------------------------------------------------


def test_empty_header(tmp_path, capsys):
    # Attack: header length 0 (CRC of no bytes is 0, so the preamble is consistent).
    blob = cmz(b"", b"")
    assert blob[16:] == bytes(48)  # header length 0, CRC 0, reserved 0, 32 bytes of padding
    rejects(tmp_path, capsys, blob, "msgpack", "expected valid msgpack")


def test_header_deeply_nested(tmp_path, capsys):
    # Attack: 100 000 nested arrays (stack exhaustion in a recursive parser).
    h = b"\x83" + pack("metadata") + b"\x80" + pack("tensors") + b"\x90" + pack("x") + b"\x91" * 100_000 + b"\x90"
    rejects(tmp_path, capsys, cmz(h, b""), "msgpack", "expected valid msgpack")


def test_header_not_msgpack(tmp_path, capsys):
    # Attack: 0xc1 is never used by msgpack.
    rejects(tmp_path, capsys, cmz(b"\xc1" * 16, b""), "msgpack", "expected valid msgpack")


def test_header_truncated_msgpack(tmp_path, capsys):
    # Attack: the map ends early (header length and CRC agree with the cut).
    rejects(tmp_path, capsys, cmz(pack(header())[:-5]), "msgpack", "expected valid msgpack")


def test_header_extra_bytes_after_map(tmp_path, capsys):
    # Attack: a second map after the first (a reader keeping the first or last disagrees).
    h = pack(header()) + pack(header(metadata={"k": "evil"}))
    rejects(tmp_path, capsys, cmz(h), "msgpack", "extra bytes after it")


def test_header_msgpack_ext_type(tmp_path, capsys):
    # Attack: an application extension type inside the header.
    h = header(metadata={"k": msgpack.ExtType(5, b"x")})
    rejects(tmp_path, capsys, cmz(h), "msgpack", "extension type 5")


def test_header_msgpack_timestamp_ext_type(tmp_path, capsys):
    # Attack: the predefined timestamp extension (type -1), which msgpack
    # decodes itself without calling ext_hook.  Spec §3.1: "any extension
    # type" is a msgpack failure.
    h = header(metadata={"k": msgpack.Timestamp(0, 0)})
    rejects(tmp_path, capsys, cmz(h), "msgpack", "extension type")


@pytest.mark.parametrize("where", ["top-level", "metadata", "record"])
def test_header_duplicate_map_keys(tmp_path, capsys, where):
    # Attack: a key twice in one map (readers keeping the first or the last disagree).
    if where == "top-level":
        h = b"\x83" + pack("metadata") + pack({}) + pack("tensors") + pack(records()) + pack("metadata") + pack({"k": "v"})
        key = "metadata"
    elif where == "metadata":
        h = b"\x82" + pack("metadata") + b"\x82" + pack("k") + pack("a") + pack("k") + pack("b") + pack("tensors") + pack(records())
        key = "k"
    else:
        r = record()
        body = b"".join(pack(k) + pack(v) for k, v in r.items())
        dup = b"\x86" + body + pack("name") + pack("m")
        h = b"\x82" + pack("metadata") + pack({}) + pack("tensors") + b"\x91" + dup
        key = "name"
    rejects(tmp_path, capsys, cmz(h, data((0, W))), "msgpack", f"found key {key!r} twice")


def test_header_invalid_utf8(tmp_path, capsys):
    # Attack: a str that is not UTF-8.
    h = b"\x82" + pack("metadata") + b"\x81" + pack("k") + b"\xa2\xff\xfe" + pack("tensors") + b"\x90"
    rejects(tmp_path, capsys, cmz(h, b""), "msgpack", "expected valid msgpack")


def test_header_int_map_key(tmp_path, capsys):
    # Attack: a non-str map key.
    rejects(tmp_path, capsys, cmz(header(metadata={1: "v"})), "msgpack", "expected valid msgpack")


def test_header_bin_map_key(tmp_path, capsys):
    # Attack: a bin map key, where spec §3.1 requires str keys.
    rejects(tmp_path, capsys, cmz(header(metadata={b"k": "v"})), "msgpack", "key")


def test_header_bin_and_str_unknown_keys(tmp_path, capsys):
    # Attack: a bin key next to an unknown str key at the top level.
    h = header()
    h[b"graph"] = 1
    h["zzz"] = 2
    rejects(tmp_path, capsys, cmz(h), "msgpack", "key")


def test_header_not_a_map(tmp_path, capsys):
    # Attack: top level is an array.
    rejects(tmp_path, capsys, cmz(pack([header()])), "header_keys", "expected a map; found array")


@pytest.mark.parametrize(
    "hdr, check, fragment",
    [
        (header(tensors=[record(dtype=b"float32")]), "dtype", "found b'float32'"),
        (header(tensors=[record(name=b"w")]), "name", "found bin"),
        (header(metadata={"k": b"v"}), "metadata", "expected str; found bin"),
        (header(tensors=[record(encoding=b"raw")]), "encoding", "found b'raw'"),
    ],
    ids=["dtype", "name", "metadata-value", "encoding"],
)
def test_header_bin_where_str_expected(tmp_path, capsys, hdr, check, fragment):
    # Attack: msgpack bin instead of str.
    rejects(tmp_path, capsys, cmz(hdr, data((0, W))), check, fragment)


# --- header keys ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["metadata", "tensors"])
def test_missing_top_level_key(tmp_path, capsys, key):
    # Attack: a required top-level key left out.
    h = header()
    del h[key]
    rejects(tmp_path, capsys, cmz(h), "header_keys", f"missing required key {key!r}")


def test_unknown_top_level_key(tmp_path, capsys):
    # Attack: an unknown top-level key.
    rejects(tmp_path, capsys, cmz(header(graphs={})), "header_keys", "unknown key 'graphs'")


@pytest.mark.parametrize("graph, found", [([], "found array"), ("g", "found str"), (None, "found nil")])
def test_graph_not_a_map(tmp_path, capsys, graph, found):
    # Attack: the optional graph key holding something other than a map
    # (its content is the runtime's `graph` check, spec §10).
    rejects(tmp_path, capsys, cmz(header(graph=graph)), "header_keys", f"header['graph']: expected a map (spec §10); {found}")


def test_tensors_not_an_array(tmp_path, capsys):
    # Attack: tensors as a map.
    rejects(tmp_path, capsys, cmz(header(tensors={"w": record()})), "header_keys", "expected an array; found map")


def test_too_many_tensors(tmp_path, capsys):
    # Attack: more records than MAX_TENSORS (1 byte each: empty maps).
    h = header(tensors=[{}] * (C.MAX_TENSORS + 1))
    rejects(tmp_path, capsys, cmz(h, b""), "header_keys", "MAX_TENSORS")


def test_metadata_value_int(tmp_path, capsys):
    # Attack: metadata value of the wrong type.
    rejects(tmp_path, capsys, cmz(header(metadata={"k": 1})), "metadata", "expected str; found int")


def test_metadata_not_a_map(tmp_path, capsys):
    # Attack: metadata as an array.
    rejects(tmp_path, capsys, cmz(header(metadata=["k", "v"])), "metadata", "found array")


def test_metadata_too_many_entries(tmp_path, capsys):
    # Attack: more metadata entries than the limit.
    meta = {str(i): "" for i in range(C.MAX_METADATA_ENTRIES + 1)}
    rejects(tmp_path, capsys, cmz(header(metadata=meta)), "metadata", "MAX_METADATA_ENTRIES")


def test_producer_value_int(tmp_path, capsys):
    # Attack: producer value of the wrong type.
    rejects(tmp_path, capsys, cmz(header(producer={"name": 1})), "producer", "expected str; found int")


def test_record_missing_key(tmp_path, capsys):
    # Attack: a tensor record without dtype.
    r = records()
    del r[1]["dtype"]
    rejects(tmp_path, capsys, cmz(header(r)), "tensor_keys", "missing required key 'dtype'")


def test_record_unknown_key(tmp_path, capsys):
    # Attack: a record key raw does not define.
    r = records()
    r[0]["bits"] = 8
    rejects(tmp_path, capsys, cmz(header(r)), "tensor_keys", "unknown key 'bits'")


def test_record_not_a_map(tmp_path, capsys):
    # Attack: a tensor record that is a str.
    rejects(tmp_path, capsys, cmz(header(["w"]), b""), "tensor_keys", "expected a map; found str")


def test_segments_missing_role(tmp_path, capsys):
    # Attack: raw record without its data segment.
    r = records()
    r[0]["segments"] = {}
    rejects(tmp_path, capsys, cmz(header(r)), "segment", "missing required key 'data'")


def test_segments_unknown_role(tmp_path, capsys):
    # Attack: an extra segment role (would hide bytes under a name no one checks).
    r = records()
    r[0]["segments"]["scales"] = [128, 0, 0]
    rejects(tmp_path, capsys, cmz(header(r)), "segment", "unknown key 'scales'")


# --- names ------------------------------------------------------------------------


def test_name_int(tmp_path, capsys):
    # Attack: a non-str name.
    rejects(tmp_path, capsys, cmz(header([record(name=7)]), data((0, W))), "name", "expected name of type str; found int")


def test_duplicate_names(tmp_path, capsys):
    # Attack: two tensors with one name (which one does a reader return?).
    r = records()
    r[1]["name"] = "w"
    rejects(tmp_path, capsys, cmz(header(r)), "name", "expected unique names")


def test_empty_name(tmp_path, capsys):
    # Attack: empty name.
    rejects(tmp_path, capsys, cmz(header([record(name="")]), data((0, W))), "name", "found 0")


def test_name_too_long(tmp_path, capsys):
    # Attack: name over MAX_NAME_BYTES (counted in UTF-8 bytes, not characters).
    name = "é" * (C.MAX_NAME_BYTES // 2) + "x"
    rejects(tmp_path, capsys, cmz(header([record(name=name)]), data((0, W))), "name", f"found {C.MAX_NAME_BYTES + 1}")


def test_name_with_nul(tmp_path, capsys):
    # Attack: NUL inside a name (C readers would see "a").
    rejects(tmp_path, capsys, cmz(header([record(name="a\x00b")]), data((0, W))), "name", "without NUL")


# --- dtype, encoding ----------------------------------------------------------------


def test_unknown_dtype(tmp_path, capsys):
    # Attack: a dtype not in spec §5.
    rejects(tmp_path, capsys, cmz(header([record(dtype="complex64")]), data((0, W))), "dtype", "found 'complex64'")


@pytest.mark.parametrize("encoding", ["zstd", "Codebook", "huffman"])
def test_unknown_encoding(tmp_path, capsys, encoding):
    # Attack: an encoding not defined in 1.0, a defined one in the wrong case
    # (names are case-sensitive), a coding's name where an encoding belongs.
    blob = cmz(header([record(encoding=encoding)]), data((0, W)))
    rejects(tmp_path, capsys, blob, "encoding", f"found {encoding!r}")


# --- shape --------------------------------------------------------------------------


def _shape(shape, payload=W):
    return cmz(header([record(shape=shape, payload=payload)]), data((0, payload)))


def test_shape_as_str(tmp_path, capsys):
    # Attack: shape is a str.
    rejects(tmp_path, capsys, cmz(header([record(shape="2")]), data((0, W))), "shape", "found str")


def test_dim_float(tmp_path, capsys):
    # Attack: a float dimension.
    rejects(tmp_path, capsys, _shape([2.0]), "shape", "found float 2.0")


def test_dim_bool(tmp_path, capsys):
    # Attack: a bool dimension (Python would treat True as 1).
    rejects(tmp_path, capsys, _shape([True, 2]), "shape", "found bool True")


def test_negative_dim(tmp_path, capsys):
    # Attack: negative dimension (makes products negative or wrap).
    rejects(tmp_path, capsys, _shape([-1, -2]), "shape", "non-negative")


def test_shape_product_overflow(tmp_path, capsys):
    # Attack: element count 2**80, which wraps in int64 arithmetic.
    rejects(tmp_path, capsys, _shape([2**40, 2**40]), "shape", "at most 2**62 elements")


def test_shape_product_overflow_to_zero(tmp_path, capsys):
    # Attack: element count 2**64, which wraps to 0 in uint64 arithmetic and
    # would match an empty data segment.
    rejects(tmp_path, capsys, _shape([2**32, 2**32], b""), "shape", "at most 2**62 elements")


def test_huge_dim(tmp_path, capsys):
    # Attack: a dimension of 2**64 - 1 (msgpack uint64).
    blob = _shape([2**64 - 1])
    assert b"\x91\xcf\xff\xff\xff\xff\xff\xff\xff\xff" in blob
    rejects(tmp_path, capsys, blob, "shape", "dimensions ≤ 2**62")


def test_too_many_dims(tmp_path, capsys):
    # Attack: more dimensions than MAX_NDIM.
    rejects(tmp_path, capsys, _shape([1] * (C.MAX_NDIM + 1), W[:4]), "shape", f"at most {C.MAX_NDIM} dimensions")


# --- segment records ------------------------------------------------------------------


def _seg(seg, body=DATA):
    r = records()
    r[0]["segments"]["data"] = seg
    return cmz(header(r), body)


@pytest.mark.parametrize(
    "seg",
    [[0, 8], [0, 8, 0, 0], [0, 8, "crc"], [0.0, 8, zlib.crc32(W)], [0, True, zlib.crc32(W)], {"offset": 0}],
    ids=["two", "four", "str-crc", "float-offset", "bool-length", "map"],
)
def test_segment_record_not_three_ints(tmp_path, capsys, seg):
    # Attack: malformed segment record.
    rejects(tmp_path, capsys, _seg(seg), "segment", "three ints")


def test_segment_negative_offset(tmp_path, capsys):
    # Attack: negative offset (would point into the header).
    rejects(tmp_path, capsys, _seg([-64, 8, zlib.crc32(W)]), "segment", "found offset -64")


def test_segment_end_overflows(tmp_path, capsys):
    # Attack: offset + length ≥ 2**63 (wraps in int64).
    rejects(tmp_path, capsys, _seg([2**62, 2**62, 0]), "segment", "offset+length < 2**63")


def test_segment_crc_out_of_range(tmp_path, capsys):
    # Attack: a crc32 that is not 32 bits.
    rejects(tmp_path, capsys, _seg([0, 8, 2**32 + zlib.crc32(W)]), "segment", "crc32 in 0..2**32-1")


def test_data_length_does_not_match_shape(tmp_path, capsys):
    # Attack: data segment shorter than shape × itemsize (reads past the segment).
    r = records()
    r[0]["shape"] = [3]
    rejects(tmp_path, capsys, cmz(header(r)), "segment", "expected a data segment of 12 bytes")


# --- segment layout ---------------------------------------------------------------------


def test_segment_crc_mismatch(tmp_path, capsys):
    # Attack: data changed after the header was written; open() defers the CRC.
    body = bytearray(DATA)
    body[64] ^= 1  # m: [0, 0, 1]; still valid bool bytes
    rejects(tmp_path, capsys, cmz(body=bytes(body)), "segment_crc", "expected CRC-32", deferred="m")


def test_truncated_segment(tmp_path, capsys):
    # Attack: the file is cut inside the last segment.
    rejects(tmp_path, capsys, cmz(body=DATA[:-1]), "segment_layout", "EOF")


def test_truncated_inside_first_segment(tmp_path, capsys):
    # Attack: the file is cut inside the first segment.
    rejects(tmp_path, capsys, cmz(body=DATA[:4]), "segment_layout", "EOF")


def test_overlapping_segments(tmp_path, capsys):
    # Attack: two tensors sharing bytes.
    big = bytes(80)
    r = [record("w", (20,), "float32", big, 0), record("m", (3,), "bool", M, 64)]
    rejects(tmp_path, capsys, cmz(header(r), big), "segment_layout", "expected segments not to overlap")


def test_aliased_segments(tmp_path, capsys):
    # Attack: two tensors pointing at the very same bytes.
    r = [record("w", payload=W), record("v", payload=W)]
    rejects(tmp_path, capsys, cmz(header(r), W), "segment_layout", "expected segments not to overlap")


def test_misaligned_offset(tmp_path, capsys):
    # Attack: a segment right after the previous one, not on a 64-byte boundary.
    r = [record(), record("m", (3,), "bool", M, 8)]
    rejects(tmp_path, capsys, cmz(header(r), W + M), "segment_layout", "multiple of 64; found 8")


def test_hole_between_segments(tmp_path, capsys):
    # Attack: an unaccounted 64-byte hole between segments (room for a payload).
    r = [record(), record("m", (3,), "bool", M, 128)]
    rejects(tmp_path, capsys, cmz(header(r), data((0, W), (128, M))), "segment_layout", "(a hole)")


def test_hole_before_first_segment(tmp_path, capsys):
    # Attack: the first segment does not start the data section.
    r = [record(offset=64)]
    rejects(tmp_path, capsys, cmz(header(r), data((64, W))), "segment_layout", "(a hole)")


def test_nonzero_padding_between_segments(tmp_path, capsys):
    # Attack: bytes smuggled into alignment padding.
    body = bytearray(DATA)
    body[20] = 0x41
    rejects(tmp_path, capsys, cmz(body=bytes(body)), "segment_padding", "expected zero padding")


@pytest.mark.parametrize("tail", [b"\x00", b"PK\x05\x06" + bytes(18)], ids=["zero", "zip-trailer"])
def test_trailing_bytes(tmp_path, capsys, tail):
    # Attack: bytes after the last segment (a polyglot, e.g. an appended zip).
    rejects(tmp_path, capsys, cmz(body=DATA + tail), "file_size", f"({len(tail)} trailing)")


def test_data_without_tensors(tmp_path, capsys):
    # Attack: a data section no record accounts for.
    rejects(tmp_path, capsys, cmz(header([]), b"\x00" * 64), "file_size", "trailing")


def test_bool_byte_2(tmp_path, capsys):
    # Attack: a bool byte other than 0/1, with a correct CRC.
    bad = bytes([1, 2, 0])
    r = [record(), record("m", (3,), "bool", bad, 64)]
    rejects(tmp_path, capsys, cmz(header(r), data((0, W), (64, bad))), "data",
            "expected bool bytes 0 or 1; found 2 at element 1", deferred="m")


# --- order of checks ---------------------------------------------------------------------


def test_first_failed_check_does_not_depend_on_record_order(tmp_path, capsys):
    # Attack: two problems in two records; the earlier stage (name) wins
    # whichever record comes first (header.py validates stage by stage).
    r = records()
    r[0]["dtype"] = "complex64"
    r[1]["name"] = ""
    rejects(tmp_path, capsys, cmz(header(r)), "name", "found 0")
    rejects(tmp_path, capsys, cmz(header(r[::-1])), "name", "found 0")


# --- through the installed command ----------------------------------------------------------


@pytest.mark.parametrize(
    "blob, check, deferred",
    [
        (cmz(magic=b"\x89CMZ\n\x1a\n\x00"), "magic", False),
        (cmz(body=DATA[:64] + b"\x00\x00\x01"), "segment_crc", True),
        (cmz(header([record(), record("m", (3,), "bool", b"\x02\x00\x01", 64)]), data((0, W), (64, b"\x02\x00\x01"))), "data", True),
    ],
    ids=["magic", "segment-crc", "bool-byte-2"],
)
def test_cmz_verify_subprocess(tmp_path, blob, check, deferred):
    p = tmp_path / "hostile.cmz"
    p.write_bytes(blob)
    r = subprocess.run([str(CMZ), "verify", str(p)], capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.rstrip().endswith(f"[check: {check}]"), r.stderr
