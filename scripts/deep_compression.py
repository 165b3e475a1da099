"""Reproduce Deep Compression on Fashion-MNIST (not run in CI).

    nice -n 15 .venv/bin/python scripts/deep_compression.py lenet300 [--out out/lenet300]
    nice -n 15 .venv/bin/python scripts/deep_compression.py lenet5 --sensitivity

Needs the Debian package dataset-fashion-mnist (apt-get install -y
dataset-fashion-mnist) and the torch extra.  Trains the baseline, prunes
iteratively with masked retraining, trained quantisation, Huffman, then runs
the .cmz through the runtime (cpu backend); prints the paper-style table and
writes <out>/<model>.cmz and <out>/<model>.json.  --sensitivity also sweeps
the baseline's per-layer sensitivity (sensitivity.csv, and .png with matplotlib).
Override any Config field with --set key=value (JSON values), e.g.
--set 'prune={"ip1.weight": 0.95}'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/numba start their thread pools


def main(argv=None) -> int:
    from cmodel.train import demo

    configs = {"lenet300": demo.LENET300_FULL, "lenet5": demo.LENET5_FULL}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=sorted(configs))
    p.add_argument("--out", help="output folder (default out/<model>)")
    p.add_argument("--threads", type=int, default=None, help="torch and Numba threads (default: all cores)")
    p.add_argument("--sensitivity", action="store_true", help="sweep per-layer sensitivity of the baseline first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a Config field")
    a = p.parse_args(argv)
    cfg = demo.Config(**configs[a.model].to_dict())
    for kv in a.set:
        k, v = kv.split("=", 1)
        if not hasattr(cfg, k):
            p.error(f"--set: expected a Config field; found {k!r}")
        setattr(cfg, k, json.loads(v))
    out = a.out or os.path.join("out", a.model)
    os.makedirs(out, exist_ok=True)
    sweep = [0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97] if a.sensitivity else None
    res = demo.deep_compression(cfg, out, threads=a.threads, sensitivity=sweep)
    print()
    print(res["table"])
    print()
    print(demo.format_speed(res["speed"]))
    print(f"\nwrote {out}/{cfg.model}.cmz and {out}/{cfg.model}.json; total {res['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
