"""Convolution kernel benchmark: ``cmodel.kernels.conv`` against torch.

Times are medians of interleaved runs (A B C A B C ...), so that load from
other processes on a shared machine hits every candidate alike; every time is
also given as a speed ratio to ``torch.nn.functional.conv2d`` on the decoded
dense weight, measured in the same run with the same thread count.  Numba
compile time (or cache load) is reported apart from run time, and each row
says how many cores its calls kept busy (``cpu/wall``), since on a shared
machine "2 threads" may not mean 2 cores.

Run the standard suite with ``python -m cmodel.bench.conv [repeats [threads]]``.
"""

from __future__ import annotations

import os
import tempfile
import time

import numba
import numpy as np

from ..errors import CmzError
from ..kernels import conv as _conv
from .timing import _machine, interleave

KINDS = ("sparse", "codebook", "dense")


def _weights(kind, cout, cin_g, k, sparsity, bits, index_bits, seed):
    """(dense weight the kernels see, Compressed or None, compressed bytes)."""
    rng = np.random.default_rng(seed)
    # Per-channel scales spread over two decades, like BatchNorm-folded convs.
    w = (rng.standard_normal((cout, cin_g, k, k)) * rng.uniform(0.05, 5.0, (cout, 1, 1, 1))).astype(np.float32)
    if kind == "dense":
        return w, None, w.nbytes
    from .. import open as cmz_open
    from .. import save_file

    rule = {"compress": True, "bits": bits, "order": "row", "coding": "packed"}
    if kind == "sparse":
        rule.update(sparsity=sparsity, index_bits=index_bits)
    else:
        rule.update(sparsity=0.0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.cmz")
        save_file({"w": w}, path, rules={"*": rule})
        with cmz_open(path) as f:
            c = f.read_compressed("w")
            size = sum(s.length for s in f.record("w").segments.values())
            # Copy out of the map so the file can go.
            c = type(c)(**{**c.__dict__, "entries": np.array(c.entries), "pointers": None if c.pointers is None else np.array(c.pointers)})
    if c.encoding != kind:
        raise RuntimeError(f"the encoder made a {c.encoding!r} tensor; expected {kind!r}")
    return c.dense(), c, size


def _numpy_im2col(x, w, stride, pad):
    # Plain numpy: a padded copy, a strided window view copied into the
    # im2col matrix, one BLAS call.
    n, c, _, _ = x.shape
    k_out, _, r, s = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = win.shape[2], win.shape[3]
    w2 = w.reshape(k_out, -1)
    out = np.empty((n, k_out, oh, ow), np.float32)
    for i in range(n):
        cols = win[i].transpose(0, 3, 4, 1, 2).reshape(c * r * s, oh * ow)
        np.matmul(w2, cols, out=out[i].reshape(k_out, oh * ow))
    return out


def bench_conv(kind: str, cin: int, cout: int, hw: int, k: int, sparsity: float, bits: int, index_bits: int,
               repeats: int, groups: int = 1, *, stride: int = 1, batch: int = 1, threads: int = 2,
               seed: int = 0, blas: bool = True, pause_s: float = 0.02, blas_pause_s: float = 0.1) -> list[dict]:
    """Time one convolution kernel against torch's conv2d (and BLAS paths).

    Builds a ``cout x cin/groups x k x k`` weight, compresses it with the real
    encoder (``sparse``: ``sparsity``, ``bits``-bit codes, ``index_bits``-bit
    relative indices, row order, packed; ``codebook``: ``bits``-bit dense
    codebook; ``dense``: the raw float32 weight), reads it back with
    ``read_compressed``, and times on a ``batch x cin x hw x hw`` input with
    padding ``k // 2`` the kernel (``sparse_conv2d`` / ``codebook_conv2d`` /
    ``dense_conv2d``) against ``torch.nn.functional.conv2d`` on the decoded
    dense weight, interleaved.  Torch and Numba both run on ``threads``
    threads.

    With ``blas`` (and ``groups == 1``) a second interleaved group follows
    with its own torch baseline: the kernels' ``gemm="blas"`` path (codebook
    and dense) and a plain numpy im2col + ``matmul``; numpy's OpenBLAS uses
    its default thread count.  The groups are kept apart, with a pause before
    every call (``pause_s``, ``blas_pause_s``), because the process holds
    three thread pools (Numba's OpenMP, torch's OpenMP, OpenBLAS) whose idle
    workers spin before they sleep: a worker still spinning takes a core from
    the next call.  Seen here without the pauses: torch at 31 ms instead of
    2.4 ms for the 256->256 3x3 case, medians snapping to scheduler slices.

    Args:
        kind: ``"sparse"``, ``"codebook"`` or ``"dense"``.
        cin, cout: channels.
        hw: input height and width.
        k: kernel size.
        sparsity: fraction pruned (sparse only).
        bits: code bits (sparse, codebook).
        index_bits: relative-index bits (sparse only).
        repeats: interleaved timed rounds; medians are reported.
        groups: conv groups (``groups == cin == cout``: depthwise).
        stride: conv stride.
        batch: images.
        threads: Numba and torch threads.
        seed: weight and input seed.
        blas: also time the BLAS group.
        pause_s, blas_pause_s: sleep before each timed call, per group.

    Returns:
        One dict per candidate: ``case``, ``group`` (``"kernels"`` or
        ``"blas"``), ``name``, ``threads``, ``torch_threads``, ``median_s``,
        ``vs_torch`` (the group's torch time / this time: > 1 is faster;
        None without torch), ``compile_s`` (first call minus median: Numba
        compile or cache load), ``cpu_per_wall`` (process CPU seconds per
        wall second over its timed calls: threads kept busy, spinning
        included), ``max_abs_err`` (against torch in float64; without torch
        against the numpy path), ``weight_bytes`` (the tensor's segments in
        the file), ``dense_bytes``, ``macs`` (of the dense conv), ``note``
        and ``machine``.

    Raises:
        CmzError: check ``"input"`` for bad arguments.
    """
    if kind not in KINDS:
        raise CmzError("input", f"kind: expected one of {KINDS}; found {kind!r}")
    if min(cin, cout, hw, k, repeats, groups, stride, batch, threads) < 1 or cin % groups or cout % groups:
        raise CmzError("input", f"expected positive sizes with groups dividing cin and cout; found cin={cin} cout={cout} hw={hw} k={k} groups={groups} stride={stride} batch={batch} repeats={repeats} threads={threads}")
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    numba.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)

    wd, c, weight_bytes = _weights(kind, cout, cin // groups, k, sparsity, bits, index_bits, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    pad = k // 2
    shape = _conv.conv2d_output_shape(x.shape, cout, k, stride, pad)
    geo = (k, stride, pad, 1, groups)

    def ours(gemm="micro"):
        out = np.empty(shape, np.float32)
        if kind == "sparse":
            return lambda: _conv.sparse_conv2d(c.entries, c.n_entries, c.width, c.index_bits, c.pointers, c.codebook, c.scales, bias, x, out, *geo)
        if kind == "codebook":
            return lambda: _conv.codebook_conv2d(c.entries, c.bits, c.codebook, c.scales, bias, x, out, *geo, gemm=gemm)
        return lambda: _conv.dense_conv2d(wd, bias, x, out, stride, pad, 1, groups, gemm=gemm)

    fn_name = {"sparse": "sparse_conv2d", "codebook": "codebook_conv2d", "dense": "dense_conv2d"}[kind]
    depthwise = cin // groups == 1
    torch_row = []
    if torch is not None:
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(wd), torch.from_numpy(bias)
        torch_row = [("torch conv2d, dense weight", lambda: F.conv2d(xt, wt, bt, stride, pad, 1, groups))]
    groups_run = [("kernels", pause_s, [(fn_name + (" (direct)" if depthwise or kind == "sparse" else " (micro-kernel)"), ours())] + torch_row)]
    if blas and groups == 1:
        cands = [(fn_name + " (gemm=blas)", ours("blas"))] if kind != "sparse" else []
        cands.append(("numpy im2col + matmul", lambda: _numpy_im2col(x, wd, stride, pad) + bias[:, None, None]))
        groups_run.append(("blas", blas_pause_s, cands + torch_row))

    ref = None
    if torch is not None:
        with torch.no_grad():
            ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wd).double(), torch.from_numpy(bias).double(), stride, pad, 1, groups).numpy()
    desc = f"{kind} {cin}->{cout} {k}x{k} {hw}x{hw}" + (f" stride {stride}" if stride > 1 else "") + \
        (" depthwise" if depthwise and groups > 1 else f" groups {groups}" if groups > 1 else "") + (f" batch {batch}" if batch > 1 else "")
    if kind == "sparse":
        desc += f", {sparsity:.0%} pruned, {index_bits}-bit index + {bits}-bit code ({c.width}-bit entries, {c.fillers()} fillers)"
    elif kind == "codebook":
        desc += f", {bits}-bit codebook"
    machine = _machine()
    rows = []
    for group, pause, candidates in groups_run:
        compile_s, outs = {}, {}
        for name, fn in candidates:
            start = time.perf_counter()
            out = fn()
            compile_s[name] = time.perf_counter() - start
            outs[name] = out.numpy() if hasattr(out, "numpy") else out
        check = ref if ref is not None else outs.get("numpy im2col + matmul")
        med, busy = interleave(candidates, repeats, timed=1, settle_s=pause)
        torch_s = med.get("torch conv2d, dense weight")
        for name, _ in candidates:
            rows.append({
                "case": desc,
                "group": group,
                "name": name,
                "threads": threads,
                "torch_threads": torch.get_num_threads() if torch is not None else None,
                "median_s": med[name],
                "vs_torch": torch_s / med[name] if torch_s else None,
                "compile_s": max(compile_s[name] - med[name], 0.0),
                "cpu_per_wall": busy[name],
                "max_abs_err": float(np.abs(outs[name] - check).max()) if check is not None else None,
                "weight_bytes": weight_bytes,
                "dense_bytes": wd.nbytes,
                "macs": batch * shape[1] * shape[2] * shape[3] * (cin // groups) * k * k,
                "note": "" if torch is not None else "torch not installed: no torch baseline",
                "machine": machine,
            })
    return rows


def format_rows(rows: list[dict]) -> str:
    """Rows of :func:`bench_conv` (one or more calls, concatenated) as text.

    Args:
        rows: the lists it returned, concatenated.

    Returns:
        The machine and thread counts, then per case a title line and one
        line per candidate.
    """
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    lines = [f"machine: {r0['machine']}",
             f"threads: numba {r0['threads']}, torch {r0['torch_threads']}; times are medians of interleaved runs; "
             "vs torch = torch time / time (> 1 is faster); cpu/wall = busy threads"]
    case = group = None
    for r in rows:
        if r["case"] == case and r["group"] != group:
            lines.append(f"  -- {r['group']} group, timed apart with its own torch baseline --")
        group = r["group"]
        if r["case"] != case:
            case = r["case"]
            lines.append("")
            lines.append(f"{case}: weight {r['weight_bytes'] / 1024:.0f} KiB in the file ({r['dense_bytes'] / max(r['weight_bytes'], 1):.1f}x smaller than fp32), {r['macs'] / 1e6:.0f} M dense MACs")
            lines.append(f"  {'candidate':<34}{'median ms':>10}{'vs torch':>10}{'GMAC/s':>8}{'cpu/wall':>9}{'compile s':>10}{'max err':>10}")
        vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] is not None else "n/a"
        err = f"{r['max_abs_err']:.1e}" if r["max_abs_err"] is not None else "n/a"
        lines.append(f"  {r['name']:<34}{r['median_s'] * 1e3:>10.3f}{vs:>10}{r['macs'] / r['median_s'] / 1e9:>8.1f}"
                     f"{r['cpu_per_wall']:>9.2f}{r['compile_s']:>10.3f}{err:>10}" + (f"  {r['note']}" if r["note"] else ""))
    return "\n".join(lines)


# The cases the kernels are held to (see the module doc of cmodel.kernels.conv).
SUITE = [
    dict(kind="sparse", cin=256, cout=256, hw=28, k=3, sparsity=0.9, bits=5, index_bits=4),
    dict(kind="codebook", cin=256, cout=256, hw=28, k=3, sparsity=0.0, bits=8, index_bits=0),
    dict(kind="dense", cin=256, cout=256, hw=28, k=3, sparsity=0.0, bits=0, index_bits=0),
    dict(kind="sparse", cin=256, cout=256, hw=28, k=3, sparsity=0.9, bits=5, index_bits=4, stride=2),
    dict(kind="codebook", cin=256, cout=256, hw=28, k=3, sparsity=0.0, bits=8, index_bits=0, stride=2),
    dict(kind="codebook", cin=144, cout=144, hw=56, k=3, sparsity=0.0, bits=8, index_bits=0, groups=144),
    dict(kind="sparse", cin=144, cout=144, hw=56, k=3, sparsity=0.5, bits=5, index_bits=3, groups=144),
    dict(kind="dense", cin=144, cout=144, hw=56, k=3, sparsity=0.0, bits=0, index_bits=0, groups=144),
    dict(kind="codebook", cin=32, cout=192, hw=56, k=1, sparsity=0.0, bits=8, index_bits=0),
]


def run_suite(repeats: int = 30, threads: int = 2) -> list[dict]:
    """Every case of ``SUITE``."""
    rows = []
    for case in SUITE:
        rows += bench_conv(**case, repeats=repeats, threads=threads)
    return rows


if __name__ == "__main__":
    import sys

    args = [int(a) for a in sys.argv[1:3]]
    print(format_rows(run_suite(*args)))
