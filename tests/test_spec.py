"""spec/cmz.md and cmodel/constants.py describe the same format.

Each ``<!-- spec:NAME -->`` marker in the spec is followed by a table or a
code block that is parsed here and compared with the constants.
"""

import re
import struct
from pathlib import Path

from cmodel.format import constants as C

SPEC = (Path(__file__).resolve().parents[1] / "spec" / "cmz.md").read_text(encoding="utf-8")


def block(name: str) -> str:
    m = re.search(rf"<!-- spec:{name} -->\n(.*?)\n\n", SPEC, re.S)
    assert m, f"spec has no block marked spec:{name}"
    return m.group(1)


def table(name: str) -> list[list[str]]:
    rows = [line for line in block(name).splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    return [[c.strip("`") for c in row] for row in cells[2:]]  # drop heading and rule


def test_preamble_struct_matches_format_and_magic():
    code = block("preamble")
    fields = re.findall(r"^\s*(uint\d+_t)\s+(\w+)(\[\d+\])?;\s*//(.*)$", code, re.M)
    names = [f[1] for f in fields]
    assert names == ["magic", "major", "minor", "flags", "header_length", "header_crc32", "reserved"]
    codes = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q"}
    fmt = "<" + "".join(("8s" if arr else codes[t]) for t, _, arr, _ in fields)
    assert fmt == C.PREAMBLE_FORMAT
    assert struct.calcsize(fmt) == C.PREAMBLE_SIZE == int(re.search(r"// (\d+) bytes", code).group(1))
    hexbytes = re.search(r"MUST be ((?:[0-9A-F]{2} ){7}[0-9A-F]{2})", fields[0][3]).group(1)
    assert bytes.fromhex(hexbytes) == C.MAGIC
    assert all(comment.strip() for *_, comment in fields), "every field has a comment"


def test_limits_table():
    rows = {r[0]: int(r[1]) for r in table("limits")}
    assert rows.pop("ALIGNMENT") == C.ALIGNMENT
    assert rows.pop("MAX_CODE_LENGTH") == C.MAX_CODE_LENGTH
    assert rows == C.LIMITS


def test_dtype_table():
    rows = {r[0]: (r[1], int(r[2])) for r in table("dtypes")}
    assert rows == C.DTYPES


def _names(cell: str) -> list[str]:
    return [k.strip(" `") for k in cell.split(",")]


def test_encoding_table():
    rows = table("encodings")
    assert tuple(r[0] for r in rows) == C.ENCODINGS
    for name, keys, roles, _ in rows:
        req, opt = C.ENCODING_KEYS[name]
        assert sorted([] if keys == "—" else _names(keys)) == sorted(req + opt)
        if ":" not in roles:
            assert _names(roles) == list(C.SEGMENT_ROLES[(name, None)])
            continue
        for part in roles.split(";"):
            coding, listed = part.split(":")
            assert _names(listed) == list(C.SEGMENT_ROLES[(name, coding.strip())])


def test_params_table():
    rows = {r[0]: r for r in table("params")}
    assert set(rows) == set(C.PARAMS)
    for key, rule in C.PARAMS.items():
        _, typ, allowed, _ = rows[key]
        assert typ == rule[0]
        if rule[0] == "int":
            assert allowed == f"{rule[1]}..{rule[2]}" or allowed == f"{rule[1]}..2^{rule[2].bit_length() - 1}"
        else:
            assert _names(allowed) == list(rule[1])


def test_header_key_tables():
    rows = table("header-keys")
    assert tuple(r[0] for r in rows if r[2] == "required") == C.HEADER_REQUIRED_KEYS
    assert tuple(r[0] for r in rows if r[2] == "optional") == C.HEADER_OPTIONAL_KEYS
    assert tuple(r[0] for r in table("tensor-keys")) == C.TENSOR_COMMON_KEYS


def test_checks_table_in_order():
    assert tuple(r[0] for r in table("checks")) == C.CHECKS


def test_versions_table():
    rows = table("versions")
    readable = tuple(tuple(map(int, r[0].split("."))) for r in rows if r[1] == "yes")
    written = [tuple(map(int, r[0].split("."))) for r in rows if r[2] == "yes"]
    assert readable == C.READABLE_VERSIONS
    assert written == [C.FORMAT_VERSION]

