"""``cmz demo`` / ``make demo``: the main job on the built-in default.

It builds the paper's LeNet-300-100 as a state dict (seeded random weights,
no torch needed), writes it as a ``.cmz``, verifies it, reads it back and
prints ``cmz info`` of it.
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
    path = os.path.join(out_dir, "lenet300.cmz")
    sd = lenet_300_100_state_dict()
    save_file(sd, path, metadata={"model": "LeNet-300-100", "note": "seeded random weights"})
    back = load_file(path)
    changed = [k for k in sd if not np.array_equal(sd[k], back[k])]
    if changed:
        raise RuntimeError(f"round trip changed tensors {changed}")
    with cmz_open(path) as f:
        f.verify()
        print(format_info(info_dict(f)))
    print(f"\nwrote {path}; verified every check and read back {len(back)} tensors bit-exactly")
    return 0
