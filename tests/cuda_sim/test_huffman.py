"""cmodel.kernels.cuda.huffman under the CUDA simulator: the device chunk
decode agrees with the CPU decoder (cmodel.codecs.huffman.decode, tested against a
bit-by-bit reference in tests/test_huffman.py) on valid streams, symbol for
symbol, and on hostile ones error for error (the same CmzError message);
the status codes of ``decode_chunks`` agree with the CPU kernel's.
Streams are small: every simulated chunk is a Python thread.
"""

import numpy as np
import pytest
from numba import cuda

from cmodel.codecs import huffman as H
from cmodel.errors import CmzError
from cmodel.kernels import huffman as cpu
from cmodel.kernels.cuda import huffman as gpu
from simutil import assert_covered, recorded_launches

GOLDEN_LENGTHS = np.array([1, 2, 3, 3], np.uint8)  # tests/test_huffman.py's golden table: codes 0, 10, 110, 111


@pytest.fixture(autouse=True)
def launches(monkeypatch):
    with recorded_launches(monkeypatch, gpu) as seen:
        yield seen
    if seen:
        assert_covered(seen, gpu.PTX_KERNELS)


def symbols(seed, bits, n, geometric=True):
    rng = np.random.default_rng(seed)
    k = 2**bits
    p = 0.6 ** np.arange(k) if geometric else np.ones(k)
    return rng.choice(k, size=n, p=p / p.sum()).astype(np.uint8)


def outcome(decode, *args):
    """The decoded symbols as a host array, or the CmzError's (check, message)."""
    try:
        got = decode(*args)
    except CmzError as e:
        return ("error", e.check, str(e))
    return ("ok", got if isinstance(got, np.ndarray) else got.copy_to_host())


def assert_same(*args):
    want = outcome(H.decode, *args)
    got = outcome(H.decode_device, *args)
    assert got[0] == want[0], (got, want)
    if want[0] == "ok":
        np.testing.assert_array_equal(got[1], want[1])
    else:
        assert got[1:] == want[1:]
    return want


@pytest.mark.parametrize("bits,n,chunk", [(1, 50, 7), (2, 300, 64), (4, 1000, 100), (5, 777, 1000), (8, 2000, 256), (8, 3000, 3000)])
def test_round_trip_matches_cpu(bits, n, chunk):
    s = symbols(bits * 31 + n, bits, n)
    lengths = H.code_lengths(np.bincount(s, minlength=2**bits))
    stream, offsets = H.encode(s, lengths, chunk)
    kind, got = assert_same(stream, offsets, lengths, n, chunk)
    np.testing.assert_array_equal(got, s)


def test_twelve_bit_codes_and_all_256_symbols():
    # Fibonacci-like frequencies make the length limit bind: codes of 12 bits.
    f = np.ones(256, np.int64)
    f[:20] = [int(1.6**i) + 1 for i in range(20)][::-1]
    lengths = H.code_lengths(f)
    assert lengths.max() == 12
    rng = np.random.default_rng(1)
    s = rng.choice(256, size=1500, p=f / f.sum()).astype(np.uint8)
    s[:256] = np.arange(256)
    stream, offsets = H.encode(s, lengths, 200)
    np.testing.assert_array_equal(assert_same(stream, offsets, lengths, s.size, 200)[1], s)


def test_zero_and_one_symbol_tables():
    assert assert_same(b"", np.array([0], np.uint64), GOLDEN_LENGTHS, 0, 64)[1].size == 0
    assert assert_same(b"", np.array([0], np.uint64), np.zeros(4, np.uint8), 0, 64)[1].size == 0
    assert_same(b"\x00\x00", np.array([0, 1, 2], np.uint64), np.array([0, 0, 1, 0], np.uint8), 12, 8)
    assert_same(b"\x02", np.array([0, 1], np.uint64), np.array([0, 0, 1, 0], np.uint8), 3, 64)  # a 1 bit


@pytest.mark.parametrize("case", [
    (b"\xda\x01", [0, 2], GOLDEN_LENGTHS, 5, 64),           # the golden stream
    (b"\xff", [0, 1], GOLDEN_LENGTHS, 3, 64),               # truncated: codes run past the chunk
    (b"\xda\x05", [0, 2], GOLDEN_LENGTHS, 5, 64),           # non-zero padding bits
    (b"\xda\x01\x00", [0, 3], GOLDEN_LENGTHS, 5, 64),       # an unused trailing byte
    (b"\x1a\x07", [0, 2, 1, 2], GOLDEN_LENGTHS, 5, 2),      # decreasing offsets
    (b"\xda\x01", [1, 2], GOLDEN_LENGTHS, 5, 64),           # offsets not starting at 0
    (b"\x00", [0, 1], [1, 1, 1, 0], 1, 64),                 # over-subscribed table
    (b"\x00", [0, 1], GOLDEN_LENGTHS, 10**15, 10**15),      # more symbols than bits
], ids=["golden", "overrun", "padding", "trailing", "offsets-down", "offsets-start", "table", "too-many"])
def test_hostile_inputs_fail_as_on_the_cpu(case):
    stream, offsets, lengths, n, chunk = case
    assert_same(stream, np.asarray(offsets, np.uint64), np.asarray(lengths, np.uint8), n, chunk)


def test_mutated_streams_fail_or_decode_as_on_the_cpu():
    # Byte flips in a multi-chunk stream: each gives the CPU's outcome, symbols
    # or the same error (the first bad chunk, its status).
    s = symbols(5, 5, 600)
    lengths = H.code_lengths(np.bincount(s, minlength=32))
    stream, offsets = H.encode(s, lengths, 50)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(12):
        b = bytearray(stream)
        for p in rng.integers(0, len(b), 2):
            b[p] ^= int(rng.integers(1, 256))
        kinds.add(assert_same(bytes(b), offsets, lengths, s.size, 50)[0])
    assert "error" in kinds


def test_decode_chunks_status_matches_cpu_kernel():
    # Chunks each broken a different way; the status array must equal the CPU
    # kernel's, chunk by chunk, and so must the decoded symbols.
    s = symbols(9, 3, 160)
    lengths = H.code_lengths(np.bincount(s, minlength=8))
    stream, offsets = H.encode(s, lengths, 20)
    b = np.frombuffer(stream, np.uint8).copy()
    b[offsets[1]] ^= 0x5A
    b[offsets[3] - 1] |= 0x80
    b[offsets[5]] ^= 0xFF
    single, multi = H._decode_tables(lengths.tobytes())
    want_out = np.zeros(s.size, np.uint8)
    want_status = np.zeros(offsets.size - 1, np.uint8)
    cpu.decode_chunks_serial(b, offsets, multi, single, np.uint64(20), want_out, want_status)
    assert len(set(want_status.tolist())) > 1
    got_out = np.zeros(s.size, np.uint8)
    got_status = np.full(offsets.size - 1, 255, np.uint8)
    gpu.decode_chunks(b, offsets, multi, single, 20, got_out, got_status)
    np.testing.assert_array_equal(got_status, want_status)
    np.testing.assert_array_equal(got_out, want_out)
    # Device arrays are written in place.
    d_out, d_status = cuda.device_array(s.size, np.uint8), cuda.device_array(offsets.size - 1, np.uint8)
    gpu.decode_chunks(cuda.to_device(b), cuda.to_device(offsets), multi, single, 20, d_out, d_status)
    np.testing.assert_array_equal(d_status.copy_to_host(), want_status)


def test_decode_chunks_bad_arguments():
    single, multi = H._decode_tables(GOLDEN_LENGTHS.tobytes())
    off = np.array([0, 2], np.uint64)
    with pytest.raises(ValueError, match="offsets: expected"):
        gpu.decode_chunks(np.frombuffer(b"\xda\x01", np.uint8), off.astype(np.int32), multi, single, 64, np.zeros(5, np.uint8), np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="status: expected"):
        gpu.decode_chunks(np.frombuffer(b"\xda\x01", np.uint8), off, multi, single, 64, np.zeros(5, np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="multi: expected"):
        gpu.decode_chunks(np.frombuffer(b"\xda\x01", np.uint8), off, single, single, 64, np.zeros(5, np.uint8), np.zeros(1, np.uint8))
