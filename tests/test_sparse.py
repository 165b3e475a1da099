"""cmodel.codecs.entries: relative-index entries with fillers, validation, packed coding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cmodel.errors import CmzError
from cmodel.codecs.entries import (
    count_fillers,
    pack_bits,
    pack_entries,
    pointer_dtype,
    relative_index_decode,
    relative_index_encode,
    unpack_bits,
    unpack_entries,
    validate_entries,
)

ORDERS = ("row", "col")


def reference_encode(codes, r, order):
    """The rule written plainly: a gap g becomes g // 2**r fillers, then delta g % 2**r."""
    lines = codes if order == "row" else codes.T
    pointers, entries = [0], []
    for line in lines.tolist():
        prev_end = 0
        for pos, code in enumerate(line):
            if code:
                fillers, delta = divmod(pos - prev_end, 2**r)
                entries += [(2**r - 1, 0)] * fillers + [(delta, code)]
                prev_end = pos + 1
        pointers.append(len(entries))
    return pointers, entries


def entries_of(d, c):
    return list(zip(d.tolist(), c.tolist()))


@st.composite
def code_matrices(draw, max_rows=12, max_cols=40):
    """(codes, b): sparse or dense uint8 code matrices in C, F or strided layout."""
    b = draw(st.integers(1, 8))
    shape = (draw(st.integers(0, max_rows)), draw(st.integers(0, max_cols)))
    background = draw(st.just(0) | st.integers(0, 2**b - 1))
    codes = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 2**b - 1), fill=st.just(background)))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        codes = np.asfortranarray(codes)
    elif layout == "strided":
        codes = np.repeat(codes, 2, axis=1)[:, ::2]
    return codes, b


# ---------------------------------------------------------------- encode / decode


@settings(max_examples=300, deadline=None)
@given(code_matrices(), st.integers(1, 8), st.sampled_from(ORDERS))
def test_round_trip_matches_reference(cb, r, order):
    codes, b = cb
    p, d, c = relative_index_encode(codes, r, order)
    ref_p, ref_entries = reference_encode(codes, r, order)
    assert p.dtype == np.uint16 and d.dtype == np.uint8 and c.dtype == np.uint8
    assert p.tolist() == ref_p
    assert entries_of(d, c) == ref_entries
    assert count_fillers(c) == sum(code == 0 for _, code in ref_entries)
    validate_entries(p, d, c, codes.shape, r, order, 2**b)
    assert np.array_equal(relative_index_decode(p, d, c, codes.shape, r, order), codes)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 1200), min_size=0, max_size=4), st.sampled_from(ORDERS))
def test_long_runs_of_zeros(r, gaps, order):
    line = []
    for g in gaps:
        line += [0] * g + [7]
    line += [0] * 300  # trailing zeros get no entries
    codes = np.array([line], np.uint8)
    if order == "col":
        codes = codes.T.copy()
    p, d, c = relative_index_encode(codes, r, order)
    expected = []
    for g in gaps:
        expected += [(2**r - 1, 0)] * (g >> r) + [(g % 2**r, 7)]
    assert entries_of(d, c) == expected
    assert p.tolist() == [0, len(expected)]
    assert np.array_equal(relative_index_decode(p, d, c, codes.shape, r, order), codes)


def test_golden_worked_example():
    # Spec example, r = 4: row [0,0,1,2, 18 zeros, 3] of length 23.
    codes = np.array([[0, 0, 1, 2] + [0] * 18 + [3]], np.uint8)
    p, d, c = relative_index_encode(codes, 4)
    assert p.tolist() == [0, 4]
    assert entries_of(d, c) == [(2, 1), (0, 2), (15, 0), (2, 3)]
    assert count_fillers(c) == 1
    assert pack_entries(d, c, 4, 4).tobytes() == bytes([0x12, 0x20, 0x0F, 0x32])


@pytest.mark.parametrize("r", range(1, 9))
@pytest.mark.parametrize("order", ORDERS)
def test_fillers_at_the_gap_boundaries(r, order):
    m = 2**r - 1
    cases = {
        m: [(m, 5)],  # gap 2**r - 1: fits, no filler
        m + 1: [(m, 0), (0, 5)],  # gap 2**r: one filler, delta 0
        m + 2: [(m, 0), (1, 5)],  # gap 2**r + 1
        3 * (m + 1) + m // 2: [(m, 0)] * 3 + [(m // 2, 5)],  # a long run
    }
    for gap, expected in cases.items():
        codes = np.zeros((1, gap + 1), np.uint8)
        codes[0, gap] = 5
        if order == "col":
            codes = codes.T.copy()
        _, d, c = relative_index_encode(codes, r, order)
        assert entries_of(d, c) == expected, gap


def test_spec_gap_examples_r4():
    for gap, expected in {15: [(15, 9)], 16: [(15, 0), (0, 9)], 17: [(15, 0), (1, 9)], 40: [(15, 0), (15, 0), (8, 9)]}.items():
        codes = np.array([[0] * gap + [9]], np.uint8)
        _, d, c = relative_index_encode(codes, 4)
        assert entries_of(d, c) == expected


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0), (1, 1), (1, 7), (7, 1)])
@pytest.mark.parametrize("order", ORDERS)
def test_degenerate_shapes(shape, order):
    codes = np.zeros(shape, np.uint8)
    p, d, c = relative_index_encode(codes, 3, order)
    assert p.tolist() == [0] * ((shape[0] if order == "row" else shape[1]) + 1)
    assert d.size == c.size == 0
    assert relative_index_decode(p, d, c, shape, 3, order).shape == shape


def test_empty_rows_and_columns():
    codes = np.zeros((4, 5), np.uint8)
    codes[1, 3] = 2
    codes[3, 0] = 1
    p, d, c = relative_index_encode(codes, 2, "row")
    assert p.tolist() == [0, 0, 1, 1, 2]
    assert entries_of(d, c) == [(3, 2), (0, 1)]
    p, d, c = relative_index_encode(codes, 2, "col")
    assert p.tolist() == [0, 1, 1, 1, 2, 2]
    assert entries_of(d, c) == [(3, 1), (1, 2)]


def test_large_matrix_on_the_parallel_path():
    # Large enough for the multi-threaded kernels, and wider than one column
    # block of the col-order encoder; C, F and strided layouts.
    rng = np.random.default_rng(1)
    codes = (rng.random((37, 9000)) < 0.05).astype(np.uint8) * rng.integers(1, 4, (37, 9000), dtype=np.uint8)
    for m in (codes, np.asfortranarray(codes), codes[:, ::2]):
        for order in ORDERS:
            p, d, c = relative_index_encode(m, 2, order)
            ref_p, ref_entries = reference_encode(m, 2, order)
            assert p.tolist() == ref_p and entries_of(d, c) == ref_entries
    p, d, c = relative_index_encode(codes, 2, "col")
    validate_entries(p, d, c, codes.shape, 2, "col", 4)
    d[-1], c[-1] = 1, 0  # the last entry becomes a code 0 that is not a filler
    last_line = np.flatnonzero(np.diff(p.astype(np.int64)))[-1]
    with pytest.raises(CmzError, match=f"col {last_line}, entry {d.size - 1}: expected code 0 only in a filler"):
        validate_entries(p, d, c, codes.shape, 2, "col", 4)


@pytest.mark.parametrize("width", [5, 16])
def test_large_pack_on_the_parallel_path(width):
    v = np.random.default_rng(width).integers(0, 2**width, 300_001).astype(np.uint16)
    buf = pack_bits(v, width)
    bits = ((v[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()
    assert np.array_equal(buf, np.packbits(bits, bitorder="little"))
    assert np.array_equal(unpack_bits(buf, width, v.size), v)


def test_pointer_dtype():
    assert pointer_dtype(0) == np.uint16
    assert pointer_dtype(2**16 - 1) == np.uint16
    assert pointer_dtype(2**16) == np.uint32
    assert pointer_dtype(2**32 - 1) == np.uint32
    assert pointer_dtype(2**32) == np.uint64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codes2d": np.zeros((2, 2), np.int64)}, "2-D uint8"),
        ({"codes2d": np.zeros(4, np.uint8)}, "2-D uint8"),
        ({"index_bits": 0}, "index_bits: expected an int in 1..8; found 0"),
        ({"index_bits": 9}, "index_bits: expected an int in 1..8; found 9"),
        ({"index_bits": True}, "index_bits"),
        ({"order": "csr"}, "order: expected one of"),
    ],
)
def test_encode_rejects_bad_arguments(kwargs, match):
    args = {"codes2d": np.zeros((2, 2), np.uint8), "index_bits": 4, "order": "row"} | kwargs
    with pytest.raises(CmzError, match=match) as e:
        relative_index_encode(**args)
    assert e.value.check == "encoder_options"


# ---------------------------------------------------------------- validation


def good():
    """A sound (pointers, deltas, codes, shape, r, order, codebook_size) for r = 2, one filler."""
    codes = np.array([[0, 1, 0, 0, 0, 0, 2], [3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], np.uint8)
    p, d, c = relative_index_encode(codes, 2, "row")
    assert entries_of(d, c) == [(1, 1), (3, 0), (0, 2), (0, 3)]
    return [p, d, c, codes.shape, 2, "row", 4]


def check_rejected(args, check, match):
    with pytest.raises(CmzError, match=match) as e:
        validate_entries(*args)
    assert e.value.check == check


def test_validate_accepts_good_entries():
    validate_entries(*good())
    args = good()
    args[0] = args[0].astype(np.uint64)
    validate_entries(*args)


def test_pointers_of_wrong_length():
    args = good()
    args[0] = args[0][:-1]
    check_rejected(args, "pointers", r"expected 4 values \(lines \+ 1\); found 3")


def test_pointers_not_starting_at_zero():
    args = good()
    args[0] = args[0] + np.uint32(1)
    check_rejected(args, "pointers", r"pointers\[0\]: expected 0; found 1")


def test_pointers_decreasing():
    args = good()
    args[0] = np.array([0, 3, 2, 4], np.uint32)
    check_rejected(args, "pointers", r"non-decreasing values; found pointers\[2\] = 2 < pointers\[1\] = 3")


def test_pointers_not_ending_at_entry_count():
    args = good()
    args[0] = np.array([0, 3, 4, 5], np.uint32)
    check_rejected(args, "pointers", r"pointers\[-1\]: expected the entry count 4; found 5")


def test_pointers_not_integers():
    args = good()
    args[0] = args[0].astype(np.float64)
    check_rejected(args, "pointers", "1-D integer array")


def test_delta_too_large():
    args = good()
    args[1] = args[1].copy()
    args[1][2] = 4  # 2**r with r = 2
    check_rejected(args, "entries", r"row 0, entry 2: expected delta < 2\*\*r = 4; found delta 4")


def test_code_outside_codebook():
    args = good()
    args[2] = args[2].copy()
    args[2][3] = 4  # codebook_size 4
    check_rejected(args, "entries", "row 1, entry 3: expected code < codebook size 4; found code 4")


def test_code_zero_that_is_not_a_filler():
    args = good()
    args[2] = args[2].copy()
    args[2][0] = 0  # delta 1 != 3
    check_rejected(args, "entries", r"row 0, entry 0: expected code 0 only in a filler with delta 2\*\*r - 1 = 3; found delta 1")


def test_entries_run_past_the_line():
    args = good()
    args[3] = (3, 6)  # row 0's entries cover 2 + 4 + 1 = 7 positions
    check_rejected(args, "entries", "row 0, entry 2: expected the entries to cover at most the line length 6; found 7 positions covered")


def test_first_bad_line_and_entry_are_reported():
    codes = np.ones((50, 10), np.uint8)  # every row: ten entries (0, 1)
    p, d, c = relative_index_encode(codes, 3, "row")
    c[p[7]] = 5  # a later bad line
    c[p[3] + 4] = 5  # the first bad entry of the first bad line
    d[p[3] + 6] = 9  # a later problem in the same line
    check_rejected([p, d, c, codes.shape, 3, "row", 2], "entries", f"row 3, entry {p[3] + 4}: expected code < codebook size 2; found code 5")


@pytest.mark.parametrize(
    "change, check, match",
    [
        ({4: 9}, "encoder_options", "index_bits"),
        ({5: "diag"}, "encoder_options", "order"),
        ({6: 0}, "encoder_options", "codebook_size"),
        ({6: 257}, "encoder_options", "codebook_size"),
        ({3: (3, -1)}, "encoder_options", "shape2d"),
        ({3: (3,)}, "encoder_options", "shape2d"),
        ({1: np.zeros(4, np.int16)}, "encoder_options", "deltas: expected a 1-D uint8 array"),
        ({2: np.zeros(3, np.uint8)}, "entries", r"expected as many codes as deltas \(4\); found 3"),
    ],
)
def test_validate_rejects_bad_arguments(change, check, match):
    args = good()
    for i, v in change.items():
        args[i] = v
    check_rejected(args, check, match)


def test_decode_validates_first():
    args = good()[:6]
    args[1] = args[1].copy()
    args[1][0] = 200
    with pytest.raises(CmzError, match="expected delta < 2"):
        relative_index_decode(*args)


# ---------------------------------------------------------------- packed coding


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(1, 16))
def test_pack_bits_round_trip(data, width):
    values = data.draw(hnp.arrays(np.uint16, st.integers(0, 70), elements=st.integers(0, 2**width - 1)))
    buf = pack_bits(values, width)
    assert buf.dtype == np.uint8 and buf.size == (values.size * width + 7) // 8
    # Bit k of the stream is bit k % 8 of byte k // 8; value i holds stream bits [i*w, (i+1)*w).
    stream = int.from_bytes(buf.tobytes(), "little")
    assert stream == sum(int(v) << (i * width) for i, v in enumerate(values))
    assert np.array_equal(unpack_bits(buf, width, values.size), values)
    assert np.array_equal(unpack_bits(buf.tobytes(), width, values.size), values)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(1, 8), st.integers(1, 8))
def test_pack_entries_round_trip(data, r, b):
    n = data.draw(st.integers(0, 60))
    d = data.draw(hnp.arrays(np.uint8, n, elements=st.integers(0, 2**r - 1)))
    c = data.draw(hnp.arrays(np.uint8, n, elements=st.integers(0, 2**b - 1)))
    buf = pack_entries(d, c, r, b)
    assert np.array_equal(buf, pack_bits(d.astype(np.uint16) | c.astype(np.uint16) << r, r + b))
    d2, c2 = unpack_entries(buf, n, r, b)
    assert np.array_equal(d2, d) and np.array_equal(c2, c)


def test_golden_bytes_width_3():
    # 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21 = 0x1F58D1
    assert pack_bits(np.array([1, 2, 3, 4, 5, 6, 7, 0]), 3).tobytes() == b"\xd1\x58\x1f"
    # Two 3-bit values: 5 | 3<<3 = 0x1D in one byte, high two bits padding.
    assert pack_bits(np.array([5, 3]), 3).tobytes() == b"\x1d"


def test_golden_bytes_width_12():
    assert pack_bits(np.array([0xABC, 0x123]), 12).tobytes() == b"\xbc\x3a\x12"
    assert pack_bits(np.array([0xABC]), 12).tobytes() == b"\xbc\x0a"


def test_widths_8_and_16_are_plain_bytes_and_little_endian_u16():
    v = np.arange(0, 65536, 997, dtype=np.uint16)
    assert pack_bits(v, 16).tobytes() == v.astype("<u2").tobytes()
    assert pack_bits(v & 0xFF, 8).tobytes() == (v & 0xFF).astype(np.uint8).tobytes()
    # EIE's 4 + 4: delta in the low nibble, code in the high nibble.
    assert pack_entries(np.array([0xA, 0x3]), np.array([0x5, 0xF]), 4, 4).tobytes() == b"\x5a\xf3"


@pytest.mark.parametrize("width", range(1, 17))
def test_unpack_rejects_wrong_length(width):
    buf = pack_bits(np.ones(13, np.uint16), width)
    for bad in (buf[:-1], np.concatenate([buf, np.zeros(1, np.uint8)])):
        with pytest.raises(CmzError, match=rf"expected {buf.size} bytes for 13 fields of {width} bits; found {bad.size}") as e:
            unpack_bits(bad, width, 13)
        assert e.value.check == "entries"


def test_unpack_rejects_nonzero_padding():
    with pytest.raises(CmzError, match=r"expected zero padding in the last byte's 2 high bits; found byte 0x5d") as e:
        unpack_bits(b"\x5d", 3, 2)
    assert e.value.check == "entries"
    with pytest.raises(CmzError, match="zero padding"):
        unpack_entries(b"\xbc\x1a", 1, 4, 8)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(CmzError, match=r"values\[1\]: expected 0..7 \(3 bits\); found 8") as e:
        pack_bits(np.array([1, 8, 9]), 3)
    assert e.value.check == "entries"
    with pytest.raises(CmzError, match=r"values\[0\]: expected 0..7 \(3 bits\); found -1"):
        pack_bits(np.array([-1]), 3)
    with pytest.raises(CmzError, match=r"deltas\[0\]: expected 0..15 \(4 bits\); found 16"):
        pack_entries(np.array([16]), np.array([1]), 4, 4)
    with pytest.raises(CmzError, match=r"codes\[2\]: expected 0..3 \(2 bits\); found 4"):
        pack_entries(np.array([0, 0, 0]), np.array([1, 2, 4]), 4, 2)
    with pytest.raises(CmzError, match=r"expected as many codes as deltas \(2\); found 1"):
        pack_entries(np.array([0, 0]), np.array([1]), 4, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pack_bits(np.array([1]), 0), "width: expected an int in 1..16; found 0"),
        (lambda: pack_bits(np.array([1]), 17), "width: expected an int in 1..16; found 17"),
        (lambda: pack_bits(np.array([1.0]), 3), "values: expected a 1-D integer array"),
        (lambda: pack_bits(np.zeros((2, 2), np.uint8), 3), "values: expected a 1-D integer array"),
        (lambda: unpack_bits(b"", 3, -1), "count: expected a non-negative int; found -1"),
        (lambda: unpack_bits(np.zeros(2, np.uint16), 8, 2), "buf: expected a 1-D uint8 array"),
        (lambda: pack_entries(np.array([1]), np.array([1]), 4, 9), "value_bits: expected an int in 1..8; found 9"),
        (lambda: unpack_entries(b"", 0, 0, 4), "index_bits: expected an int in 1..8; found 0"),
    ],
)
def test_packing_rejects_bad_arguments(call, match):
    with pytest.raises(CmzError, match=match) as e:
        call()
    assert e.value.check == "encoder_options"


def test_unpacked_entries_are_checked_end_to_end():
    codes = np.array([[0, 0, 1, 2] + [0] * 18 + [3]], np.uint8)
    p, d, c = relative_index_encode(codes, 4)
    d2, c2 = unpack_entries(pack_entries(d, c, 4, 2).tobytes(), d.size, 4, 2)
    assert np.array_equal(relative_index_decode(p, d2, c2, codes.shape, 4, "row"), codes)
