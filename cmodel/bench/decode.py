"""Huffman decode benchmark against zstd, for ``cmz bench decode``.

Times are medians of interleaved runs (A B C A B C ...), so that load from
other processes on a shared machine hits every candidate alike; every speed
is also given as a ratio to zstd measured in the same run.
"""

from __future__ import annotations

import time

import numpy as np

from ..codecs import huffman
from ..errors import CmzError
from .timing import _machine


def bench_huffman_decode(
    symbols: np.ndarray,
    alphabet_bits: int,
    chunk_symbols: int = huffman.DEFAULT_CHUNK_SYMBOLS,
    repeats: int = 15,
    threads: tuple[int, ...] = (1, 2),
) -> list[dict]:
    """Time Huffman decoding of ``symbols`` against zstd level 19.

    Encodes once with the optimal 12-bit-limited code for the symbols'
    frequencies, checks that decoding gives the symbols back, warms up the
    Numba kernels (the first call's time is reported as ``compile_s``: Numba
    compilation, or loading its cache), then times, interleaved over
    ``repeats`` rounds: the serial kernel on one thread, the chunk-parallel
    kernel at each count in ``threads``, and zstd (``zstandard``, level 19,
    one thread) decompressing the same symbols stored one per byte.

    Args:
        symbols: uint8 1-D array of symbols below ``2**alphabet_bits``.
        alphabet_bits: 1..8.
        chunk_symbols: symbols per Huffman chunk.
        repeats: timed rounds; medians are reported.
        threads: thread counts for the chunk-parallel decode.

    Returns:
        One dict per candidate with ``name``, ``threads``, ``median_s``,
        ``symbols_per_s``, ``bytes_per_s`` (decoded bytes), ``vs_zstd``
        (speed ratio, > 1 is faster than zstd; None without zstd),
        ``compile_s``, ``note``, and the sizes, equal in every row:
        ``n_symbols``, ``stream_bytes``, ``table_bytes``, ``offsets_bytes``,
        ``ours_bytes`` (their sum), ``entropy_bytes`` (zeroth-order bound),
        ``zstd_bytes`` (None without zstd) and ``machine``.

    Raises:
        CmzError: check ``"input"``: symbols outside the alphabet, or bad
            arguments.
    """
    symbols = np.ascontiguousarray(symbols)
    if symbols.dtype != np.uint8 or symbols.ndim != 1:
        raise CmzError("input", f"symbols: expected a 1-D uint8 array; found {symbols.ndim}-D {symbols.dtype}")
    if not 1 <= alphabet_bits <= huffman.MAX_ALPHABET_BITS:
        raise CmzError("input", f"alphabet_bits: expected 1..{huffman.MAX_ALPHABET_BITS}; found {alphabet_bits}")
    if repeats < 1 or not threads:
        raise CmzError("input", f"expected repeats >= 1 and at least one thread count; found {repeats} and {threads!r}")
    n = symbols.size
    freqs = np.bincount(symbols, minlength=2**alphabet_bits)
    if freqs.size != 2**alphabet_bits:
        raise CmzError("input", f"symbols: expected values below 2**{alphabet_bits}; found {int(symbols.max())}")
    lengths = huffman.code_lengths(freqs)
    stream, offsets = huffman.encode(symbols, lengths, chunk_symbols)
    sizes = {
        "n_symbols": n,
        "stream_bytes": len(stream),
        "table_bytes": lengths.size,
        "offsets_bytes": offsets.nbytes,
        "ours_bytes": len(stream) + lengths.size + offsets.nbytes,
        "entropy_bytes": huffman.entropy_bits(freqs) / 8,
        "zstd_bytes": None,
    }

    def ours(t: int, parallel: bool):
        # The whole decode: checks, tables (cached) and the kernel.
        return lambda: huffman._decode(stream, offsets, lengths, n, chunk_symbols, t, parallel)

    candidates = [("huffman serial", 1, ours(1, False))]
    candidates += [("huffman chunk-parallel", t, ours(t, True)) for t in threads]
    try:
        import zstandard
    except ImportError:
        zstd_note = "zstandard not installed: no zstd baseline"
    else:
        zstd_note = ""
        raw = symbols.tobytes()
        packed = zstandard.ZstdCompressor(level=19).compress(raw)
        sizes["zstd_bytes"] = len(packed)
        dctx = zstandard.ZstdDecompressor()
        if dctx.decompress(packed) != raw:
            raise RuntimeError("zstd round trip failed")
        candidates.append(("zstd-19", 1, lambda: dctx.decompress(packed)))

    compile_s = {}
    for name, t, fn in candidates:
        start = time.perf_counter()
        out = fn()
        compile_s[name, t] = time.perf_counter() - start
        if not np.array_equal(np.frombuffer(out, np.uint8) if isinstance(out, bytes) else out, symbols):
            raise RuntimeError(f"{name} on {t} threads did not give the symbols back")
    sizes["machine"] = _machine()
    times = {(name, t): [] for name, t, _ in candidates}
    for _ in range(repeats):
        for name, t, fn in candidates:
            start = time.perf_counter()
            fn()
            times[name, t].append(time.perf_counter() - start)

    zstd_s = float(np.median(times["zstd-19", 1])) if sizes["zstd_bytes"] is not None else None
    rows = []
    for name, t, _ in candidates:
        med = float(np.median(times[name, t]))
        rows.append({
            "name": name,
            "threads": t,
            "median_s": med,
            "symbols_per_s": n / med,
            "bytes_per_s": n / med,  # one decoded byte per symbol
            "vs_zstd": zstd_s / med if zstd_s else None,
            "compile_s": max(compile_s[name, t] - med, 0.0),
            "note": zstd_note,
            **sizes,
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    """Rows of :func:`bench_huffman_decode` as aligned text lines.

    Args:
        rows: the list it returned.

    Returns:
        A header naming the machine and the sizes, then one line per
        candidate.
    """
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    bits = 8 / r0["n_symbols"] if r0["n_symbols"] else 0.0
    zb = r0["zstd_bytes"]
    lines = [
        f"machine: {r0['machine']}",
        f"{r0['n_symbols']} symbols; huffman {r0['ours_bytes']} B = stream {r0['stream_bytes']} + table {r0['table_bytes']}"
        f" + offsets {r0['offsets_bytes']} ({r0['ours_bytes'] * bits:.3f} bits/symbol, {r0['ours_bytes'] / r0['entropy_bytes'] if r0['entropy_bytes'] else float('nan'):.4f}x entropy);"
        f" entropy bound {r0['entropy_bytes']:.0f} B ({r0['entropy_bytes'] * bits:.3f} bits/symbol);"
        + (f" zstd-19 {zb} B ({zb * bits:.3f} bits/symbol)" if zb is not None else " zstd-19 n/a"),
        f"{'name':<24}{'threads':>8}{'median ms':>11}{'Msym/s':>9}{'MB/s':>9}{'vs zstd':>9}{'compile s':>11}",
    ]
    for r in rows:
        vs = f"{r['vs_zstd']:.2f}x" if r["vs_zstd"] is not None else "n/a"
        lines.append(
            f"{r['name']:<24}{r['threads']:>8}{r['median_s'] * 1e3:>11.3f}{r['symbols_per_s'] / 1e6:>9.0f}"
            f"{r['bytes_per_s'] / 1e6:>9.0f}{vs:>9}{r['compile_s']:>11.3f}" + (f"  {r['note']}" if r["note"] else "")
        )
    return "\n".join(lines)
