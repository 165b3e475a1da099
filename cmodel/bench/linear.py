"""GEMV benchmarks of the compressed-weight kernels (``cmodel.kernels.sparse_linear``, ``.codebook_linear``)
against dense and sparse baselines measured in the same run.

The weights are built with the real encoder (``save_file`` with a packed
rule, then ``read_compressed``), so the kernels run on the packed data a
user's file holds, memory-mapped.  Times are medians of interleaved rounds
(A B C A B C ..., each a short burst after a pause and a warm-up, see
``cmodel.bench.timing``), so load
from other processes on a shared machine hits every candidate alike; each row gives its speed as a ratio to numpy's dense
float32 GEMV (and to scipy's CSR for sparse weights), the thread counts, and
the machine.  The first call of each candidate is timed apart as
``compile_s`` (Numba compilation or cache load, minus one run).

Run ``python -m cmodel.bench.linear`` for the standard set of cases.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings

import numba
import numpy as np

from ..errors import CmzError
from ..kernels import codebook_linear, sparse_linear
from ..kernels import simd as _simd
from .timing import _machine, interleave

_SEED = 20240611


def _compressed(w: np.ndarray, rule: dict):
    """``w`` encoded with ``rule`` (packed) and read back as kernels see it."""
    from .. import open as cmz_open
    from .. import save_file

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.cmz")
        save_file({"w": w}, path, rules={"*": {"compress": True, "coding": "packed", **rule}}, producer=None)
        with cmz_open(path) as f:
            return f.read_compressed("w")  # views keep the map alive after close


def _weight_bytes(c) -> int:
    """Our weight bytes as the kernels hold them: entries + pointers + codebook + scales."""
    n = -(-c.n_entries * c.width // 8) + c.codebook.nbytes
    if c.pointers is not None:
        n += c.pointers.nbytes
    if c.scales is not None:
        n += c.scales.nbytes
    return n


def _torch(threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _openblas():
    """The OpenBLAS numpy loaded (Linux), as a ctypes library, or None."""
    import ctypes

    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # make sure it is loaded
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    except OSError:
        return None
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    return get, put
    return None


def _blas_threads() -> int | None:
    """Threads of numpy's OpenBLAS, or None when unknown."""
    lib = _openblas()
    return int(lib[0]()) if lib else None


@contextlib.contextmanager
def _threads(n: int | None):
    """Numba, numpy's OpenBLAS and (when imported) torch on ``n`` threads."""
    if n is None:
        yield
        return
    import sys

    blas = _openblas()
    torch = sys.modules.get("torch")
    saved = (numba.get_num_threads(), blas[0]() if blas else None, torch.get_num_threads() if torch else None)
    numba.set_num_threads(n)
    if blas:
        blas[1](n)
    if torch:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(saved[0])
        if blas:
            blas[1](saved[1])
        if torch:
            torch.set_num_threads(saved[2])


# Each round: sleep SETTLE_S (other libraries' pools go idle), WARM_S of
# untimed calls, then TIMED timed calls per candidate; see cmodel.bench.timing.
SETTLE_S = 0.15
WARM_S = 0.1
TIMED = 5


def _run(candidates, ref, mag, repeats):
    """Check every candidate against ``ref``, then time them interleaved."""
    first = {}
    for name, fn in candidates:
        start = time.perf_counter()
        y = np.asarray(fn(), dtype=np.float64)
        first[name] = time.perf_counter() - start
        err = float(np.max(np.abs(y - ref) / (mag + 1e-30), initial=0.0))
        if not err <= 1e-4:
            raise RuntimeError(f"{name}: result differs from the float64 reference by {err:.3g} (relative to |x| @ |W|.T)")
    med, _ = interleave(candidates, repeats, timed=TIMED, settle_s=SETTLE_S, warm_s=WARM_S)
    return med, {name: max(first[name] - med[name], 0.0) for name in first}


def _rows(med, compile_s, threads, base, extra):
    rows = []
    for name, t in med.items():
        rows.append({
            "name": name,
            "threads": threads[name],
            "median_s": t,
            "vs_numpy": med["numpy dense"] / t,
            "vs_scipy": med["scipy csr"] / t if "scipy csr" in med else None,
            "vs_row": med["cmz sparse row"] / t if name == "cmz sparse col" else None,
            "weight_bytes": extra["bytes"].get(name),
            "compile_s": compile_s[name],
            **base,
        })
    return rows


def bench_sparse_gemv(rows: int, cols: int, sparsity: float, bits: int, index_bits: int, repeats: int, zero_fraction: float = 0.0, *, threads: int | None = None) -> list[dict]:
    """Time a sparse codebook GEMV (batch 1) against dense and sparse baselines.

    A normal(0, 1) float32 ``rows x cols`` matrix is pruned to ``sparsity``
    and encoded with ``bits``-bit codes and ``index_bits``-bit relative
    indices, once in row order and once in column order; the input has a
    fraction ``zero_fraction`` of exact zeros (what column order skips).
    Candidates: ``cmz sparse row``, ``cmz sparse col``, ``numpy dense``
    (``x @ W.T`` on the decoded float32 W), ``scipy csr`` (float32
    ``W_csr @ x``), and with torch installed ``torch dense`` and ``torch
    sparse csr`` at the same thread count.

    Args:
        rows, cols: matrix shape.
        sparsity: fraction of weights pruned, 0..1.
        bits: code bits b, 1..8.
        index_bits: relative index bits r, 1..8.
        repeats: timed rounds; medians are reported.
        zero_fraction: fraction of input activations set to zero.
        threads: run Numba, numpy's OpenBLAS and torch on this many threads
            (None: as they are; Numba's count is used for torch).

    Returns:
        One dict per candidate: ``name``, ``threads``, ``median_s``,
        ``vs_numpy`` / ``vs_scipy`` (speed ratios, > 1 is faster),
        ``vs_row`` (column order against row order, else None),
        ``weight_bytes`` (None where not meaningful) and ``compile_s``; and,
        equal in every row, ``case``, ``n_entries``, ``fillers``,
        ``ours_bytes``, ``scipy_bytes``, ``bytes_ratio`` (scipy / ours),
        ``simd`` and ``machine``.

    Raises:
        CmzError: check ``"input"`` for bad arguments.
    """
    if rows < 1 or cols < 1 or repeats < 1 or not 0 <= sparsity <= 1 or not 0 <= zero_fraction <= 1:
        raise CmzError("input", f"expected rows, cols, repeats >= 1 and sparsity, zero_fraction in 0..1; found {rows}, {cols}, {repeats}, {sparsity}, {zero_fraction}")
    import scipy.sparse

    rng = np.random.default_rng(_SEED)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    rule = {"sparsity": sparsity, "bits": bits, "index_bits": index_bits}
    crow = _compressed(w, {**rule, "order": "row"})
    ccol = _compressed(w, {**rule, "order": "col"})
    dense = np.ascontiguousarray(crow.dense().reshape(rows, cols))
    x = rng.standard_normal(cols, dtype=np.float32)
    x[rng.random(cols) < zero_fraction] = 0.0
    ref = dense.astype(np.float64) @ x.astype(np.float64)
    mag = np.abs(dense).astype(np.float64) @ np.abs(x).astype(np.float64)
    csr = scipy.sparse.csr_matrix(dense)
    scipy_bytes = csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes
    y = np.empty(rows, np.float32)

    def ours(c):
        return lambda: sparse_linear.sparse_matmul(c.entries, c.n_entries, c.width, c.index_bits, c.pointers, c.codebook, c.scales, None, x, y, c.order)

    nt = threads or numba.get_num_threads()
    candidates = [
        ("cmz sparse row", ours(crow)),
        ("cmz sparse col", ours(ccol)),
        ("numpy dense", lambda: x @ dense.T),
        ("scipy csr", lambda: csr @ x),
    ]
    nthreads = {name: nt for name, _ in candidates}
    nthreads["numpy dense"] = threads or _blas_threads()
    nthreads["scipy csr"] = 1  # scipy's sparse matvec is single-threaded
    torch = _torch(nt)
    if torch is not None:
        td = torch.from_numpy(dense)
        tx = torch.from_numpy(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            tcsr = td.to_sparse_csr()
        candidates += [("torch dense", lambda: torch.mv(td, tx)), ("torch sparse csr", lambda: tcsr @ tx)]
        nthreads["torch dense"] = nthreads["torch sparse csr"] = torch.get_num_threads()
    ours_bytes = {"cmz sparse row": _weight_bytes(crow), "cmz sparse col": _weight_bytes(ccol)}
    base = {
        "case": f"sparse {rows}x{cols}, {sparsity:.0%} pruned, b={bits} r={index_bits} (w={bits + index_bits}), {zero_fraction:.0%} zero inputs, batch 1",
        "n_entries": crow.n_entries,
        "fillers": crow.fillers(),
        "ours_bytes": ours_bytes["cmz sparse row"],
        "scipy_bytes": scipy_bytes,
        "bytes_ratio": scipy_bytes / ours_bytes["cmz sparse row"],
        "simd": _simd.SIMD,
    }
    with _threads(threads):
        med, compile_s = _run(candidates, ref, mag, repeats)
    base["machine"] = _machine()
    return _rows(med, compile_s, nthreads, base, {"bytes": {**ours_bytes, "scipy csr": scipy_bytes, "numpy dense": dense.nbytes}})


def bench_codebook_gemv(rows: int, cols: int, bits: int, repeats: int, *, threads: int | None = None) -> list[dict]:
    """Time a dense codebook GEMV (batch 1) against numpy's dense float32 GEMV.

    A normal(0, 1) float32 matrix is encoded as ``bits``-bit row-scaled
    codebooks (the encoder's default form).  Candidates: ``cmz codebook``
    (the SIMD path :data:`cmodel.kernels.simd.SIMD` names, where the width has one),
    ``cmz codebook portable`` (the portable loops, when that differs),
    ``numpy dense`` (``x @ W.T`` on the decoded W) and ``torch dense``.

    Args:
        rows, cols: matrix shape.
        bits: code bits, 1..8.
        repeats: timed rounds; medians are reported.
        threads: as for :func:`bench_sparse_gemv`.

    Returns:
        Dicts as :func:`bench_sparse_gemv` gives (``vs_scipy`` and
        ``vs_row`` None).

    Raises:
        CmzError: check ``"input"`` for bad arguments.
    """
    if rows < 1 or cols < 1 or repeats < 1:
        raise CmzError("input", f"expected rows, cols, repeats >= 1; found {rows}, {cols}, {repeats}")
    rng = np.random.default_rng(_SEED)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    c = _compressed(w, {"bits": bits})
    dense = np.ascontiguousarray(c.dense().reshape(rows, cols))
    x = rng.standard_normal(cols, dtype=np.float32)
    ref = dense.astype(np.float64) @ x.astype(np.float64)
    mag = np.abs(dense).astype(np.float64) @ np.abs(x).astype(np.float64)
    y = np.empty(rows, np.float32)

    def ours(simd):
        return lambda: codebook_linear.codebook_matmul(c.entries, c.bits, c.codebook, c.scales, None, x, y, simd=simd)

    nt = threads or numba.get_num_threads()
    candidates = [("cmz codebook", ours(None))]
    if _simd.SIMD != "portable":
        candidates.append(("cmz codebook portable", ours("portable")))
    candidates.append(("numpy dense", lambda: x @ dense.T))
    torch = _torch(nt)
    if torch is not None:
        td = torch.from_numpy(dense)
        tx = torch.from_numpy(x)
        candidates.append(("torch dense", lambda: torch.mv(td, tx)))
    nthreads = {name: nt for name, _ in candidates}
    nthreads["numpy dense"] = threads or _blas_threads()
    ours_bytes = _weight_bytes(c)
    base = {
        "case": f"codebook {rows}x{cols}, b={bits}, row scales, batch 1",
        "n_entries": c.n_entries,
        "fillers": 0,
        "ours_bytes": ours_bytes,
        "scipy_bytes": None,
        "bytes_ratio": None,
        "simd": _simd.SIMD,
    }
    with _threads(threads):
        med, compile_s = _run(candidates, ref, mag, repeats)
    base["machine"] = _machine()
    by = {name: ours_bytes for name, _ in candidates if name.startswith("cmz")}
    by["numpy dense"] = dense.nbytes
    return _rows(med, compile_s, nthreads, base, {"bytes": by})


def format_rows(rows: list[dict]) -> str:
    """Rows of :func:`bench_sparse_gemv` / :func:`bench_codebook_gemv` as text.

    Args:
        rows: the list one of them returned.

    Returns:
        A header naming the case, machine, threads and sizes, then one line
        per candidate.
    """
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    sizes = f"ours {r0['ours_bytes']} B"
    if r0["scipy_bytes"] is not None:
        sizes += f", scipy CSR {r0['scipy_bytes']} B (CSR / ours = {r0['bytes_ratio']:.2f}x); {r0['n_entries']} entries incl. {r0['fillers']} fillers"
    lines = [
        f"{r0['case']}",
        f"machine: {r0['machine']}; kernels SIMD: {r0['simd']}",
        f"weights: {sizes}",
        f"{'name':<24}{'threads':>8}{'median ms':>11}{'vs numpy':>10}{'vs scipy':>10}{'vs row':>8}{'MB':>8}{'compile s':>11}",
    ]

    def ratio(v):
        return f"{v:.2f}x" if v is not None else "-"

    for r in rows:
        mb = f"{r['weight_bytes'] / 1e6:.2f}" if r["weight_bytes"] is not None else "-"
        lines.append(
            f"{r['name']:<24}{r['threads'] if r['threads'] is not None else '?':>8}{r['median_s'] * 1e3:>11.3f}{ratio(r['vs_numpy']):>10}{ratio(r['vs_scipy']):>10}"
            f"{ratio(r['vs_row']):>8}{mb:>8}{r['compile_s']:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """GEMV at batch 1: sparse 90% pruned (r=4, b=4 and 5; 50% zero inputs) and dense codebook (4, 8 bits).

    ``python -m cmodel.bench.linear [--threads N] [--repeats R] [--size N]``
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cmodel.bench.linear", description=main.__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="threads for every library (default: as configured)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args(argv)
    n, kw = args.size, {"repeats": args.repeats, "threads": args.threads}
    for zf, b in ((0.0, 4), (0.0, 5), (0.5, 4)):
        print(format_rows(bench_sparse_gemv(n, n, 0.9, b, 4, zero_fraction=zf, **kw)), end="\n\n")
    for b in (4, 8):
        print(format_rows(bench_codebook_gemv(n, n, b, **kw)), end="\n\n")


if __name__ == "__main__":
    main()
