"""``cmz demo`` / ``make demo``: the main job on the built-in default.

It builds the paper's LeNet-300-100 as a state dict (seeded random weights,
no torch needed), compresses it twice — with the near-lossless defaults and
with Deep Compression settings (prune 92%, 5-bit codes) — verifies both
files, decodes them, and prints the reports, the relative RMS error of each
tensor, and ``cmz info``.  (Random weights lose most of their energy to
pruning; the trained-model demo comes with the training workflow.)
"""

from __future__ import annotations

import os

import numpy as np

from . import load_file, open as cmz_open, save_file
from .cli import format_info, info_dict


def lenet_300_100_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """LeNet-300-100 (784-300-100-10) with He-initialised float32 weights."""
    rng = np.random.default_rng(seed)
    sd = {}
    for i, (n_in, n_out) in enumerate([(784, 300), (300, 100), (100, 10)], start=1):
        sd[f"fc{i}.weight"] = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        sd[f"fc{i}.bias"] = np.zeros(n_out, np.float32)
    return sd


def run_demo(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    sd = lenet_300_100_state_dict()
    runs = [
        ("default (near-lossless: 8-bit row-scaled codebooks, Huffman)", "lenet300_default.cmz", None),
        ("Deep Compression (prune 92%, 5-bit codes, Huffman)", "lenet300_dc.cmz", {"sparsity": 0.92, "bits": 5}),
    ]
    for title, fname, options in runs:
        path = os.path.join(out_dir, fname)
        report = save_file(sd, path, options=options, metadata={"model": "LeNet-300-100", "note": "seeded random weights"})
        print(f"== {title}: {path}")
        print(report.format_table())
        back = load_file(path)
        with cmz_open(path) as f:
            f.verify()
            errs = {k: float(np.sqrt(np.mean((back[k] - sd[k]) ** 2)) / (float(np.sqrt(np.mean(sd[k] ** 2))) or 1.0)) for k in sd}
            print("relative RMS error per tensor: " + ", ".join(f"{k} {v:.4f}" for k, v in errs.items()))
            if options:
                print()
                print(format_info(info_dict(f)))
        print()
    return 0
