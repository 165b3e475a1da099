"""The header map: msgpack encoding and schema validation (spec §3, §7).

Validation runs in stages over *all* tensor records, in the order of
``constants.CHECKS``, so the first error reported does not depend on which
tensor happens to come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import msgpack

from . import constants as C
from ..errors import CmzError


@dataclass(frozen=True)
class Segment:
    """One segment record: ``offset`` is relative to the data section."""

    offset: int
    length: int
    crc32: int


@dataclass(frozen=True)
class TensorRecord:
    """A validated tensor record (spec §3.3).

    ``params`` holds the encoding-specific keys (empty for ``raw``);
    ``segments`` maps each segment role to its :class:`Segment`.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    params: dict
    segments: dict[str, Segment]

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Header:
    """The validated header.  ``graph`` is the optional graph map exactly as
    parsed (only its being a map is checked here; the runtime validates its
    content, spec §10), or None when the file has none."""

    metadata: dict[str, str]
    producer: dict[str, str] | None
    tensors: tuple[TensorRecord, ...]
    graph: dict | None = None


# --- encoding -------------------------------------------------------------


def pack_header(metadata: dict[str, str], producer: dict[str, str] | None, tensors: list[dict], graph: dict | None = None) -> bytes:
    """Serialise the header map in its canonical key order (spec §3.1)."""
    top = {"metadata": {k: metadata[k] for k in sorted(metadata)}}
    if producer is not None:
        top["producer"] = producer
    top["tensors"] = tensors
    if graph is not None:
        top["graph"] = graph
    return msgpack.packb(top, use_bin_type=True)


def tensor_record_dict(name, shape, dtype, encoding, params, segments) -> dict:
    """The record map in canonical key order: common keys, then the
    encoding's keys sorted, with ``segments`` last."""
    d = {"name": name, "shape": list(shape), "dtype": dtype, "encoding": encoding}
    for k in sorted(params):
        d[k] = params[k]
    d["segments"] = {role: [s.offset, s.length, s.crc32] for role, s in segments.items()}
    return d


# --- decoding -------------------------------------------------------------


class _DuplicateKey(Exception):
    pass


class _NonStrKey(Exception):
    pass


def _pairs(pairs):
    d = {}
    for k, v in pairs:
        if type(k) is not str:
            raise _NonStrKey(k)
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _reject_timestamps(obj) -> None:
    """msgpack decodes extension type -1 to ``Timestamp`` without calling
    ``ext_hook``; spec §3.1 rejects every extension type."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            stack.extend(v.values())
        elif type(v) is list:
            stack.extend(v)
        elif isinstance(v, msgpack.Timestamp):
            raise CmzError("msgpack", "header: msgpack extension type -1 (timestamp) is not allowed; expected only maps, arrays, str, int")


def _no_ext(code, data):
    raise CmzError("msgpack", f"header: msgpack extension type {code} is not allowed; expected only maps, arrays, str, int")


def unpack_header(raw: bytes) -> object:
    """Parse the header bytes; msgpack errors become ``CmzError('msgpack')``."""
    n = len(raw)
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_pairs,
            ext_hook=_no_ext,
            use_list=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
        )
    except CmzError:
        raise
    except _NonStrKey as e:
        raise CmzError("msgpack", f"header: every map key must be a str; found {_type_name(e.args[0])} {e.args[0]!r}") from None
    except _DuplicateKey as e:
        raise CmzError("msgpack", f"header: every map key must be unique; found key {e.args[0]!r} twice") from None
    except msgpack.ExtraData:
        raise CmzError("msgpack", "header: expected exactly one msgpack map filling the header; found extra bytes after it") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CmzError("msgpack", f"header: expected valid msgpack; found {type(e).__name__}: {e}") from None
    _reject_timestamps(obj)
    return obj


def _type_name(v) -> str:
    return {dict: "map", list: "array", str: "str", bytes: "bin", int: "int", float: "float", bool: "bool", type(None): "nil"}.get(
        type(v), type(v).__name__
    )


def _check_keys(check, what, d, required, optional):
    """``optional=None`` checks only the required keys (unknown keys are
    judged later, once the encoding is known)."""
    if type(d) is not dict:
        raise CmzError(check, f"{what}: expected a map; found {_type_name(d)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise CmzError(check, f"{what}: missing required key {missing[0]!r}; expected keys {sorted(required)}")
    if optional is None:
        return
    allowed = set(required) | set(optional)
    unknown = sorted(k for k in d if k not in allowed)
    if unknown:
        raise CmzError(check, f"{what}: unknown key {unknown[0]!r}; expected only {sorted(allowed)}")


def _check_str_map(check, what, d, max_entries):
    if type(d) is not dict:
        raise CmzError(check, f"{what}: expected a map of str to str; found {_type_name(d)}")
    if len(d) > max_entries:
        raise CmzError(check, f"{what}: expected at most {max_entries} entries (MAX_METADATA_ENTRIES); found {len(d)}")
    for k, v in d.items():
        if type(v) is not str:
            raise CmzError(check, f"{what}[{k!r}]: expected str; found {_type_name(v)}")


def _is_uint(v, bound) -> bool:
    return type(v) is int and 0 <= v < bound


def segment_roles(encoding: str, coding: str | None, scale: str | None) -> tuple[str, ...]:
    """The segment roles of a record, in layout order (spec §6)."""
    roles = C.SEGMENT_ROLES[(encoding, coding)]
    return tuple(r for r in roles if r != "scales" or scale not in (None, "none"))


def _check_params(t: dict) -> None:
    what = f"tensor {t['name']!r} ({t['encoding']})"
    for key in C.ENCODING_KEYS[t["encoding"]][0] + C.ENCODING_KEYS[t["encoding"]][1]:
        if key not in t:
            continue
        v, rule = t[key], C.PARAMS[key]
        if rule[0] == "int":
            if type(v) is not int or not rule[1] <= v <= rule[2]:
                raise CmzError("params", f"{what}: expected {key} an int in {rule[1]}..{rule[2]}; found {_type_name(v)} {v!r}")
        elif type(v) is not str or v not in rule[1]:
            raise CmzError("params", f"{what}: expected {key} one of {list(rule[1])}; found {_type_name(v)} {v!r}")
    if t["encoding"] == "raw":
        return
    if t["dtype"] not in C.FLOAT_DTYPES:
        raise CmzError("params", f"{what}: expected a float dtype {list(C.FLOAT_DTYPES)} for a compressed tensor; found {t['dtype']!r}")
    if ("chunk_symbols" in t) != (t["coding"] == "huffman"):
        raise CmzError("params", f"{what}: expected chunk_symbols exactly when coding is 'huffman'; found coding {t['coding']!r} {'with' if 'chunk_symbols' in t else 'without'} it")


def validate_header(obj: object) -> Header:
    """Validate the parsed header map against spec §3 and return records.

    Raises:
        CmzError: with ``check`` naming the first failed stage.
    """
    _check_keys("header_keys", "header", obj, C.HEADER_REQUIRED_KEYS, C.HEADER_OPTIONAL_KEYS)
    tensors = obj["tensors"]
    if type(tensors) is not list:
        raise CmzError("header_keys", f"header['tensors']: expected an array; found {_type_name(tensors)}")
    if len(tensors) > C.MAX_TENSORS:
        raise CmzError("header_keys", f"header['tensors']: expected at most {C.MAX_TENSORS} records (MAX_TENSORS); found {len(tensors)}")
    if "graph" in obj and type(obj["graph"]) is not dict:
        raise CmzError("header_keys", f"header['graph']: expected a map (spec §10); found {_type_name(obj['graph'])}")

    _check_str_map("metadata", "header['metadata']", obj["metadata"], C.MAX_METADATA_ENTRIES)
    if "producer" in obj:
        _check_str_map("producer", "header['producer']", obj["producer"], C.MAX_METADATA_ENTRIES)

    # Stage: common keys of every record.
    for i, t in enumerate(tensors):
        _check_keys("tensor_keys", f"tensor record #{i}", t, C.TENSOR_COMMON_KEYS, None)
    # Stage: names.
    seen = {}
    for i, t in enumerate(tensors):
        name = t["name"]
        if type(name) is not str:
            raise CmzError("name", f"tensor record #{i}: expected name of type str; found {_type_name(name)}")
        nbytes = len(name.encode("utf-8"))
        if nbytes == 0 or nbytes > C.MAX_NAME_BYTES:
            raise CmzError("name", f"tensor record #{i}: expected a name of 1..{C.MAX_NAME_BYTES} UTF-8 bytes (MAX_NAME_BYTES); found {nbytes}")
        if "\x00" in name:
            raise CmzError("name", f"tensor record #{i}: expected a name without NUL characters; found {name!r}")
        if name in seen:
            raise CmzError("name", f"tensor {name!r}: expected unique names; found it in records #{seen[name]} and #{i}")
        seen[name] = i
    # Stage: dtype.
    for t in tensors:
        dt = t["dtype"]
        if type(dt) is not str or dt not in C.DTYPES:
            raise CmzError("dtype", f"tensor {t['name']!r}: expected dtype one of {list(C.DTYPES)}; found {dt!r}")
    # Stage: encoding, then the encoding's exact key set.
    for t in tensors:
        enc = t["encoding"]
        if type(enc) is not str or enc not in C.ENCODINGS:
            raise CmzError("encoding", f"tensor {t['name']!r}: expected encoding one of {list(C.ENCODINGS)}; found {enc!r}")
    for t in tensors:
        req, opt = C.ENCODING_KEYS[t["encoding"]]
        _check_keys("tensor_keys", f"tensor {t['name']!r} ({t['encoding']})", t, C.TENSOR_COMMON_KEYS + req, opt)
    # Stage: encoding keys' types and values.
    for t in tensors:
        _check_params(t)
    # Stage: shape.
    for t in tensors:
        shape = t["shape"]
        what = f"tensor {t['name']!r}"
        if type(shape) is not list:
            raise CmzError("shape", f"{what}: expected shape as an array of ints; found {_type_name(shape)}")
        if len(shape) > C.MAX_NDIM:
            raise CmzError("shape", f"{what}: expected at most {C.MAX_NDIM} dimensions (MAX_NDIM); found {len(shape)}")
        n = 1
        for d in shape:
            if type(d) is not int:
                raise CmzError("shape", f"{what}: expected every dimension to be an int; found {_type_name(d)} {d!r}")
            if d < 0:
                raise CmzError("shape", f"{what}: expected non-negative dimensions; found {d}")
            if d > C.MAX_ELEMENTS:
                raise CmzError("shape", f"{what}: expected dimensions ≤ 2**62 (MAX_ELEMENTS); found {d}")
            n *= d
        if n > C.MAX_ELEMENTS:
            raise CmzError("shape", f"{what}: expected at most 2**62 elements (MAX_ELEMENTS); shape {shape} has {n}")
    # Stage: segment records (types and roles).
    records = []
    for t in tensors:
        roles = segment_roles(t["encoding"], t.get("coding"), t.get("scale"))
        what = f"tensor {t['name']!r}"
        _check_keys("segment", f"{what} segments", t["segments"], roles, ())
        segs = {}
        for role in roles:
            s = t["segments"][role]
            if type(s) is not list or len(s) != 3 or not all(type(v) is int for v in s):
                raise CmzError("segment", f"{what} segment {role!r}: expected [offset, length, crc32] as three ints; found {s!r}")
            off, length, crc = s
            if not (_is_uint(off, 2**63) and _is_uint(length, 2**63) and off + length < 2**63):
                raise CmzError("segment", f"{what} segment {role!r}: expected 0 ≤ offset, length and offset+length < 2**63; found offset {off}, length {length}")
            if not _is_uint(crc, 2**32):
                raise CmzError("segment", f"{what} segment {role!r}: expected a crc32 in 0..2**32-1; found {crc}")
            segs[role] = Segment(off, length, crc)
        params = {k: t[k] for k in t if k not in C.TENSOR_COMMON_KEYS}
        records.append(TensorRecord(t["name"], tuple(t["shape"]), t["dtype"], t["encoding"], params, segs))
    return Header(dict(obj["metadata"]), dict(obj["producer"]) if "producer" in obj else None, tuple(records), obj.get("graph"))
