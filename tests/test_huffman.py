"""cmodel.codecs.huffman: canonical length-limited Huffman streams in chunks.

A bit-by-bit reference decoder written from the rules in the module docstring
(RFC 1951 code assignment and bit order) is the oracle for the Numba kernels.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cmodel.errors import CmzError
from cmodel.codecs import huffman as H

FAST = settings(max_examples=60, deadline=None)


# -- helpers -------------------------------------------------------------------


def unlimited_huffman_lengths(freqs) -> np.ndarray:
    """Textbook Huffman (no length limit) code lengths."""
    used = [s for s, f in enumerate(freqs) if f]
    out = np.zeros(len(freqs), np.int64)
    if len(used) == 1:
        out[used[0]] = 1
    heap = [(int(freqs[s]), i, [s]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        out[a + b] += 1
        heapq.heappush(heap, (w1 + w2, tie, a + b))
        tie += 1
    return out


def reference_decode(stream: bytes, offsets, lengths, n_symbols: int, chunk_symbols: int) -> np.ndarray:
    """Bit-at-a-time decoder; raises ValueError on any data it would reject."""
    codes = H.canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in np.flatnonzero(lengths)}
    out = []
    for i in range(len(offsets) - 1):
        start, end = int(offsets[i]), int(offsets[i + 1])
        count = min(chunk_symbols, n_symbols - i * chunk_symbols)
        bit = 0

        def next_bit():
            nonlocal bit
            if bit >= 8 * (end - start):
                raise ValueError("overrun")
            b = (stream[start + bit // 8] >> (bit % 8)) & 1
            bit += 1
            return b

        for _ in range(count):
            code, length = 0, 0
            while (length, code) not in table:
                code, length = code << 1 | next_bit(), length + 1
                if length > H.MAX_CODE_LENGTH:
                    raise ValueError("no such code")
            out.append(table[length, code])
        if (bit + 7) // 8 != end - start:
            raise ValueError("trailing bytes")
        if bit % 8 and stream[start + bit // 8] >> (bit % 8):
            raise ValueError("padding")
    return np.array(out, np.uint8)


def symbols_from(seed: int, freqs_shape: str, bits: int, n_used: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = 2**bits
    used = np.sort(rng.choice(k, size=min(n_used, k), replace=False))
    if freqs_shape == "uniform":
        p = np.ones(used.size)
    elif freqs_shape == "geometric":
        p = 0.5 ** np.arange(used.size)
    else:  # fibonacci: the unlimited Huffman tree is as deep as it gets
        p = np.array([1.0, 1.0] + [0.0] * (used.size - 2))[: used.size]
        for j in range(2, used.size):
            p[j] = p[j - 1] + p[j - 2]
    s = rng.choice(used, size=n, p=p / p.sum()).astype(np.uint8)
    if n >= used.size:  # every chosen symbol present, so the table uses them all
        s[rng.choice(n, size=used.size, replace=False)] = used
    return s


def round_trip(s: np.ndarray, bits: int, chunk: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    lengths = H.code_lengths(np.bincount(s, minlength=2**bits))
    stream, offsets = H.encode(s, lengths, chunk)
    assert offsets.dtype == np.uint64 and offsets.size == -(-s.size // chunk) + 1
    assert offsets[0] == 0 and offsets[-1] == len(stream)
    for t in (1, 2):
        np.testing.assert_array_equal(H.decode(stream, offsets, lengths, s.size, chunk, threads=t), s)
    return stream, offsets, lengths


# -- code assignment and golden bytes ------------------------------------------


def test_rfc1951_example_codes():
    # RFC 1951 §3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) for A..H give
    # A 010, B 011, C 100, D 101, E 110, F 00, G 1110, H 1111.
    codes = H.canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8))
    assert codes.dtype == np.uint16
    assert codes.tolist() == [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


GOLDEN_LENGTHS = np.array([1, 2, 3, 3], np.uint8)  # codes: 0, 10, 110, 111


def test_golden_bytes_one_chunk():
    # Symbols 0 1 2 3 0 are the codes 0 | 10 | 110 | 111 | 0, sent MSB of each
    # code first: bits 0,1,0,1,1,0,1,1 then 1,0.  Bytes fill from their LSB:
    # byte 0 = 0b11011010 = 0xDA, byte 1 = 0b00000001 (6 zero padding bits).
    s = np.array([0, 1, 2, 3, 0], np.uint8)
    stream, offsets = H.encode(s, GOLDEN_LENGTHS)
    assert stream == b"\xda\x01"
    assert offsets.tolist() == [0, 2]
    np.testing.assert_array_equal(H.decode(stream, offsets, GOLDEN_LENGTHS, 5, H.DEFAULT_CHUNK_SYMBOLS), s)


def test_golden_bytes_two_chunks():
    # Chunks of 3: [0 1 2] = bits 0,1,0,1,1,0 -> 0b011010 = 0x1A;
    # [3 0] = bits 1,1,1,0 -> 0b0111 = 0x07; each starts on a byte boundary.
    s = np.array([0, 1, 2, 3, 0], np.uint8)
    stream, offsets = H.encode(s, GOLDEN_LENGTHS, 3)
    assert stream == b"\x1a\x07"
    assert offsets.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(H.decode(stream, offsets, GOLDEN_LENGTHS, 5, 3), s)


def test_golden_single_symbol():
    # One used symbol: length 1, each symbol is the bit 0; 9 symbols -> 2 bytes.
    lengths = np.array([0, 0, 1, 0], np.uint8)
    stream, offsets = H.encode(np.full(9, 2, np.uint8), lengths)
    assert stream == b"\x00\x00" and offsets.tolist() == [0, 2]
    np.testing.assert_array_equal(H.decode(stream, offsets, lengths, 9, 4096), np.full(9, 2, np.uint8))


# -- code_lengths ----------------------------------------------------------------


def test_code_lengths_edge_cases():
    assert H.code_lengths(np.zeros(4, np.int64)).tolist() == [0, 0, 0, 0]
    assert H.code_lengths(np.array([0, 7, 0, 0])).tolist() == [0, 1, 0, 0]
    assert H.code_lengths(np.array([3, 3])).tolist() == [1, 1]
    lengths = H.code_lengths(np.ones(256, np.int64))
    assert lengths.tolist() == [8] * 256
    fib = [1, 1]
    while len(fib) < 32:
        fib.append(fib[-1] + fib[-2])
    lengths = H.code_lengths(np.array(fib))
    assert unlimited_huffman_lengths(fib).max() > 12 and lengths.max() == 12
    H.validate_lengths(lengths, 1)


@FAST
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=256), st.integers(1, 12))
def test_code_lengths_optimal_and_limited(freqs, max_length):
    f = np.array(freqs, np.int64)
    if np.count_nonzero(f) > 2**max_length:
        with pytest.raises(CmzError, match="used symbols"):
            H.code_lengths(f, max_length)
        return
    lengths = H.code_lengths(f, max_length)
    assert lengths.dtype == np.uint8 and lengths.max(initial=0) <= max_length
    assert ((lengths > 0) == (f > 0)).all()
    if np.count_nonzero(f) >= 2:
        assert np.sum(2.0 ** -lengths[f > 0].astype(float)) == 1.0  # complete
    ref = unlimited_huffman_lengths(f)
    if ref.max(initial=0) <= max_length:  # the limit does not bind: Huffman is optimal
        assert int(f @ lengths) == int(f @ ref)
    else:
        assert int(f @ lengths) >= int(f @ ref)
    np.testing.assert_array_equal(H.code_lengths(f, max_length), lengths)  # deterministic


@FAST
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=6), st.integers(1, 3))
def test_code_lengths_optimal_when_limit_binds(freqs, max_length):
    # Brute force: the cheapest complete length vector within the limit.
    if len(freqs) > 2**max_length:
        return
    best = min(
        sum(f * l for f, l in zip(freqs, ls))
        for ls in itertools.product(range(1, max_length + 1), repeat=len(freqs))
        if sum(2.0**-l for l in ls) <= 1
    )
    assert int(np.array(freqs) @ H.code_lengths(np.array(freqs), max_length)) == best


def test_entropy_bits():
    assert H.entropy_bits(np.array([1, 1])) == 2.0
    assert H.entropy_bits(np.array([2, 1, 1, 0])) == 6.0
    assert H.entropy_bits(np.array([5, 0])) == 0.0
    assert H.entropy_bits(np.zeros(4)) == 0.0


# -- round trips -------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(["uniform", "geometric", "fibonacci"]),
    bits=st.integers(1, 8),
    n_used=st.integers(1, 256),
    n=st.integers(0, 3000),
    chunk=st.sampled_from([1, 7, 64, 1000, 65536]),
)
def test_round_trip_matches_reference(seed, shape, bits, n_used, n, chunk):
    s = symbols_from(seed, shape, bits, n_used, n)
    stream, offsets, lengths = round_trip(s, bits, chunk)
    np.testing.assert_array_equal(reference_decode(stream, offsets, lengths, n, chunk), s)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(["uniform", "geometric", "fibonacci"]),
    bits=st.integers(1, 8),
    n=st.integers(100_000, 400_000),
    chunk=st.sampled_from([4096, 10_000, 65536]),
)
def test_round_trip_long_streams(seed, shape, bits, n, chunk):
    # Many chunks: the four-chunk lockstep loop, the last group, the tails.
    round_trip(symbols_from(seed, shape, bits, 2**bits, n), bits, chunk)


def test_round_trip_all_256_symbols_and_12_bit_codes():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    f = np.ones(256, np.int64)
    f[:40] = fib
    s = np.repeat(np.arange(256, dtype=np.uint8), np.minimum(f, 3000))
    s = np.random.default_rng(0).permutation(np.concatenate([s] * 20))
    _, _, lengths = round_trip(s, 8, 7001)  # 7001 does not divide the length
    assert np.count_nonzero(lengths) == 256 and lengths.max() == 12


def test_zero_symbols():
    stream, offsets = H.encode(np.zeros(0, np.uint8), np.zeros(4, np.uint8))
    assert stream == b"" and offsets.tolist() == [0]
    assert H.decode(b"", np.array([0], np.uint64), np.zeros(4, np.uint8), 0, 64).size == 0


def test_decode_accepts_arrays_and_memoryviews():
    s = symbols_from(1, "geometric", 5, 32, 50_000)
    stream, offsets, lengths = round_trip(s, 5, 4096)
    padded = np.frombuffer(b"x" + stream, np.uint8)[1:]  # unaligned start
    np.testing.assert_array_equal(H.decode(padded, offsets, lengths, s.size, 4096), s)
    np.testing.assert_array_equal(H.decode(memoryview(stream), offsets.astype(np.int64), lengths, s.size, 4096), s)


def test_compression_near_entropy():
    # Gaussian-like 5-bit codes (entropy ~4.4 bits): within 2% of the bound.
    x = np.random.default_rng(0).standard_normal(1_000_000)
    s = np.clip(np.round((x + 3) / 6 * 31), 0, 31).astype(np.uint8)
    f = np.bincount(s, minlength=32)
    stream, _ = H.encode(s, H.code_lengths(f))
    assert len(stream) <= 1.02 * H.entropy_bits(f) / 8 + 32


# -- encoder arguments ----------------------------------------------------------------


def test_encode_rejects_symbol_without_code():
    with pytest.raises(CmzError, match="symbol 2 .* with none") as e:
        H.encode(np.array([0, 2], np.uint8), np.array([1, 1, 0, 0], np.uint8))
    assert e.value.check == "input"
    with pytest.raises(CmzError, match="symbol 9"):
        H.encode(np.array([0, 9], np.uint8), np.array([1, 1, 0, 0], np.uint8))
    with pytest.raises(CmzError, match="uint8"):
        H.encode(np.array([0, 1], np.int64), np.array([1, 1], np.uint8))
    with pytest.raises(CmzError, match="chunk_symbols"):
        H.encode(np.array([0, 1], np.uint8), np.array([1, 1], np.uint8), 0)


# -- hostile input: one attack per test ----------------------------------------------

GOLDEN = (b"\xda\x01", np.array([0, 2], np.uint64), GOLDEN_LENGTHS, 5, H.DEFAULT_CHUNK_SYMBOLS)


def rejects(match: str, stream, offsets, lengths, n, chunk):
    with pytest.raises(CmzError, match=match) as e:
        H.decode(stream, np.asarray(offsets), np.asarray(lengths, np.uint8), n, chunk)
    assert e.value.check == "data"
    return str(e.value)


def test_rejects_over_subscribed_table():
    # Three codes of length 1: Kraft sum 3/2.
    rejects("over-subscribed", b"\x00", [0, 1], [1, 1, 1, 0], 1, 64)


def test_rejects_incomplete_table():
    # Lengths 1 and 2 only: Kraft sum 3/4, the code 11 means nothing.
    rejects("incomplete", b"\x00", [0, 1], [1, 2, 0, 0], 1, 64)


def test_rejects_length_13():
    msg = rejects("expected 0..12", b"\x00", [0, 1], [1, 13, 0, 0], 1, 64)
    assert "found 13" in msg


def test_rejects_single_symbol_length_2():
    rejects("expected length 1 for the only used symbol", b"\x00", [0, 1], [0, 2, 0, 0], 1, 64)


def test_rejects_empty_table_for_symbols():
    rejects("at least one used symbol", b"\x00", [0, 1], [0, 0, 0, 0], 1, 64)


def test_rejects_alphabet_not_power_of_two():
    rejects("2\\*\\*bits alphabet", b"\x00", [0, 1], [1, 2, 2], 1, 64)


def test_rejects_more_symbols_than_bits_before_allocating():
    # 10**15 symbols claimed for one byte: refused before allocating output.
    msg = rejects("at most 8 symbols per byte", b"\x00", [0, 1], GOLDEN_LENGTHS, 10**15, 10**15)
    assert "found 1000000000000000 symbols" in msg


def test_rejects_truncated_chunk():
    # Three symbols 3 = 111 111 111 need 9 bits; the chunk has one byte.
    rejects("running past", b"\xff", [0, 1], GOLDEN_LENGTHS, 3, 64)


def test_rejects_truncated_long_chunk():
    # A real stream with its last byte cut off (and offsets adjusted).
    s = symbols_from(3, "geometric", 8, 256, 20_000)
    lengths = H.code_lengths(np.bincount(s, minlength=256))
    stream, offsets = H.encode(s, lengths, 4096)
    offsets[-1] -= 1
    rejects("chunk 4: .* running past", stream[:-1], offsets, lengths, s.size, 4096)


def test_rejects_nonzero_padding():
    # Golden stream with padding bit 2 of byte 1 set.
    rejects("non-zero padding", b"\xda\x05", [0, 2], GOLDEN_LENGTHS, 5, 64)


def test_rejects_extra_trailing_byte():
    rejects("unused trailing bytes", b"\xda\x01\x00", [0, 3], GOLDEN_LENGTHS, 5, 64)


def test_rejects_non_monotone_offsets():
    rejects("non-decreasing", b"\x1a\x07", [0, 2, 1, 2], GOLDEN_LENGTHS, 5, 2)


def test_rejects_offsets_not_ending_at_stream_length():
    rejects("stream length 2; found 1", b"\xda\x01", [0, 1], GOLDEN_LENGTHS, 5, 64)


def test_rejects_offsets_not_starting_at_zero():
    rejects("first to be 0", b"\xda\x01", [1, 2], GOLDEN_LENGTHS, 5, 64)


def test_rejects_wrong_offset_count():
    rejects("expected 3 integers", b"\x1a\x07", [0, 2], GOLDEN_LENGTHS, 5, 3)


def test_rejects_negative_offsets():
    rejects("non-negative", b"\xda\x01", np.array([0, -1, 2]), GOLDEN_LENGTHS, 5, 3)


def test_rejects_single_symbol_one_bit():
    # One used symbol: its code is the bit 0; bit 1 of the chunk is a 1.
    rejects("found a 1 bit at bit 1", b"\x02", [0, 1], [0, 0, 1, 0], 3, 64)


def test_rejects_single_symbol_padding():
    rejects("zero padding bits .* bit 3", b"\x08", [0, 1], [0, 0, 1, 0], 3, 64)


def test_rejects_single_symbol_wrong_chunk_size():
    rejects("expected 1 bytes .* trailing", b"\x00\x00", [0, 2], [0, 0, 1, 0], 3, 64)


def test_rejects_bad_threads():
    with pytest.raises(CmzError, match="threads") as e:
        H.decode(*GOLDEN, threads=0)
    assert e.value.check == "input"


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    seed=st.integers(0, 2**32 - 1),
    n_per_chunk=st.integers(1, 300),
)
def test_hostile_streams_are_rejected_or_canonical(data, cuts, seed, n_per_chunk):
    # Random bytes, random offsets: decode must raise CmzError or return
    # symbols whose encoding is exactly the input (only canonical streams
    # are accepted), and agree with the reference decoder either way.
    rng = np.random.default_rng(seed)
    bits = int(rng.integers(1, 9))
    lengths = H.code_lengths(rng.integers(0, 50, 2**bits) + (np.arange(2**bits) < 2))
    offsets = np.array([0] + sorted(min(c, len(data)) for c in cuts) + [len(data)], np.uint64)
    n = int(rng.integers((offsets.size - 2) * n_per_chunk + 1, (offsets.size - 1) * n_per_chunk + 1))
    try:
        expected = reference_decode(data, offsets, lengths, n, n_per_chunk)
    except ValueError:
        expected = None
    try:
        got = H.decode(data, offsets, lengths, n, n_per_chunk)
    except CmzError:
        assert expected is None
        return
    np.testing.assert_array_equal(got, expected)
    assert H.encode(got, lengths, n_per_chunk)[0] == data


def test_hostile_mutations_of_a_long_stream():
    # Flip bytes of a multi-chunk stream (fast paths, not only tails): every
    # result is a CmzError or a stream that re-encodes to the same bytes.
    s = symbols_from(5, "geometric", 5, 32, 100_000)
    lengths = H.code_lengths(np.bincount(s, minlength=32))
    stream, offsets = H.encode(s, lengths, 8192)
    rng = np.random.default_rng(0)
    for _ in range(100):
        b = bytearray(stream)
        for p in rng.integers(0, len(b), 3):
            b[p] ^= int(rng.integers(1, 256))
        try:
            got = H.decode(bytes(b), offsets, lengths, s.size, 8192)
        except CmzError:
            continue
        assert H.encode(got, lengths, 8192)[0] == bytes(b)
