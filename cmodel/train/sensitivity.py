"""Per-layer pruning sensitivity (Deep Compression §2, Figure 6; needs torch):
accuracy (or any metric) against sparsity, one layer at a time, pruned
exactly as the encoder prunes; a table, a CSV and, with matplotlib, a PNG."""

from __future__ import annotations

import csv
import os
from typing import Callable, Iterable, Sequence

import torch

from .masks import _param, magnitude_mask


def sensitivity(
    model: torch.nn.Module,
    eval_fn: Callable[[torch.nn.Module], float],
    layers: Sequence[str],
    sparsities: Iterable[float],
    csv_path: str | os.PathLike | None = None,
    png_path: str | os.PathLike | None = None,
    metric: str = "accuracy",
) -> list[dict]:
    """Prune one layer at a time (others untouched), without retraining, and
    evaluate: the per-layer sensitivity curve of Deep Compression.  Pruning
    is :func:`magnitude_mask`, i.e. exactly the encoder's.  The model's
    weights are restored after each evaluation.

    Args:
        model: the trained model.
        eval_fn: ``eval_fn(model) -> float`` (e.g. test accuracy).
        layers: parameter names, e.g. ``["ip1.weight", "ip2.weight"]``.
        sparsities: fractions pruned, e.g. ``[0.5, 0.8, 0.9, 0.95]``.
        csv_path: write the table there (columns layer, sparsity, kept_percent, metric).
        png_path: with matplotlib installed, plot metric against sparsity,
            one line per layer (skipped silently without matplotlib).
        metric: the metric's name in the CSV header and the plot.

    Returns:
        Rows ``{"layer", "sparsity", "kept_percent", metric}``; every layer
        starts with its unpruned row (sparsity 0.0, the baseline).
    """
    sparsities = sorted({float(s) for s in sparsities} | {0.0})
    rows = []
    base = None
    for name in layers:
        p = _param(model, name)
        saved = p.detach().clone()
        for s in sparsities:
            if s == 0.0:
                if base is None:
                    base = float(eval_fn(model))
                value = base
                kept = 100.0 * int(torch.count_nonzero(saved)) / saved.numel()
            else:
                m = magnitude_mask(saved, s)
                with torch.no_grad():
                    p.copy_(saved.masked_fill(~m, 0.0))
                value = float(eval_fn(model))
                kept = 100.0 * int(m.sum()) / m.numel()
                with torch.no_grad():
                    p.copy_(saved)
            rows.append({"layer": name, "sparsity": s, "kept_percent": kept, metric: value})
    if csv_path is not None:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["layer", "sparsity", "kept_percent", metric])
            w.writeheader()
            w.writerows(rows)
    if png_path is not None:
        _plot(rows, metric, png_path)
    return rows


def _plot(rows, metric, png_path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["layer"] for r in rows):
        pts = [(r["sparsity"] * 100, r[metric]) for r in rows if r["layer"] == name]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("weights pruned (%)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True
