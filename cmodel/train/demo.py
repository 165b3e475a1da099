"""``cmz demo`` / ``make demo``, and the Deep Compression pipeline behind the
reproduction scripts (``scripts/lenet300.py``, ``scripts/lenet5.py``).

The pipeline (:func:`deep_compression`) on Fashion-MNIST (the Debian package
``dataset-fashion-mnist``, :mod:`cmodel.train.datasets`):

1. train the baseline;
2. prune iteratively to per-layer sparsities with masked retraining
   (:class:`cmodel.train.Masks`: pruned weights stay exactly zero);
3. trained quantisation (:class:`cmodel.train.TrainedQuantization`: the
   encoder's codebooks, centroids fine-tuned, codes fixed);
4. export with Huffman coding (the encoder stores those codebooks and codes
   as they are) and print the encoder's report as the paper's table;
5. evaluate the ``.cmz`` through the runtime (``Session``, cpu backend),
   compare with PyTorch on the decoded weights, and time both.

The demo is the short version: LeNet-300-100, a few epochs.  torch is
needed (the ``torch`` extra); it is imported when the pipeline runs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

# --------------------------------------------------------------------------
# Configurations


@dataclass
class Config:
    """One Deep Compression run.  ``prune`` maps parameter names to the
    sparsity they end at, ``bits`` to codebook bits (or encoder options)."""

    model: str = "lenet300"  # or "lenet5"
    epochs: int = 10  # baseline
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    prune: dict = field(default_factory=dict)
    prune_steps: int = 3
    retrain_epochs: int = 2  # per pruning step
    retrain_lr: float = 0.01
    bits: dict = field(default_factory=dict)
    quant_epochs: int = 2
    quant_lr: float = 1e-4
    export_options: dict = field(default_factory=lambda: {"raw_dtype": "float16"})
    seed: int = 0
    subset: int | None = None  # train on the first N images only
    synthetic: bool = False  # a small generated dataset instead of Fashion-MNIST (tests)

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's recipes (Han et al., Table 2 and 3), tuned per layer with the
# sensitivity sweep on Fashion-MNIST (scripts/*.py --sensitivity).
# One codebook per tensor (``scale: none``), as the paper has it: these layers
# have no BatchNorm folded in, and row scales would cost 2 bytes a row (820 B,
# 3% of the file).  Measured here, one run each, same baseline: with row
# scales 40.4x at -0.23 points, without 42.5x at -0.06.
LENET300_FULL = Config(
    model="lenet300", epochs=12,
    prune={"ip1.weight": 0.935, "ip2.weight": 0.92, "ip3.weight": 0.74}, prune_steps=3, retrain_epochs=4, retrain_lr=0.02,
    bits={"ip1.weight": {"bits": 5, "codebook_dtype": "float16", "scale": "none"},
          "ip2.weight": {"bits": 5, "codebook_dtype": "float16", "scale": "none"},
          "ip3.weight": {"bits": 6, "codebook_dtype": "float16", "scale": "none"}},
    quant_epochs=3,
)
LENET5_FULL = Config(
    model="lenet5", epochs=5, batch_size=128, lr=0.01,
    prune={"conv1.weight": 0.34, "conv2.weight": 0.88, "ip1.weight": 0.94, "ip2.weight": 0.81}, prune_steps=2, retrain_epochs=2,
    bits={"conv1.weight": {"bits": 6, "codebook_dtype": "float16"}, "conv2.weight": {"bits": 8, "codebook_dtype": "float16"},
          "ip1.weight": {"bits": 4, "codebook_dtype": "float16"}, "ip2.weight": {"bits": 4, "codebook_dtype": "float16"}},
    quant_epochs=1,
)
LENET300_DEMO = Config(
    model="lenet300", epochs=3,
    prune={"ip1.weight": 0.92, "ip2.weight": 0.91, "ip3.weight": 0.74}, prune_steps=2, retrain_epochs=1,
    bits=LENET300_FULL.bits, quant_epochs=1,
)


# --------------------------------------------------------------------------
# Models and data


def build_model(kind: str):
    """Caffe's LeNet-300-100 (784-300-100-10) or LeNet-5 (conv 20, conv 50,
    fc 500, fc 10), with the paper's layer names ``ip1``..., ``conv1``...."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class LeNet300100(nn.Module):
        def __init__(self):
            super().__init__()
            self.ip1, self.ip2, self.ip3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

        def forward(self, x):
            x = torch.flatten(x, 1)
            return self.ip3(F.relu(self.ip2(F.relu(self.ip1(x)))))

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.ip1, self.ip2 = nn.Linear(800, 500), nn.Linear(500, 10)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x), 2)
            x = F.max_pool2d(self.conv2(x), 2)
            return self.ip2(F.relu(self.ip1(torch.flatten(x, 1))))

    models = {"lenet300": LeNet300100, "lenet5": LeNet5}
    if kind not in models:
        from ..errors import CmzError

        raise CmzError("input", f"model: expected one of {sorted(models)}; found {kind!r}")
    return models[kind]()


# Fashion-MNIST's training-set pixel mean and standard deviation (of x / 255).
_MEAN, _STD = 0.2860, 0.3530


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - _MEAN) / _STD)[:, None, :, :]


def synthetic_data(n_train: int = 2000, n_test: int = 500, seed: int = 0):
    """A learnable stand-in for Fashion-MNIST (tests): ten smooth random
    prototype images, each sample one of them plus noise, as uint8."""
    rng = np.random.default_rng(seed)
    proto = rng.random((10, 7, 7)).repeat(4, 1).repeat(4, 2) * 200.0

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(proto[y] + rng.normal(0, 40, (n, 28, 28)), 0, 255).astype(np.uint8)
        return x, y

    return (*make(n_train), *make(n_test))


def load_data(cfg: Config, log=print):
    """``(x_train, y_train, x_test, y_test)`` as torch tensors, images
    normalised float32 ``[N, 1, 28, 28]``."""
    import torch

    if cfg.synthetic:
        xtr, ytr, xte, yte = synthetic_data(cfg.subset or 2000, max(200, (cfg.subset or 2000) // 4), cfg.seed)
        source = "synthetic"
    else:
        from .datasets import FASHION_MNIST_DIR, fashion_mnist

        xtr, ytr = fashion_mnist("train")
        xte, yte = fashion_mnist("test")
        if cfg.subset:
            xtr, ytr = xtr[: cfg.subset], ytr[: cfg.subset]
        source = f"Fashion-MNIST ({FASHION_MNIST_DIR})"
    log(f"data: {source}, {len(ytr):,} training and {len(yte):,} test images")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(_normalise(xtr)), t(ytr.astype(np.int64)), t(_normalise(xte)), t(yte.astype(np.int64))


# --------------------------------------------------------------------------
# The pipeline


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _sgd(params, lr, cfg, weight_decay=None):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay if weight_decay is None else weight_decay)


def _train(model, data, opt, epochs, cfg, gen, label, lr_decay=True):
    """``epochs`` epochs, the learning rate decayed by a cosine per epoch."""
    from .. import train as T

    xtr, ytr = data[0], data[1]
    base = [g["lr"] for g in opt.param_groups]
    for e in range(epochs):
        if lr_decay and epochs > 1:
            f = 0.5 * (1 + np.cos(np.pi * e / epochs))
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * f
        T.train_epoch(model, xtr, ytr, opt, cfg.batch_size, gen, label=f"{label} epoch {e + 1}/{epochs}")


def deep_compression(cfg: Config, out_dir: str, log=print, data=None, threads: int | None = None, speed: bool = True,
                     sensitivity: list[float] | None = None) -> dict:
    """Run the whole pipeline; write ``<model>.cmz`` and ``<model>.json`` in
    ``out_dir``; return the results (also in the JSON).  With
    ``sensitivity`` (a list of sparsities) the baseline's per-layer
    sensitivity is swept first (``sensitivity.csv``/``.png`` in ``out_dir``)."""
    import torch

    from .. import load_file
    from .. import train as T
    from ..runtime import Session

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    data = data or load_data(cfg, log)
    xtr, ytr, xte, yte = data
    acc = lambda m: T.accuracy(m, xte, yte)  # noqa: E731
    res: dict = {"config": cfg.to_dict()}

    model = build_model(cfg.model)
    _train(model, data, _sgd(model.parameters(), cfg.lr, cfg), cfg.epochs, cfg, gen, "baseline")
    res["baseline_accuracy"] = acc(model)
    baseline_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log(f"baseline {cfg.model}: test accuracy {res['baseline_accuracy']:.2f}%")
    if sensitivity:
        layers = [n for n, q in model.named_parameters() if q.ndim > 1]
        bar = tqdm(total=len(layers) * len(set(sensitivity) - {0.0}) + 1, desc="sensitivity sweep", disable=None, file=sys.stderr)

        def eval_fn(m):
            bar.update(1)
            return acc(m)

        res["sensitivity"] = T.sensitivity(model, eval_fn, layers, sensitivity, os.path.join(out_dir, "sensitivity.csv"), os.path.join(out_dir, "sensitivity.png"))
        bar.close()
        for name in layers:
            log(f"sensitivity {name:<13} " + "  ".join(f"{100 * r['sparsity']:.0f}%:{r['accuracy']:.2f}" for r in res["sensitivity"] if r["layer"] == name))

    def retrain(masks, i):
        opt = _sgd(model.parameters(), cfg.retrain_lr, cfg)
        h = masks.attach(opt)
        _train(model, data, opt, cfg.retrain_epochs, cfg, gen, f"prune {i + 1}/{cfg.prune_steps} retrain")
        h.remove()
        kept = ", ".join(f"{_layer(n)} {100 * k:.1f}%" for n, k in masks.kept().items())
        log(f"pruning step {i + 1}/{cfg.prune_steps} (kept {kept}): test accuracy {acc(model):.2f}%")

    masks = T.iterative_prune(model, cfg.prune, cfg.prune_steps, retrain) if cfg.prune else None
    res["pruned_accuracy"] = acc(model)

    tq = T.TrainedQuantization(model, cfg.bits)
    res["quantised_accuracy_before_retrain"] = acc(model)
    bits = ", ".join(f"{_layer(n)} {b['bits'] if isinstance(b, dict) else b}" for n, b in cfg.bits.items())
    log(f"weight sharing ({bits} bits): test accuracy {res['quantised_accuracy_before_retrain']:.2f}% before retraining")
    opt = torch.optim.SGD([{"params": tq.parameters(), "weight_decay": 0.0}, {"params": tq.other_parameters()}],
                          lr=cfg.quant_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    h = tq.attach(opt)
    _train(model, data, opt, cfg.quant_epochs, cfg, gen, "quantised retrain")
    h.remove()
    res["quantised_accuracy"] = acc(model)
    log(f"trained quantisation: test accuracy {res['quantised_accuracy']:.2f}%")

    path = os.path.join(out_dir, f"{cfg.model}.cmz")
    example = xte[:1]
    report = tq.export(example, path, options=cfg.export_options,
                       metadata={"model": cfg.model, "dataset": "synthetic" if cfg.synthetic else "Fashion-MNIST"})
    rep = report.to_dict()
    res["report"] = rep
    fp32_bytes = sum(v.numel() * 4 for v in baseline_sd.values())
    res["state_dict_fp32_bytes"] = fp32_bytes
    res["file_bytes"] = rep["file_bytes"]
    res["ratio_file"] = fp32_bytes / rep["file_bytes"]

    # Through the runtime (cpu backend), and PyTorch on the decoded weights.
    t0 = time.perf_counter()
    with Session(path, backend="cpu") as s:
        preds = np.concatenate([s.run(np.ascontiguousarray(xte[b : b + 1000].numpy()))[0].argmax(1) for b in range(0, len(yte), 1000)])
        res["runtime_load_and_eval_s"] = time.perf_counter() - t0
        decoded = build_model(cfg.model)
        decoded.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in load_file(path).items()})
        decoded.eval()
        tpreds = T.predict(decoded, xte)
        y = yte.numpy()
        res["runtime_accuracy"] = 100.0 * float(np.mean(preds == y))
        res["torch_decoded_accuracy"] = 100.0 * float(np.mean(tpreds == y))
        res["runtime_torch_agreement"] = 100.0 * float(np.mean(preds == tpreds))
        if speed:
            res["speed"] = measure_speed(s, decoded, xte.numpy(), threads)
    res["accuracy_drop"] = res["baseline_accuracy"] - res["runtime_accuracy"]
    res["table"] = paper_table(res)
    res["total_s"] = time.perf_counter() - t_start
    with open(os.path.join(out_dir, f"{cfg.model}.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_speed(session, model, x: np.ndarray, threads: int | None, batches=(1, 256), repeats: int = 15) -> dict:
    """Runtime (cpu backend on the ``.cmz``) against PyTorch eager on the
    decoded dense weights: interleaved rounds, medians, the same thread
    count for Numba and torch."""
    import numba
    import torch

    from ..bench.model import _time_interleaved

    if threads:
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
    out = {"numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(), "machine": _cpu_name()}
    for b in batches:
        xb = np.ascontiguousarray(x[:b])
        tb = torch.from_numpy(xb)

        def torch_run():
            with torch.no_grad():
                return model(tb)

        t = _time_interleaved({"cmodel": lambda: session.run(xb), "torch": torch_run}, repeats)
        out[f"batch{b}"] = {"cmodel_ms": 1e3 * t["cmodel"], "torch_ms": 1e3 * t["torch"], "speedup_vs_torch": t["torch"] / t["cmodel"]}
    return out


# --------------------------------------------------------------------------
# Reporting


def paper_table(res: dict) -> str:
    """Deep Compression's per-layer table (Han et al., Tables 2-3) from the
    encoder's report: weights, kept %, weight and index bits (packed, and
    average after Huffman), compression rate; then the totals."""
    rep = res["report"]
    head = ("layer", "#weights", "kept%", "w bits", "w bits(H)", "idx bits", "idx bits(H)", "fillers", "bytes", "rate P+Q", "rate P+Q+H")
    rows = [head]
    for t in rep["tensors"]:
        comp = t["encoding"] != "raw"
        rows.append((
            t["name"], f"{t['elements']:,}", f"{t['kept_percent']:.1f}",
            str(t["bits"]) if comp else "32" if t["dtype"] == "float32" else "16",
            f"{t['weight_bits_huffman']:.2f}" if comp else "-",
            str(t["index_bits"]) if t["encoding"] == "sparse" else "-",
            f"{t['index_bits_huffman']:.2f}" if t["encoding"] == "sparse" else "-",
            f"{t['fillers']:,}" if t["encoding"] == "sparse" else "-",
            f"{t['stored_bytes']:,}",
            f"{t['ratio_pq']:.1f}x" if comp and t["ratio_pq"] else "-",
            f"{t['ratio_pqh']:.1f}x" if comp and t["ratio_pqh"] else "-",
        ))
    kept = sum(t["kept_percent"] * t["elements"] for t in rep["tensors"] if t["encoding"] != "raw") / max(1, sum(t["elements"] for t in rep["tensors"] if t["encoding"] != "raw"))
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    tot = rep["totals"]
    lines += [
        "",
        f"compressed weights kept: {kept:.1f}% overall; weight-stage ratios: pruning {rep['ratio_pruning']:.1f}x, "
        f"+quantisation {rep['ratio_quantisation']:.1f}x, +Huffman {rep['ratio_huffman']:.1f}x",
        "file bytes: " + ", ".join(f"{k} {v:,}" for k, v in tot.items() if v) + f" = {rep['file_bytes']:,}",
        f"fp32 state dict {res['state_dict_fp32_bytes']:,} B -> .cmz {res['file_bytes']:,} B: {res['ratio_file']:.1f}x (whole file)",
        f"test accuracy: baseline {res['baseline_accuracy']:.2f}%, pruned {res['pruned_accuracy']:.2f}%, "
        f"quantised {res['quantised_accuracy']:.2f}%, .cmz through the runtime {res['runtime_accuracy']:.2f}% "
        f"({-res['baseline_accuracy'] + res['runtime_accuracy']:+.2f} points); "
        f"runtime = PyTorch on the decoded weights for {res['runtime_torch_agreement']:.2f}% of the test set",
    ]
    return "\n".join(lines)


def format_speed(sp: dict) -> str:
    parts = [f"speed (medians of interleaved runs, Numba {sp['numba_threads']} / torch {sp['torch_threads']} threads, {sp['machine']}):"]
    for k, v in sp.items():
        if k.startswith("batch"):
            parts.append(f"  batch {k[5:]}: cmodel runtime {v['cmodel_ms']:.3f} ms, PyTorch eager (dense fp32) {v['torch_ms']:.3f} ms "
                         f"-> {v['speedup_vs_torch']:.2f}x PyTorch's speed")
    return "\n".join(parts)


def run_demo(out_dir: str, epochs: int | None = None, subset: int | None = None, synthetic: bool = False, threads: int | None = None) -> int:
    """The short Deep Compression run on LeNet-300-100 (``cmz demo``)."""
    os.makedirs(out_dir, exist_ok=True)  # fail early (exit 1) on an unwritable place
    cfg = Config(**LENET300_DEMO.to_dict())
    if epochs is not None:
        cfg.epochs = epochs
        cfg.retrain_epochs = min(cfg.retrain_epochs, epochs)
        cfg.quant_epochs = min(cfg.quant_epochs, epochs)
    cfg.subset, cfg.synthetic = subset, synthetic
    kept = ", ".join(f"{_layer(n)} {100 * (1 - s):.0f}%" for n, s in cfg.prune.items())
    print(f"Deep Compression demo: {cfg.model}, baseline {cfg.epochs} epochs, prune in {cfg.prune_steps} steps "
          f"to {kept} kept, "
          f"{cfg.retrain_epochs} retrain epoch(s) each, trained quantisation {cfg.quant_epochs} epoch(s)")
    res = deep_compression(cfg, out_dir, threads=threads)
    print()
    print(res["table"])
    print()
    print(format_speed(res["speed"]))
    print(f"\nwrote {os.path.join(out_dir, cfg.model + '.cmz')} ({res['file_bytes']:,} bytes) and {cfg.model}.json; total {res['total_s']:.0f} s")
    return 0
