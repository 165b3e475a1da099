"""Constants of the ``.cmz`` format, mirrored from ``spec/cmz.md``.

This module is the single source of truth in code; ``tests/test_spec.py``
parses the spec and fails when the two disagree.  Section numbers below refer
to ``spec/cmz.md``.
"""

from __future__ import annotations

# §2 Preamble -----------------------------------------------------------------

MAGIC = b"\x89CMZ\r\n\x1a\n"
PREAMBLE_FORMAT = "<8sHHIQII"  # magic, major, minor, flags, header_length, header_crc32, reserved
PREAMBLE_SIZE = 32

# §8 Versioning: the versions this reader accepts, and the one the writer emits.
FORMAT_VERSION = (1, 0)
READABLE_VERSIONS = ((1, 0),)

# §4 Data section: every segment offset is a multiple of this, relative to the
# start of the data section, which itself starts at the first multiple of it
# after the header.
ALIGNMENT = 64

# §9 Limits.  Each is checked before anything is allocated from a declared size.
LIMITS = {
    # The header is parsed whole into Python objects before it is validated;
    # the bound caps that memory and time.  A 100k-tensor model needs ~20 MiB.
    "MAX_HEADER_BYTES": 64 * 1024 * 1024,
    # numpy supports at most 64 dimensions; no model tensor has more than a few.
    "MAX_NDIM": 32,
    # Tensor names are dict keys and CLI output; 1 KiB of UTF-8 is ample.
    "MAX_NAME_BYTES": 1024,
    # Bounds per-tensor bookkeeping; far above any real model.
    "MAX_TENSORS": 1_000_000,
    # Bounds the metadata map and the per-entry memory of a parse.
    "MAX_METADATA_ENTRIES": 10_000,
    # Element counts and byte sizes must stay exact in int64 arithmetic
    # (numpy, Numba) everywhere downstream.
    "MAX_ELEMENTS": 2**62,
    # Elements per sample of any graph value (§10.5), padded conv and pool
    # inputs included.  A graph is a few bytes, so unlike tensors its
    # activations are not bounded by the file: this bounds the memory a run
    # can be made to need (16 GiB of float32 per sample; an 8K image with 64
    # channels is 2.1e9).
    "MAX_VALUE_ELEMENTS": 2**32,
}
MAX_HEADER_BYTES = LIMITS["MAX_HEADER_BYTES"]
MAX_NDIM = LIMITS["MAX_NDIM"]
MAX_NAME_BYTES = LIMITS["MAX_NAME_BYTES"]
MAX_TENSORS = LIMITS["MAX_TENSORS"]
MAX_METADATA_ENTRIES = LIMITS["MAX_METADATA_ENTRIES"]
MAX_ELEMENTS = LIMITS["MAX_ELEMENTS"]
MAX_VALUE_ELEMENTS = LIMITS["MAX_VALUE_ELEMENTS"]

# §5 Dtypes: name -> (little-endian storage dtype, bytes per element).
# bfloat16 is stored as the upper 16 bits of the IEEE float32 pattern (u16,
# little-endian) and read back as float32, which represents it exactly.
DTYPES = {
    "float64": ("<f8", 8),
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int16": ("<i2", 2),
    "int8": ("|i1", 1),
    "uint64": ("<u8", 8),
    "uint32": ("<u4", 4),
    "uint16": ("<u2", 2),
    "uint8": ("|u1", 1),
    "bool": ("|u1", 1),
}

# §6 Encodings defined by this version of the format.
ENCODINGS = ("raw", "codebook", "sparse")
CODINGS = ("packed", "huffman")
ORDERS = ("row", "col")
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")

# §3 Header: key sets.  Required keys must be present, optional keys may be,
# and any other key is an error.
HEADER_REQUIRED_KEYS = ("metadata", "tensors")
HEADER_OPTIONAL_KEYS = ("producer", "graph")
TENSOR_COMMON_KEYS = ("name", "shape", "dtype", "encoding", "segments")
# Per encoding: (required keys, optional keys).  ``chunk_symbols`` is present
# exactly when ``coding`` is ``huffman``.
ENCODING_KEYS = {
    "raw": ((), ()),
    "codebook": (("bits", "coding", "codebook_dtype", "scale"), ("chunk_symbols",)),
    "sparse": (("bits", "index_bits", "order", "coding", "codebook_dtype", "scale", "n_entries", "pointer_dtype"), ("chunk_symbols",)),
}
# §6 Encoding keys: name -> ("int", min, max) or ("str", allowed values).
PARAMS = {
    "bits": ("int", 1, 8),
    "index_bits": ("int", 1, 8),
    "order": ("str", ORDERS),
    "coding": ("str", CODINGS),
    "codebook_dtype": ("str", ("float32", "float16")),
    "scale": ("str", ("none", "float32", "float16")),
    "n_entries": ("int", 0, 2**62),
    "pointer_dtype": ("str", ("uint16", "uint32", "uint64")),
    "chunk_symbols": ("int", 1, 2**24),
}
# §6 Segment roles in layout order, per (encoding, coding); ``scales`` is
# present exactly when ``scale`` is not ``none``.
SEGMENT_ROLES = {
    ("raw", None): ("data",),
    ("codebook", "packed"): ("codebook", "scales", "codes"),
    ("codebook", "huffman"): ("codebook", "scales", "code_lengths", "codes", "code_chunks"),
    ("sparse", "packed"): ("codebook", "scales", "pointers", "entries"),
    ("sparse", "huffman"): ("codebook", "scales", "pointers", "code_lengths", "codes", "code_chunks", "delta_lengths", "deltas", "delta_chunks"),
}
# §6.5 Huffman.  12 bits keeps the one-lookup decode table at 4096 entries
# (16 KiB, resident in L1); on Gaussian-like 8-bit codes the limit cost
# < 0.02% against unlimited Huffman codes (measured, 4e6 symbols).
MAX_CODE_LENGTH = 12
# Symbols per chunk: big enough that offsets (8 bytes per chunk) cost < 0.01%
# of the stream, small enough for 1 MiB-scale tensors to decode in parallel.
DEFAULT_CHUNK_SYMBOLS = 65536

# §7 Checks, in the order a reader performs them.  Every CmzError carries one
# of these names as ``.check``.
CHECKS = (
    "preamble",
    "magic",
    "version",
    "flags",
    "reserved",
    "header_length",
    "header_crc",
    "header_padding",
    "msgpack",
    "header_keys",
    "metadata",
    "producer",
    "tensor_keys",
    "name",
    "dtype",
    "encoding",
    "params",
    "shape",
    "segment",
    "segment_layout",
    "segment_padding",
    "file_size",
    "segment_crc",
    "data",
    "codebook",
    "huffman",
    "pointers",
    "entries",
    "graph",
)

# Checks on arguments given to the writer and encoder (not on files).
INPUT_CHECKS = ("input", "encoder_options")
