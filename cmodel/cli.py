"""The ``cmz`` command line.

Exit codes: 0 success; 1 an input file is not a sound ``.cmz`` or cannot be
read or written; 2 a usage error (unknown command or option, bad value).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, constants as C
from .container import CmzFile
from .errors import CmzError

EXIT_OK, EXIT_BAD_FILE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def layout(f: CmzFile) -> dict:
    """Byte accounting of a file: every byte falls in exactly one bucket."""
    roles: dict[str, int] = {}
    for name in f.tensor_names():
        for role, s in f.record(name).segments.items():
            roles[role] = roles.get(role, 0) + s.length
    header_pad = f.data_start - C.PREAMBLE_SIZE - f.header_length
    seg_total = sum(roles.values())
    return {
        "preamble": C.PREAMBLE_SIZE,
        "header": f.header_length,
        "header_padding": header_pad,
        "segments": roles,
        "segment_padding": f.data_length - seg_total,
        "file": f.size,
    }


def info_dict(f: CmzFile) -> dict:
    tensors = []
    for name in f.tensor_names():
        r = f.record(name)
        tensors.append(
            {
                "name": r.name,
                "dtype": r.dtype,
                "shape": list(r.shape),
                "encoding": r.encoding,
                "params": r.params,
                "segments": {role: {"offset": s.offset, "length": s.length, "crc32": s.crc32} for role, s in r.segments.items()},
                "bytes": sum(s.length for s in r.segments.values()),
            }
        )
    return {
        "path": f.path,
        "format_version": f"{f.version[0]}.{f.version[1]}",
        "producer": f.producer,
        "metadata": f.metadata,
        "tensors": tensors,
        "layout": layout(f),
    }


def format_info(d: dict) -> str:
    lay = d["layout"]
    prod = d["producer"] or {}
    out = [
        f"{d['path']}: .cmz format {d['format_version']}, {lay['file']:,} bytes"
        + (f", written by {prod.get('name', '?')} {prod.get('version', '')}".rstrip() if prod else "")
    ]
    if d["metadata"]:
        out.append("metadata:")
        out += [f"  {k} = {v}" for k, v in d["metadata"].items()]
    rows = [("name", "dtype", "shape", "encoding", "bytes", "segments")]
    for t in d["tensors"]:
        segs = " ".join(f"{role}={s['length']:,}" for role, s in t["segments"].items())
        rows.append((t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", t["encoding"], f"{t['bytes']:,}", segs))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out.append(f"tensors: {len(d['tensors'])}")
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r[:5], widths))) + "  " + r[5])
    out.append("bytes by part:")
    parts = [("preamble", lay["preamble"]), ("header", lay["header"]), ("header padding", lay["header_padding"])]
    parts += [(f"segments: {role}", n) for role, n in lay["segments"].items()]
    parts += [("segment alignment padding", lay["segment_padding"])]
    w = max(len(p) for p, _ in parts)
    out += [f"  {p.ljust(w)}  {n:>14,}" for p, n in parts]
    total = sum(n for _, n in parts)
    out.append(f"  {'total'.ljust(w)}  {total:>14,}  (file size {lay['file']:,})")
    return "\n".join(out)


def _cmd_info(a) -> int:
    with CmzFile(a.file) as f:
        d = info_dict(f)
    print(json.dumps(d, indent=2, ensure_ascii=False) if a.json else format_info(d))
    return EXIT_OK


def _cmd_verify(a) -> int:
    with CmzFile(a.file) as f:
        f.verify()
        n = len(f.tensor_names())
    print(f"{a.file}: OK ({n} tensors, all checks passed)")
    return EXIT_OK


def _cmd_demo(a) -> int:
    from .demo import run_demo

    return run_demo(a.out)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cmz", description="Inspect and verify .cmz compressed-model files.")
    p.add_argument("--version", action="version", version=f"cmz {__version__} (format {C.FORMAT_VERSION[0]}.{C.FORMAT_VERSION[1]})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    s = sub.add_parser("info", help="list tensors, encodings and where every byte goes")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("verify", help="run every check, including all CRCs; exit 1 if any fails")
    s.add_argument("file")
    s.set_defaults(func=_cmd_verify)
    s = sub.add_parser("demo", help="the main job on the built-in default model")
    s.add_argument("--out", default="out", help="directory for the files it writes (default: out)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CmzError as e:
        where = f"{args.file}: " if getattr(args, "file", None) else ""
        print(f"cmz: {where}{e} [check: {e.check}]".replace("\n", " "), file=sys.stderr)
        return EXIT_BAD_FILE
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"cmz: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_FILE
    except KeyboardInterrupt:
        print("cmz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
