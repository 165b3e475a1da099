"""The ``cmz`` command line.

Exit codes: 0 success; 1 an input file is not a sound ``.cmz`` or cannot be
read or written; 2 a usage error (unknown command or option, bad value).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .format import constants as C
from .format.container import CmzFile
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
    """Everything ``cmz info`` shows.  Compressed tensors are loaded (all
    their checks run) to count kept weights and fillers."""
    tensors = []
    for name in f.tensor_names():
        r = f.record(name)
        t = {
            "name": r.name,
            "dtype": r.dtype,
            "shape": list(r.shape),
            "encoding": r.encoding,
            "params": r.params,
            "segments": {role: {"offset": s.offset, "length": s.length, "crc32": s.crc32} for role, s in r.segments.items()},
            "bytes": sum(s.length for s in r.segments.values()),
        }
        if r.encoding != "raw":
            c = f.read_compressed(name)
            fillers = c.fillers()
            kept = c.n_entries - fillers
            t.update(kept=kept, sparsity=1 - kept / r.numel if r.numel else 0.0, fillers=fillers, entries=c.n_entries)
        tensors.append(t)
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
    head = ("name", "dtype", "shape", "encoding", "bits", "idx", "sparsity", "fillers", "bytes", "segments")
    rows = [head]
    for t in d["tensors"]:
        p = t["params"]
        segs = " ".join(f"{role}={s['length']:,}" for role, s in t["segments"].items())
        enc = t["encoding"] + (f"/{p['coding']}" if "coding" in p else "") + (f"/{p['order']}" if "order" in p else "")
        rows.append((
            t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", enc,
            str(p.get("bits", "-")), str(p.get("index_bits", "-")),
            f"{100 * t['sparsity']:.1f}%" if "sparsity" in t else "-",
            f"{t['fillers']:,}" if t["encoding"] == "sparse" else "-",
            f"{t['bytes']:,}", segs,
        ))
    n = len(head) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    out.append(f"tensors: {len(d['tensors'])}")
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r[:n], widths))) + "  " + r[n])
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
        graph = ""
        if f.graph is not None:  # spec §7's last check; the graph code lives in the runtime
            from .runtime.graph import graph_from_header, validate

            g = graph_from_header(f.graph)
            validate(g, {name: f.record(name) for name in f.tensor_names()})
            graph = f", a graph of {len(g.nodes)} nodes"
    print(f"{a.file}: OK ({n} tensors{graph}, all checks passed)")
    return EXIT_OK


def _parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_rule(text: str) -> tuple[str, dict]:
    """``'PATTERN:key=value,key=value'`` → ``(pattern, options)``."""
    pattern, sep, body = text.rpartition(":")
    if not sep or not pattern or not body:
        raise CmzError("encoder_options", f"--rule: expected 'PATTERN:key=value,...'; found {text!r}")
    opts = {}
    for item in body.split(","):
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise CmzError("encoder_options", f"--rule {text!r}: expected key=value; found {item!r}")
        opts[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return pattern, opts


def _load_config(path: str) -> tuple[dict, list]:
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CmzError("encoder_options", f"{path}: expected TOML; found {e}") from None
    unknown = sorted(set(cfg) - {"options", "rules"})
    if unknown:
        raise CmzError("encoder_options", f"{path}: expected tables [options] and [rules]; found {unknown[0]!r}")
    rules = cfg.get("rules", {})
    if not isinstance(rules, dict):
        raise CmzError("encoder_options", f"{path}: expected [rules] to map patterns to option tables; found {type(rules).__name__}")
    return dict(cfg.get("options", {})), list(rules.items())


class _Progress:
    """``save_file``'s ``progress(i, n, name)`` callback as a tqdm bar on
    stderr, shown only when stderr is a terminal and cleared when done."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None

    def __call__(self, i: int, n: int, name: str) -> None:
        if not self.enabled or n == 0:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=n, unit="tensor", leave=False, file=sys.stderr)
        self.bar.set_postfix_str(name[:40], refresh=False)
        self.bar.update(i - self.bar.n)
        if i == n:
            self.bar.close()


# Inputs at least this large get a progress bar (on a terminal).
PROGRESS_MIN_BYTES = 16 * 1024 * 1024


def _load_model(spec: str, weights: str | None):
    """``'package.module:factory'`` → the module the factory returns (called
    with no arguments), with ``weights`` (a state dict file, loaded with
    ``weights_only=True``) loaded into it strictly."""
    import importlib
    import os

    from .encode.checkpoints import _need, load_tensors

    torch = _need("torch", "--model")
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise CmzError("input", f"--model: expected 'package.module:factory'; found {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules next to the user
    try:
        factory = importlib.import_module(mod_name)
    except ImportError as e:
        raise CmzError("input", f"--model {spec!r}: expected an importable module {mod_name!r}; found {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise CmzError("input", f"--model {spec!r}: expected {mod_name!r} to define {attr!r}; found no {part!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise CmzError("input", f"--model {spec!r}: expected a callable factory; found {type(factory).__name__}")
    try:
        model = factory()
    except Exception as e:  # user code: any exception, reported on one line
        raise CmzError("input", f"--model {spec!r}: expected the factory to build a model; found {type(e).__name__}: {' '.join(str(e).split())}"[:600]) from None
    if not isinstance(model, torch.nn.Module):
        raise CmzError("input", f"--model {spec!r}: expected the factory to return a torch.nn.Module; found {type(model).__name__}")
    if weights:
        sd = {k: torch.as_tensor(v) for k, v in load_tensors(weights).items()}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CmzError("input", f"{weights}: expected the state dict of {spec}; found {' '.join(str(e).split())}"[:600]) from None
    return model


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise CmzError("input", f"--input-shape: expected comma-separated sizes ≥ 1 with the batch first, e.g. 1,3,224,224; found {text!r}")
    return shape


def _cmd_compress(a) -> int:
    import os

    from . import save_file
    from .encode.checkpoints import load_tensors

    if (a.model is None) == (a.input is None) or (a.model is not None) != (a.input_shape is not None) or (a.weights and not a.model):
        print("cmz compress: error: expected either INPUT (a state dict file) or --model with --input-shape [and --weights]", file=sys.stderr)
        return EXIT_USAGE
    options, rules = _load_config(a.config) if a.config else ({}, [])
    for key in ("sparsity", "threshold", "bits", "index_bits", "order", "coding"):
        v = getattr(a, key)
        if v is not None:
            options[key] = v
    rules += [parse_rule(r) for r in a.rule]
    if a.model is not None:
        from . import save_model

        shape = _parse_shape(a.input_shape)
        model = _load_model(a.model, a.weights)
        torch = sys.modules["torch"]
        report = save_model(model, torch.zeros(shape), a.output, rules=rules, options=options)
        print(json.dumps(report.to_dict(), indent=2) if a.json else report.format_table())
        return EXIT_OK
    tensors = load_tensors(a.input)
    big = os.path.getsize(a.input) >= PROGRESS_MIN_BYTES
    report = save_file(tensors, a.output, rules=rules, options=options, progress=_Progress(big and not a.json))
    print(json.dumps(report.to_dict(), indent=2) if a.json else report.format_table())
    return EXIT_OK


def _cmd_decompress(a) -> int:
    from . import load_file
    from .encode.checkpoints import save_tensors

    tensors = load_file(a.file)
    save_tensors(tensors, a.output)
    print(f"{a.file}: wrote {len(tensors)} dense tensors to {a.output}")
    return EXIT_OK


def _cmd_run(a) -> int:
    import numpy as np

    from .runtime.session import DEFAULT_BACKEND, Session

    xs = []
    for path in a.input:
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise CmzError("input", f"{path}: expected a .npy array; found {' '.join(str(e).split())}") from None
        if not isinstance(x, np.ndarray):
            raise CmzError("input", f"{path}: expected a .npy array; found {type(x).__name__} (an .npz archive?)")
        if x.dtype.kind == "f" and x.dtype != np.float32:
            x = x.astype(np.float32)
        xs.append(x)
    with Session(a.file, backend=a.backend or DEFAULT_BACKEND) as s:
        outs = s.run(xs)
        names = [v.name for v in s.outputs]
        backend = s.backend
    print(f"{a.file}: ran on backend {backend!r}, batch {xs[0].shape[0] if xs and xs[0].ndim else '?'}")
    for name, y in zip(names, outs):
        print(f"output {name!r}: shape {list(y.shape)} {y.dtype}")
        if y.ndim == 2:
            k = min(5, y.shape[1])
            for i, row in enumerate(y[:RUN_MAX_ROWS]):
                top = np.argsort(-row, kind="stable")[:k]
                print(f"  sample {i}: top-{k} classes " + ", ".join(f"{int(c)} ({row[c]:.4g})" for c in top))
            if y.shape[0] > RUN_MAX_ROWS:
                print(f"  ... {y.shape[0] - RUN_MAX_ROWS} more samples")
    if a.output:
        if a.output.lower().endswith(".npz"):
            np.savez(a.output, **dict(zip(names, outs)))
        elif len(outs) != 1:
            raise CmzError("input", f"--output {a.output}: expected a .npz path for a graph with {len(outs)} outputs; found another suffix")
        else:
            np.save(a.output, outs[0])
        print(f"wrote {a.output}")
    return EXIT_OK


# ``cmz run`` prints the top classes of at most this many samples.
RUN_MAX_ROWS = 8


def _cmd_bench_decode(a) -> int:
    from .bench.decode import bench_huffman_decode, format_rows
    from .codecs.entries import unpack_bits, unpack_entries

    streams = []
    with CmzFile(a.file) as f:
        for name in f.tensor_names():
            r = f.record(name)
            if r.params.get("coding") != "huffman":
                continue
            c = f.read_compressed(name)
            if r.encoding == "sparse":
                deltas, codes = unpack_entries(c.entries, c.n_entries, c.index_bits, c.bits)
                streams += [(f"{name} codes", codes, c.bits), (f"{name} deltas", deltas, c.index_bits)]
            else:
                streams.append((f"{name} codes", unpack_bits(c.entries, c.bits, c.n_entries).astype("uint8"), c.bits))
    if not streams:
        raise CmzError("encoding", "expected at least one Huffman-coded tensor to benchmark; found none")
    streams.sort(key=lambda s: -s[1].size)
    threads = tuple(int(t) for t in a.threads.split(","))
    for label, syms, bits in streams[: a.streams]:
        print(f"== {label}: {syms.size:,} symbols, {bits}-bit alphabet")
        print(format_rows(bench_huffman_decode(syms, bits, repeats=a.repeats, threads=threads)))
    return EXIT_OK


def _cmd_bench_encode(a) -> int:
    from .bench.encode import bench_encode, format_result

    print(format_result(bench_encode(a.rows, a.cols, a.sparsity, a.bits, a.coding, a.repeats)))
    return EXIT_OK


def _cmd_bench_model(a) -> int:
    import os

    # Numba and torch each bring an OpenMP runtime whose idle threads spin by
    # default; on 2 cores two spinning pools slow each other's next call by
    # 10x or more, which would measure the interference, not the kernels.
    # Set before either runtime starts (both start lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if a.backend == "cuda":
        from .bench.cuda import bench_model_cuda, format_result as format_cuda

        print(format_cuda(bench_model_cuda(a.file, batch=a.batch, repeats=a.repeats, whole=a.whole)))
        return EXIT_OK
    from .bench.model import bench_model, format_result

    print(format_result(bench_model(a.file, batch=a.batch, repeats=a.repeats, threads=a.threads, whole=a.whole)))
    return EXIT_OK


def _cmd_demo(a) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as for cmz bench model: the demo times torch against the runtime
    from .train.demo import run_demo

    return run_demo(a.out, epochs=a.epochs, subset=a.subset, synthetic=a.synthetic, threads=a.threads)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cmz", description="Compress models into .cmz files, inspect, verify and benchmark them.")
    p.add_argument("--version", action="version", version=f"cmz {__version__} (format {C.FORMAT_VERSION[0]}.{C.FORMAT_VERSION[1]})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    s = sub.add_parser("info", help="list tensors, encodings and where every byte goes")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("verify", help="run every check, including all CRCs; exit 1 if any fails")
    s.add_argument("file")
    s.set_defaults(func=_cmd_verify)
    s = sub.add_parser("compress", help="compress a state dict (.pt/.pth/.safetensors/.npz), or a model with its graph (--model), into a .cmz and print the report")
    s.add_argument("input", nargs="?", help="a state dict file (or give --model)")
    s.add_argument("-o", "--output", required=True, help="the .cmz to write")
    s.add_argument("--model", metavar="PACKAGE.MODULE:FACTORY", help="capture the graph of the torch.nn.Module this factory returns (called with no arguments) and store it with the weights (spec §10)")
    s.add_argument("--weights", metavar="FILE", help="with --model: a state dict (.pt/.pth loaded with weights_only=True, .safetensors, .npz) to load into the model first")
    s.add_argument("--input-shape", dest="input_shape", metavar="N,C,H,W", help="with --model: the example input's shape, batch first (any batch runs later)")
    s.add_argument("--sparsity", type=float, help="prune this fraction of each (unprotected) compressed tensor")
    s.add_argument("--threshold", type=float, help="prune weights with |w| <= this instead")
    s.add_argument("--bits", type=int, help="codebook bits, 1..8 (default 8)")
    s.add_argument("--index-bits", dest="index_bits", type=lambda v: v if v == "auto" else int(v), help="relative-index bits, 1..8 or auto (default)")
    s.add_argument("--order", choices=("row", "col"), help="sparse entry order (default row)")
    s.add_argument("--coding", choices=("huffman", "packed"), help="entry stream coding (default huffman)")
    s.add_argument("--rule", action="append", default=[], metavar="PATTERN:key=value,...", help="per-tensor options by glob pattern; repeatable, later ones win")
    s.add_argument("--config", help="TOML file with [options] and [rules] tables")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_cmd_compress, file=None)
    s = sub.add_parser("run", help="run the graph of a .cmz on .npy inputs and print the output shapes (and top-5 classes)")
    s.add_argument("file")
    s.add_argument("--input", action="append", required=True, metavar="X.npy", help="one .npy per graph input, in order (float arrays are cast to float32)")
    s.add_argument("--output", metavar="Y.npy", help="write the output (.npy), or all outputs by name (.npz)")
    s.add_argument("--backend", choices=("cpu", "cuda", "numpy"), help="cpu: kernels on the compressed weights; cuda: the same on an NVIDIA GPU (the cuda extra); numpy: the dense reference (default: the runtime's default)")
    s.set_defaults(func=_cmd_run)
    s = sub.add_parser("decompress", help="write the decoded dense tensors to .safetensors, .npz or .pt")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_decompress)
    s = sub.add_parser("bench", help="benchmarks")
    bsub = s.add_subparsers(dest="what", required=True, parser_class=_Parser, metavar="WHAT")
    b = bsub.add_parser("decode", help="Huffman decode speed of a file's streams against zstd -19")
    b.add_argument("file")
    b.add_argument("--repeats", type=int, default=15)
    b.add_argument("--threads", default="1,2", help="comma-separated thread counts for the chunk-parallel decode")
    b.add_argument("--streams", type=int, default=3, help="benchmark this many of the largest streams")
    b.set_defaults(func=_cmd_bench_decode)
    b = bsub.add_parser("encode", help="time and memory of compressing one fc6-sized matrix, against prune + zstd")
    b.add_argument("--rows", type=int, default=4096)
    b.add_argument("--cols", type=int, default=25088)
    b.add_argument("--sparsity", type=float, default=0.96)
    b.add_argument("--bits", type=int, default=5)
    b.add_argument("--coding", choices=("huffman", "packed"), default="huffman")
    b.add_argument("--repeats", type=int, default=3)
    b.set_defaults(func=_cmd_bench_encode, file=None)
    for what, helptext in (("kernels", "per layer: the cpu kernels against numpy BLAS, scipy CSR, torch dense and torch CSR on the decoded weights"),
                           ("model", "per layer and the whole model: cpu session against the numpy session and torch eager")):
        b = bsub.add_parser(what, help=helptext)
        b.add_argument("file")
        b.add_argument("--batch", type=int, default=1)
        b.add_argument("--repeats", type=int, default=10)
        b.add_argument("--threads", type=int, default=None, help="Numba and torch threads (default: Numba's; cpu backend)")
        b.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                       help="cpu (default), or cuda: the GPU kernels against torch CUDA dense and CSR, with device synchronisation around every timing")
        b.set_defaults(func=_cmd_bench_model, whole=(what == "model"))
    s = sub.add_parser("demo", help="the main job: Deep Compression of LeNet-300-100 on Fashion-MNIST (train, prune, quantise, Huffman, run the .cmz; needs torch)")
    s.add_argument("--out", default="out", help="directory for the files it writes (default: out)")
    s.add_argument("--epochs", type=int, help="baseline epochs (default 3; retraining epochs are capped by it)")
    s.add_argument("--subset", type=int, help="train on the first N training images only")
    s.add_argument("--synthetic", action="store_true", help="a small generated dataset instead of Fashion-MNIST (no package needed)")
    s.add_argument("--threads", type=int, help="torch and Numba threads (default: all cores)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CmzError as e:
        where = f"{args.file}: " if getattr(args, "file", None) and e.check not in C.INPUT_CHECKS else ""
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
