"""Encoder benchmark for ``cmz bench encode``: compress one synthetic
fc-layer matrix (VGG-16 fc6 size by default) and compare with what a user
would otherwise do: prune the same way, keep fp32, and zstd-compress it.

Both contenders run in the same process, alternately, ``repeats`` times;
medians are reported.  Peak memory is the process's peak RSS, which includes
the input matrix itself.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time

import numba
import numpy as np

from ..encode.encoder import prune, save_file


def bench_encode(rows=4096, cols=25088, sparsity=0.96, bits=5, coding="huffman", repeats=3, seed=0) -> dict:
    """Time and size of compressing a Gaussian ``rows×cols`` float32 matrix.

    Returns a dict with our median seconds, file bytes and peak RSS, and the
    baseline's (prune + zstd level 3 of the fp32 bytes) seconds and bytes,
    when ``zstandard`` is installed.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.01)
    try:
        import zstandard
    except ImportError:
        zstandard = None
    ours, base, size, base_size = [], [], 0, None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.cmz")
        for _ in range(repeats):
            t = time.perf_counter()
            save_file({"fc.weight": w}, path, rules={"*": {"sparsity": sparsity, "bits": bits, "coding": coding}})
            ours.append(time.perf_counter() - t)
            size = os.path.getsize(path)
            if zstandard is not None:
                t = time.perf_counter()
                pruned = np.where(prune(w, sparsity), w, np.float32(0))
                blob = zstandard.ZstdCompressor(level=3).compress(pruned.tobytes())
                base.append(time.perf_counter() - t)
                base_size = len(blob)
                del pruned, blob
    return {
        "shape": (rows, cols), "sparsity": sparsity, "bits": bits, "coding": coding, "repeats": repeats,
        "threads": numba.get_num_threads(),
        "seconds": statistics.median(ours), "bytes": size,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "fp32_bytes": w.nbytes,
        "baseline_seconds": statistics.median(base) if base else None, "baseline_bytes": base_size,
    }


def format_result(r: dict) -> str:
    rows, cols = r["shape"]
    lines = [
        f"compress {rows}×{cols} float32 ({r['fp32_bytes'] / 1e6:.0f} MB) at {100 * r['sparsity']:.0f}% sparsity, "
        f"{r['bits']}-bit codes, {r['coding']}; {r['threads']} Numba threads, median of {r['repeats']}",
        f"  cmodel:        {r['seconds']:7.2f} s  {r['bytes']:>12,} B  ({r['fp32_bytes'] / r['bytes']:.1f}× smaller than fp32)  "
        f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (input matrix included)",
    ]
    if r["baseline_seconds"] is not None:
        lines.append(
            f"  prune+zstd-3:  {r['baseline_seconds']:7.2f} s  {r['baseline_bytes']:>12,} B  ({r['fp32_bytes'] / r['baseline_bytes']:.1f}×)"
            f"  → cmodel file {r['baseline_bytes'] / r['bytes']:.2f}× smaller, {r['seconds'] / r['baseline_seconds']:.2f}× the time"
        )
    else:
        lines.append("  prune+zstd-3: not measured (zstandard is not installed)")
    return "\n".join(lines)
