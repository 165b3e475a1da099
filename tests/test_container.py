"""The container layer (spec §2–§5, §7; cmodel/container.py, header.py,
tensors.py): golden bytes, determinism, round trips, the reader API, the
single-byte-change guarantee of spec §4 and the atomic writer.

Hostile files live in test_hostile.py, the ``cmz`` command in test_cli.py.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import cmodel
from flips import undetected_byte_flips
from cmodel.format import constants as C
from cmodel.format import container
from cmodel.cli import main as cmz_main
from cmodel.format.container import ContainerWriter, WriterStateError
from cmodel.errors import CmzError
from cmodel.format.header import Segment

# save_file compresses float tensors with ≥ 2 dims and ≥ 1024 elements by
# default (lossy); the tests here are about the container and exact raw
# round trips, so they store everything raw, as the encoder documents.
RAW = {"*": {"skip": True}}

# --- 1. golden bytes --------------------------------------------------------

# The header map of the golden file, one line per msgpack item (spec §3.1:
# canonical key order, smallest representation).  Written out by hand from the
# msgpack spec, not produced by msgpack.packb.
GOLDEN_HEADER = bytes.fromhex(
    "83"                    # fixmap, 3 entries
    "a8 6d65746164617461"    # fixstr(8) "metadata"
    "81"                    #   fixmap, 1 entry
    "a1 61"                 #     fixstr(1) "a"
    "a1 62"                 #     fixstr(1) "b"
    "a8 70726f6475636572"    # fixstr(8) "producer"
    "82"                    #   fixmap, 2 entries
    "a4 6e616d65"           #     fixstr(4) "name"
    "a6 636d6f64656c"       #     fixstr(6) "cmodel"
    "a7 76657273696f6e"     #     fixstr(7) "version"
    "a5 302e312e30"         #     fixstr(5) "0.1.0"
    "a7 74656e736f7273"     # fixstr(7) "tensors"
    "91"                    #   fixarray, 1 record
    "85"                    #     fixmap, 5 entries
    "a4 6e616d65"           #       fixstr(4) "name"
    "a1 77"                 #       fixstr(1) "w"
    "a5 7368617065"         #       fixstr(5) "shape"
    "91 02"                 #       fixarray(1) [positive fixint 2]
    "a5 6474797065"         #       fixstr(5) "dtype"
    "a7 666c6f61743332"     #       fixstr(7) "float32"
    "a8 656e636f64696e67"   #       fixstr(8) "encoding"
    "a3 726177"             #       fixstr(3) "raw"
    "a8 7365676d656e7473"   #       fixstr(8) "segments"
    "81"                    #       fixmap, 1 entry
    "a4 64617461"           #         fixstr(4) "data"
    "93 00 08"              #         fixarray(3): offset 0, length 8,
    "ce c3872656"           #         uint32 0xc3872656 = crc32 of the data (below)
)
GOLDEN_HEADER_LENGTH = 126  # counted by hand from the lines above
# zlib.crc32(GOLDEN_HEADER), computed once and pasted.
GOLDEN_HEADER_CRC = 0xADC3D478
# 1.0f and -2.0f as little-endian IEEE binary32.
GOLDEN_DATA = bytes.fromhex("0000803f 000000c0")
# zlib.crc32(GOLDEN_DATA), computed once and pasted (also inside the header).
GOLDEN_DATA_CRC = 0xC3872656


def golden_file() -> bytes:
    preamble = struct.pack(
        "<8sHHIQII",
        b"\x89CMZ\r\n\x1a\n",  # magic
        1,  # major
        0,  # minor
        0,  # flags
        GOLDEN_HEADER_LENGTH,  # header length
        GOLDEN_HEADER_CRC,  # CRC-32 of the header
        0,  # reserved
    )
    # 32 + 126 = 158 bytes; the data section starts at 192: 34 zero bytes.
    return preamble + GOLDEN_HEADER + bytes(34) + GOLDEN_DATA


def test_golden_literal_is_self_consistent():
    # Guards the hand-written literal itself, so a typo in it is reported
    # here and not as a writer bug.
    assert len(GOLDEN_HEADER) == GOLDEN_HEADER_LENGTH
    assert zlib.crc32(GOLDEN_HEADER) == GOLDEN_HEADER_CRC
    assert zlib.crc32(GOLDEN_DATA) == GOLDEN_DATA_CRC
    assert len(golden_file()) == 200


def test_golden_bytes(tmp_path):
    # Pin the producer so the golden bytes do not change with the package
    # version.  No rules: a 2-element tensor stays raw under the defaults.
    p = tmp_path / "golden.cmz"
    cmodel.save_file({"w": np.array([1.0, -2.0], np.float32)}, p, metadata={"a": "b"}, producer={"name": "cmodel", "version": "0.1.0"})
    assert p.read_bytes() == golden_file()


def test_golden_bytes_read_back(tmp_path):
    p = tmp_path / "golden.cmz"
    p.write_bytes(golden_file())
    with cmodel.open(p) as f:
        f.verify()
        assert f.metadata == {"a": "b"}
        assert f.producer == {"name": "cmodel", "version": "0.1.0"}
        assert f.record("w").segments == {"data": Segment(0, 8, GOLDEN_DATA_CRC)}
        assert f.data_start == 192
        w = f.read("w")
    assert w.dtype == np.float32 and w.tolist() == [1.0, -2.0]


def test_save_file_records_the_package_as_producer(tmp_path):
    p = tmp_path / "a.cmz"
    cmodel.save_file({}, p)
    with cmodel.open(p) as f:
        assert f.producer == {"name": "cmodel", "version": cmodel.__version__}


# --- 2. determinism -----------------------------------------------------------


def _sample_tensors():
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": np.zeros(4, np.float16),
        "steps": np.array(12345, np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 5), np.float64),
    }


def test_same_input_gives_identical_bytes(tmp_path):
    a, b = tmp_path / "a.cmz", tmp_path / "b.cmz"
    meta = {"model": "x", "ünïcode": "✓"}
    cmodel.save_file(_sample_tensors(), a, metadata=meta)
    cmodel.save_file(_sample_tensors(), b, metadata=meta)
    assert a.read_bytes() == b.read_bytes()


def test_metadata_insertion_order_does_not_matter(tmp_path):
    a, b = tmp_path / "a.cmz", tmp_path / "b.cmz"
    cmodel.save_file(_sample_tensors(), a, metadata={"b": "2", "a": "1", "é": "3"})
    cmodel.save_file(_sample_tensors(), b, metadata={"é": "3", "a": "1", "b": "2"})
    assert a.read_bytes() == b.read_bytes()


def test_tensor_order_is_kept(tmp_path):
    t = _sample_tensors()
    rev = dict(reversed(list(t.items())))
    a, b = tmp_path / "a.cmz", tmp_path / "b.cmz"
    cmodel.save_file(t, a)
    cmodel.save_file(rev, b)
    assert a.read_bytes() != b.read_bytes()
    for path, order in ((a, list(t)), (b, list(rev))):
        with cmodel.open(path) as f:
            assert f.tensor_names() == order
            offsets = [f.record(n).segments["data"].offset for n in order]
        assert offsets == sorted(offsets)  # laid out in tensor order (spec §4)
        assert list(cmodel.load_file(path)) == order


# --- 3. round trips -------------------------------------------------------------

FLOAT_BITS = {  # dtype -> (unsigned view, NaN bit patterns incl. signalling NaNs and payloads)
    "float64": (np.uint64, [0x7FF0000000000001, 0xFFF8DEADBEEF0001, 0x7FF4000000000000]),
    "float32": (np.uint32, [0x7F800001, 0xFFC00123, 0x7FA00000]),
    "float16": (np.uint16, [0x7C01, 0xFE55, 0x7D00]),
    "bfloat16": (np.uint16, [0x7F81, 0xFFC1, 0x7FA0]),
}
TORCH_OK = {  # dtypes offered as torch tensors besides bfloat16 (which only torch has)
    "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
}


def _bits(dtype: str, shape, seed: int) -> np.ndarray:
    """Random storage values (as the format stores them) of ``dtype``."""
    rng = np.random.default_rng(seed)
    sdt = np.dtype(C.DTYPES[dtype][0]).newbyteorder("=")
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "bool":
        flat = rng.integers(0, 2, n).astype(np.bool_)
    else:
        flat = np.frombuffer(rng.bytes(n * sdt.itemsize), dtype=sdt).copy()
        if dtype in FLOAT_BITS:
            ut, nans = FLOAT_BITS[dtype]
            k = min(n, len(nans))
            flat.view(ut)[:k] = np.array(nans[:k], dtype=ut)
    return flat.reshape(shape)


@st.composite
def tensor_case(draw):
    dtype = draw(st.sampled_from(sorted(C.DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    seed = draw(st.integers(0, 2**32 - 1))
    if dtype == "bfloat16":
        kind = "torch"
    else:
        kinds = ["numpy", "big-endian", "strided", "fortran"]
        if dtype in TORCH_OK:
            kinds.append("torch")
        kind = draw(st.sampled_from(kinds))
    return dtype, shape, seed, kind


def _make_input(dtype, shape, seed, kind):
    """Return ``(input value, expected array as read back)``."""
    bits = _bits(dtype, shape, seed)
    if dtype == "bfloat16":
        t = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
        if len(shape) >= 2:
            t = t.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous torch input
        expected = (bits.astype(np.uint32) << 16).view(np.float32)
        # The reader returns bfloat16 as float32 equal to tensor.float(), bit for bit.
        assert t.float().numpy().view(np.uint32).tobytes() == expected.view(np.uint32).tobytes()
        return t, expected
    if kind == "torch":
        t = torch.from_numpy(bits.copy())
        if len(shape) >= 2:
            t = t.transpose(0, 1).contiguous().transpose(0, 1)
        return t, bits
    if kind == "big-endian" and bits.dtype.itemsize > 1:
        return bits.astype(bits.dtype.newbyteorder(">")), bits
    if kind == "strided" and len(shape) >= 1:
        base = np.zeros((shape[0] * 2,) + shape[1:], bits.dtype)
        base[::2] = bits
        return base[::2], bits
    if kind == "fortran":
        return bits.copy(order="F"), bits  # (np.asfortranarray would make 0-d arrays 1-d)
    return bits, bits


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


NAMES = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.dictionaries(NAMES, tensor_case(), max_size=5), metadata=st.dictionaries(TEXT, TEXT, max_size=4))
def test_round_trip_is_bit_exact(tmp_path, tensors, metadata):
    inputs, expected = {}, {}
    for name, case in tensors.items():
        inputs[name], expected[name] = _make_input(*case)
    p = tmp_path / "rt.cmz"
    cmodel.save_file(inputs, p, rules=RAW, metadata=metadata)
    with cmodel.open(p) as f:
        f.verify()
        assert f.metadata == metadata
        assert f.tensor_names() == list(tensors)
        for name, (dtype, shape, _, _) in tensors.items():
            rec = f.record(name)
            assert (rec.dtype, rec.shape, rec.encoding) == (dtype, shape, "raw")
            got = f.read(name)
            assert _same_bits(got, expected[name]), name  # NaN payloads included
    back = cmodel.load_file(p)
    assert list(back) == list(tensors)
    assert all(_same_bits(back[n], expected[n]) for n in tensors)


def test_non_ascii_names_and_metadata(tmp_path):
    p = tmp_path / "u.cmz"
    t = {"ü/权重.weight": np.arange(3, dtype=np.int8), "😀": np.array(1.5, np.float32), "a" * C.MAX_NAME_BYTES: np.zeros(1)}
    meta = {"描述": "模型 ✓", "": "", "nul\x00key": "v\x00"}
    cmodel.save_file(t, p, rules=RAW, metadata=meta)
    with cmodel.open(p) as f:
        assert f.tensor_names() == list(t)
        assert f.metadata == meta
    back = cmodel.load_file(p)
    assert all(_same_bits(back[k], v) for k, v in t.items())


@pytest.mark.parametrize(
    "value, expected",
    [
        (torch.tensor([[1.0, float("nan")], [-0.0, 3.5]]), np.array([[1.0, np.nan], [-0.0, 3.5]], np.float32)),
        (torch.arange(6, dtype=torch.int64).reshape(2, 3).t(), np.arange(6, dtype=np.int64).reshape(2, 3).T.copy()),
        (torch.tensor([True, False, True]), np.array([True, False, True])),
        (torch.ones(2, 2, requires_grad=True), np.ones((2, 2), np.float32)),
        (torch.tensor(7, dtype=torch.int64), np.array(7, np.int64)),
        (torch.zeros(0, 3), np.zeros((0, 3), np.float32)),
    ],
    ids=["float32", "int64-transposed", "bool", "requires-grad", "int64-0d", "float32-empty"],
)
def test_torch_inputs(tmp_path, value, expected):
    p = tmp_path / "t.cmz"
    cmodel.save_file({"t": value}, p, rules=RAW)
    assert _same_bits(cmodel.load_file(p)["t"], expected)


@pytest.mark.parametrize(
    "value",
    [
        np.arange(24, dtype=">f4").reshape(2, 3, 4),
        np.arange(24, dtype="<i8").reshape(2, 3, 4)[:, ::-1, ::2],
        np.arange(24, dtype=">u2").reshape(4, 6).T,
        np.array([0x7FF4000000000001], ">u8").view(">f8"),  # signalling NaN, big-endian
        np.array(3, ">i4"),
        np.zeros((3, 0), ">f2"),
    ],
    ids=["big-endian", "negative-strides", "transposed-big-endian", "snan-big-endian", "0d-big-endian", "empty-big-endian"],
)
def test_non_contiguous_and_big_endian_numpy(tmp_path, value):
    p = tmp_path / "n.cmz"
    cmodel.save_file({"x": value}, p, rules=RAW)
    back = cmodel.load_file(p)["x"]
    expected = value.copy(order="C").astype(value.dtype.newbyteorder("="))
    assert _same_bits(back, expected)
    # On disk: little-endian C order (spec §6.1).
    with cmodel.open(p) as f:
        s = f.record("x").segments["data"]
    raw = p.read_bytes()[f.data_start + s.offset : f.data_start + s.offset + s.length]
    assert raw == value.copy(order="C").astype(value.dtype.newbyteorder("<")).tobytes()


def test_bool_input_with_non_canonical_bytes_is_stored_as_0_or_1(tmp_path):
    # A numpy bool array may hold bytes other than 0/1; the file must not (spec §5).
    p = tmp_path / "b.cmz"
    cmodel.save_file({"b": np.frombuffer(b"\x02\x00\xff", np.bool_)}, p)
    with cmodel.open(p) as f:
        f.verify()
        assert f.read("b").tolist() == [True, False, True]


def test_file_without_tensors(tmp_path):
    p = tmp_path / "e.cmz"
    cmodel.save_file({}, p, metadata={"k": "v"})
    assert p.stat().st_size % C.ALIGNMENT == 0
    with cmodel.open(p) as f:
        f.verify()
        assert f.tensor_names() == [] and f.metadata == {"k": "v"}
    assert cmodel.load_file(p) == {}


# --- writer input errors (check "input", spec §7) ---------------------------------


@pytest.mark.parametrize(
    "tensors, metadata",
    [
        ({"x": [1, 2, 3]}, None),  # not an array
        ({"x": np.array(["a"])}, None),  # unsupported dtype
        ({"x": np.zeros(2, np.complex64)}, None),
        ({1: np.zeros(2)}, None),  # non-str name
        ({"x": np.zeros(2)}, {"k": 1}),  # non-str metadata value
        ({"x": np.zeros(2)}, {1: "v"}),  # non-str metadata key
        ({"x": np.zeros([1] * (C.MAX_NDIM + 1))}, None),
        ([("x", np.zeros(2))], None),  # not a mapping
    ],
    ids=["list", "str-dtype", "complex", "int-name", "int-meta-value", "int-meta-key", "too-many-dims", "not-mapping"],
)
def test_bad_writer_arguments_raise_input(tmp_path, tensors, metadata):
    p = tmp_path / "x.cmz"
    with pytest.raises(CmzError) as ei:
        cmodel.save_file(tensors, p, metadata=metadata)
    assert ei.value.check == "input"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name",
    ["", "a\x00b", "n" * (C.MAX_NAME_BYTES + 1), "\ud800"],
    ids=["empty", "nul", "too-long", "lone-surrogate"],
)
def test_bad_tensor_names_raise_input(tmp_path, name):
    # Spec §7: "Writers and encoders report bad arguments with the same
    # exception type and check `input`".
    p = tmp_path / "x.cmz"
    with pytest.raises(CmzError) as ei:
        cmodel.save_file({name: np.zeros(1)}, p)
    assert ei.value.check == "input"
    assert os.listdir(tmp_path) == []


def test_unencodable_metadata_raises_input(tmp_path):
    p = tmp_path / "x.cmz"
    with pytest.raises(CmzError) as ei:
        cmodel.save_file({"x": np.zeros(1)}, p, metadata={"k": "\udcff"})
    assert ei.value.check == "input"
    assert os.listdir(tmp_path) == []


# --- 4. reader API ----------------------------------------------------------------


@pytest.fixture
def sample_file(tmp_path):
    p = tmp_path / "sample.cmz"
    cmodel.save_file(_sample_tensors(), p, rules=RAW, metadata={"model": "sample"})
    return p


def test_reader_api(sample_file):
    t = _sample_tensors()
    with cmodel.open(sample_file) as f:
        assert isinstance(f, cmodel.CmzFile)
        assert f.version == (1, 0)
        assert f.size == sample_file.stat().st_size
        assert f.metadata == {"model": "sample"}
        f.metadata["model"] = "changed"  # a copy
        assert f.metadata == {"model": "sample"}
        assert f.tensor_names() == list(t)
        raw = sample_file.read_bytes()
        for name, value in t.items():
            rec = f.record(name)
            assert rec.name == name
            assert rec.shape == value.shape and isinstance(rec.shape, tuple)
            assert rec.dtype == value.dtype.name  # numpy's names match the format's here
            assert rec.encoding == "raw" and rec.params == {}
            assert set(rec.segments) == {"data"}
            s = rec.segments["data"]
            assert s.offset % C.ALIGNMENT == 0
            assert s.length == value.nbytes == rec.numel * value.itemsize
            assert s.crc32 == zlib.crc32(raw[f.data_start + s.offset : f.data_start + s.offset + s.length])
            got = f.read(name)
            assert _same_bits(got, value)
            assert got.flags.writeable
            got[...] = 0  # a private copy, not a view of the file
            assert _same_bits(f.read(name), value)
        f.verify()


def test_missing_name_raises_key_error(sample_file):
    with cmodel.open(sample_file) as f:
        with pytest.raises(KeyError, match="nope"):
            f.read("nope")
        with pytest.raises(KeyError, match="nope"):
            f.record("nope")


def test_reading_after_close_raises_value_error(sample_file):
    with cmodel.open(sample_file) as f:
        pass
    with pytest.raises(ValueError, match="closed"):
        f.read("conv.bias")
    with pytest.raises(ValueError, match="closed"):
        f.verify()
    f.close()  # closing twice is harmless
    g = cmodel.open(sample_file)
    g.close()
    with pytest.raises(ValueError, match="closed"):
        g.read("mask")


def test_read_result_outlives_close(sample_file):
    with cmodel.open(sample_file) as f:
        a = f.read("conv.weight")
    assert _same_bits(a, _sample_tensors()["conv.weight"])


def test_load_file(sample_file):
    back = cmodel.load_file(str(sample_file))
    t = _sample_tensors()
    assert list(back) == list(t)
    assert all(_same_bits(back[k], v) for k, v in t.items())


def test_open_missing_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        cmodel.open(tmp_path / "missing.cmz")


def test_save_replaces_existing_file_with_default_permissions(tmp_path):
    p = tmp_path / "a.cmz"
    cmodel.save_file({"x": np.zeros(1000)}, p)
    cmodel.save_file({"y": np.ones(1)}, p)
    assert list(cmodel.load_file(p)) == ["y"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["a.cmz"]


# --- 5. every single-byte change is detected (spec §4, §11) ------------------------


def test_every_single_byte_change_is_detected(tmp_path):
    src = tmp_path / "src.cmz"
    cmodel.save_file(
        {
            "w": np.array([[1.5, -2.0, 3.25]], np.float32),
            "m": np.array([True, False, True, True, False]),
            "s": np.array(-7, np.int16),
            "e": np.zeros((0, 2), np.float32),
            "u": np.arange(3, dtype=np.uint8),
            "z": np.zeros(0, np.uint8),  # last and empty: the file ends with padding
        },
        src,
        rules=RAW,
        metadata={"k": "v"},
    )
    good = src.read_bytes()
    with cmodel.open(src) as f:
        f.verify()
        hdr_end = C.PREAMBLE_SIZE + f.header_length
        # The file has both kinds of padding, so flips inside them are exercised.
        assert f.data_start > hdr_end
        assert f.data_length > sum(s.length for n in f.tensor_names() for s in f.record(n).segments.values())
        assert f.record("z").segments["data"].offset == f.data_length == len(good) - f.data_start
        assert good[-1] == 0
    assert undetected_byte_flips(good, tmp_path / "flip.cmz") == []


def test_truncation_and_extension_are_detected(tmp_path):
    src = tmp_path / "src.cmz"
    cmodel.save_file({"w": np.arange(5, dtype=np.float32), "b": np.ones(3, np.bool_)}, src, rules=RAW)
    good = src.read_bytes()
    p = tmp_path / "cut.cmz"
    for n in list(range(len(good))) + [len(good) + 1, len(good) + 64]:
        p.write_bytes(good[:n] if n < len(good) else good + bytes(n - len(good)))
        with pytest.raises(CmzError):
            with cmodel.open(p) as f:
                f.verify()


# --- 6. atomic write ----------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import cmodel
    # 48 tensors of 8 MiB, stored raw (fast): the temporary file grows one
    # segment at a time.
    tensors = {f"t{i:02d}": np.full(2 << 20, i, np.float32) for i in range(48)}
    cmodel.save_file(tensors, sys.argv[1], rules={"*": {"skip": True}}, metadata={"generation": "new"})
    """
)


def _temp_files(directory, target_name):
    return [n for n in os.listdir(directory) if n.startswith("." + target_name) and n != target_name]


def test_sigkill_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.cmz"
    cmodel.save_file({"old": np.arange(10, dtype=np.int32)}, target, metadata={"generation": "old"})
    old = target.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        grown = None
        while grown is None:
            assert child.poll() is None, f"writer exited before it could be killed (rc {child.returncode})"
            assert time.monotonic() < deadline, "no growing temporary file appeared"
            for n in _temp_files(tmp_path, target.name):
                try:
                    if os.stat(tmp_path / n).st_size > 16 << 20:
                        grown = n
                except FileNotFoundError:
                    pass
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert target.read_bytes() == old
    with cmodel.open(target) as f:
        assert f.metadata == {"generation": "old"}
    assert cmz_main(["verify", str(target)]) == 0
    # SIGKILL gives no chance to clean up: the partial file is the temporary one.
    assert grown in os.listdir(tmp_path) and grown.endswith(".tmp")
    (tmp_path / grown).unlink()  # up to a few hundred MB


class _FailingOs:
    """Stands in for the ``os`` module inside cmodel.format.container: ``os.write``
    (or another function) raises OSError on its ``fail_at``-th call."""

    def __init__(self, fail_at: int, func: str = "write"):
        self.calls = 0
        self.fail_at = fail_at
        self.func = func

    def __getattr__(self, name):
        real = getattr(os, name)
        if name != self.func:
            return real

        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(28, "No space left on device (injected)")
            return real(*args, **kwargs)

        return wrapper


def _write_calls_of_a_full_save(tmp_path, monkeypatch) -> int:
    probe = _FailingOs(fail_at=-1)
    monkeypatch.setattr(container, "os", probe)
    cmodel.save_file(_sample_tensors(), tmp_path / "probe.cmz")
    monkeypatch.setattr(container, "os", os)
    (tmp_path / "probe.cmz").unlink()
    return probe.calls


@pytest.mark.parametrize("existing", [False, True], ids=["new-target", "existing-target"])
def test_failed_write_leaves_no_target_and_no_temporary(tmp_path, monkeypatch, existing):
    n = _write_calls_of_a_full_save(tmp_path, monkeypatch)
    assert n >= 6  # preamble, header, header padding, segments and their padding
    target = tmp_path / "m.cmz"
    if existing:
        cmodel.save_file({"old": np.ones(3)}, target)
    before = target.read_bytes() if existing else None
    for fail_at in range(1, n + 1):
        monkeypatch.setattr(container, "os", _FailingOs(fail_at))
        with pytest.raises(OSError, match="injected"):
            cmodel.save_file(_sample_tensors(), target)
        monkeypatch.setattr(container, "os", os)
        assert os.listdir(tmp_path) == (["m.cmz"] if existing else []), f"failure at os.write call {fail_at}"
        if existing:
            assert target.read_bytes() == before


@pytest.mark.parametrize("func", ["fsync", "replace"])
def test_failed_commit_leaves_no_temporary(tmp_path, monkeypatch, func):
    target = tmp_path / "m.cmz"
    monkeypatch.setattr(container, "os", _FailingOs(1, func))
    with pytest.raises(OSError, match="injected"):
        cmodel.save_file(_sample_tensors(), target)
    monkeypatch.setattr(container, "os", os)
    assert os.listdir(tmp_path) == []


def _writer(path):
    w = ContainerWriter(path, metadata={"k": "v"})
    w.add_tensor("x", (3,), "uint8", "raw", {}, {"data": b"\x01\x02\x03"})
    return w


def test_writer_state_machine_refuses_out_of_order_calls(tmp_path):
    p = tmp_path / "w.cmz"
    with _writer(p) as w:
        with pytest.raises(WriterStateError):
            w.write_header()  # before write_preamble
        with pytest.raises(WriterStateError):
            w.write_segments()
        with pytest.raises(WriterStateError):
            w.commit()
        w.write_preamble()
        with pytest.raises(WriterStateError):
            w.add_tensor("y", (1,), "uint8", "raw", {}, {"data": b"\x00"})  # after write_preamble
        with pytest.raises(WriterStateError):
            w.write_preamble()
        with pytest.raises(WriterStateError):
            w.write_segments()  # before write_header
        w.write_header()
        w.write_segments()
        assert not p.exists()  # nothing at the target before commit
        w.commit()
        with pytest.raises(WriterStateError):
            w.commit()  # twice
        with pytest.raises(WriterStateError):
            w.write()
    assert w.state == "committed"
    assert cmodel.load_file(p)["x"].tolist() == [1, 2, 3]
    assert os.listdir(tmp_path) == ["w.cmz"]


def test_writer_refuses_duplicate_names(tmp_path):
    w = _writer(tmp_path / "w.cmz")
    with pytest.raises(CmzError) as ei:
        w.add_tensor("x", (1,), "uint8", "raw", {}, {"data": b"\x00"})
    assert ei.value.check == "input"


def test_writer_abort_and_exception_in_with_block_leave_nothing(tmp_path):
    p = tmp_path / "w.cmz"
    with pytest.raises(RuntimeError):
        with _writer(p) as w:
            w.write_preamble()
            w.write_header()
            assert len(os.listdir(tmp_path)) == 1  # the temporary file
            raise RuntimeError("boom")
    assert w.state == "aborted"
    assert os.listdir(tmp_path) == []
    w = _writer(p)
    w.write_preamble()
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(WriterStateError):
        w.write_header()
    with _writer(p):
        pass  # never written: no file
    assert os.listdir(tmp_path) == []
