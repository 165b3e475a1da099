"""Training-time Deep Compression (DESIGN §4, "Training-time parts"; needs torch).

* :func:`prune_masks` — magnitude-pruning masks per layer, computed by the
  encoder's own rule (:func:`cmodel.encoder.prune`), so a mask made here and
  the encoder's ``sparsity`` option prune the same weights.
* :class:`Masks` — masked retraining: :meth:`Masks.attach` hooks an optimizer
  so that pruned weights are exactly +0.0 after every step.  Before the step
  the gradients and every per-parameter optimizer state (momentum buffers,
  Adam moments) are zeroed at pruned positions, after it the weights and the
  states again, so neither weight decay nor a momentum buffer filled before
  pruning can bring a pruned weight back.
* :func:`pruning_schedule`, :func:`iterative_prune` — prune in steps, retrain
  after each (the kept fraction shrinks geometrically to the target).
* :func:`sensitivity` — accuracy (or any metric) against sparsity, one layer
  at a time, pruned exactly as the encoder prunes; a table, a CSV and, with
  matplotlib, a PNG.
* :class:`TrainedQuantization` — weight sharing with fine-tuned centroids:
  codebooks, codes and row scales from the encoder's k-means
  (:func:`cmodel.encoder.share_weights`: linear initialisation, row scales as
  the encoder makes them), then each centroid moves by the sum of the
  gradients of the weights that share it (times their row scale); codes and
  scales stay fixed and code 0 (pruned) stays exactly zero.
  :meth:`TrainedQuantization.export` writes the ``.cmz`` with exactly those
  codebooks and codes (:class:`cmodel.encoder.Prequantised`), no re-clustering.

torch is imported by this module; ``import cmodel`` does not import it.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import encoder
from .encoder import Prequantised
from .errors import CmzError

__all__ = [
    "Masks",
    "Progress",
    "TrainedQuantization",
    "accuracy",
    "iterative_prune",
    "magnitude_mask",
    "predict",
    "prune_masks",
    "pruning_schedule",
    "sensitivity",
    "train_epoch",
]


# --------------------------------------------------------------------------
# Progress bar (no dependency)


class Progress:
    """A one-line progress bar on stderr: ``label [#####.....] 12/40 3.1s``.

    Redrawn at most ``10`` times a second when stderr is a terminal; when it
    is not (logs, CI), only the final line is written.  ``Progress(total, label)``
    then ``update(n)``, ``close(note)``; or use it as a context manager.
    """

    def __init__(self, total: int, label: str, stream=None, width: int = 30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self._last = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.note = ""
        self._draw(force=True)

    def _line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        fill = int(round(frac * self.width))
        return f"{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} {time.perf_counter() - self.start:.1f}s {self.note}".rstrip()

    def _draw(self, force=False):
        now = time.perf_counter()
        if self.tty and (force or now - self._last >= 0.1):
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()
            self._last = now

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        self._draw()

    def close(self, note: str | None = None) -> None:
        if note is not None:
            self.note = note
        self.stream.write(("\r" if self.tty else "") + self._line() + ("\x1b[K" if self.tty else "") + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# Pruning


def _params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def _param(model, name: str) -> torch.nn.Parameter:
    params = _params(model)
    if name not in params:
        raise CmzError("input", f"layer {name!r}: expected a parameter name of the model, one of {sorted(params)}; found none")
    return params[name]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask (True = kept) with which the encoder prunes ``weight`` to
    ``sparsity``: :func:`cmodel.encoder.prune`, i.e. the ``k = round(s·n)``
    smallest magnitudes (exact zeros first, ties to the lower index) are
    pruned, and exact zeros are never kept."""
    w = weight.detach().cpu().float().numpy()
    return torch.from_numpy(encoder.prune(w, sparsity=float(sparsity))).to(weight.device)


def prune_masks(model: torch.nn.Module, sparsities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Masks for the named parameters at their sparsities, from the current
    weights (:func:`magnitude_mask`).

    Example:
        >>> masks = prune_masks(model, {"ip1.weight": 0.92, "ip2.weight": 0.91})   # doctest: +SKIP
    """
    return {name: magnitude_mask(_param(model, name), s) for name, s in sparsities.items()}


class _Handles:
    def __init__(self, handles):
        self.handles = list(handles)

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


class Masks:
    """Pruning masks on a model's parameters, kept through training.

    Args:
        model: the model.
        masks: parameter name → bool tensor of the parameter's shape, True
            where the weight is kept.

    Construction zeroes the pruned weights (:meth:`apply`).  Call
    :meth:`attach` on every optimizer that trains the model.
    """

    def __init__(self, model: torch.nn.Module, masks: Mapping[str, torch.Tensor]):
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self._by_param: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for name, m in masks.items():
            p = _param(model, name)
            m = torch.as_tensor(m)
            if m.dtype != torch.bool or tuple(m.shape) != tuple(p.shape):
                raise CmzError("input", f"mask of {name!r}: expected a bool tensor of shape {list(p.shape)}; found {m.dtype} of shape {list(m.shape)}")
            m = m.to(p.device)
            self.masks[name] = m
            self._by_param.append((p, m))
        self.apply()

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights and their gradients (and, given an
        optimizer, its per-parameter states) — exactly +0.0."""
        for p, m in self._by_param:
            p.masked_fill_(~m, 0.0)
            if p.grad is not None:
                p.grad.masked_fill_(~m, 0.0)
            if optimizer is not None:
                self._mask_state(optimizer, p, m)

    @staticmethod
    def _mask_state(optimizer, p, m) -> None:
        # Momentum buffers, Adam's moments, ...: every state tensor shaped
        # like its parameter.  A buffer filled before pruning would otherwise
        # keep pushing a pruned weight for many steps.
        for v in optimizer.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                v.masked_fill_(~m, 0.0)

    def attach(self, optimizer: torch.optim.Optimizer) -> _Handles:
        """Hook ``optimizer`` so that every ``step()`` keeps the pruned
        weights at exactly zero: gradients and states are masked before the
        step, weights and states after it.  Returns a handle; ``.remove()``
        detaches."""
        self.apply(optimizer)
        pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.apply(opt))
        post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply(opt))
        return _Handles([pre, post])

    def kept(self) -> dict[str, float]:
        """Fraction of weights kept, per masked parameter."""
        return {n: float(m.float().mean()) for n, m in self.masks.items()}


def pruning_schedule(final: Mapping[str, float], steps: int) -> list[dict[str, float]]:
    """Sparsities for ``steps`` rounds of prune-and-retrain that end at
    ``final``: the kept fraction shrinks geometrically, ``kept_i =
    kept_final ** (i / steps)``, so every round removes the same share of
    the weights still there (the paper's iterative pruning).

    Example:
        >>> [round(s["w"], 3) for s in pruning_schedule({"w": 0.92}, 3)]
        [0.569, 0.815, 0.92]
    """
    if type(steps) is not int or steps < 1:
        raise CmzError("input", f"steps: expected an int ≥ 1; found {steps!r}")
    out = []
    for i in range(1, steps + 1):
        out.append({n: (1.0 - (1.0 - s) ** (i / steps)) if i < steps else float(s) for n, s in final.items()})
    return out


def iterative_prune(
    model: torch.nn.Module,
    final: Mapping[str, float],
    steps: int,
    retrain: Callable[[Masks, int], object],
) -> Masks:
    """Prune to ``final`` in ``steps`` rounds (:func:`pruning_schedule`);
    after each round call ``retrain(masks, round)``, which must train with
    ``masks.attach(optimizer)``.  A weight pruned in one round stays pruned
    (masks are combined), and since pruned weights are exactly zero the
    encoder's rule prunes them first in the next round anyway.

    Returns:
        The final :class:`Masks`.
    """
    masks = None
    for i, sparsities in enumerate(pruning_schedule(final, steps)):
        new = prune_masks(model, sparsities)
        if masks is not None:
            new = {n: m & masks.masks[n] for n, m in new.items()}
        masks = Masks(model, new)
        retrain(masks, i)
    return masks


# --------------------------------------------------------------------------
# Training and evaluation helpers (in-memory tensors)


def train_epoch(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    label: str | None = None,
) -> float:
    """One epoch of cross-entropy training on shuffled mini-batches; returns
    the mean loss.  ``transform`` maps a batch of ``x`` to model inputs (e.g.
    uint8 images to normalised float32); ``label`` shows a progress bar."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator)
    batches = range(0, n, batch_size)
    bar = Progress(len(batches), label) if label else None
    total, seen = 0.0, 0
    for i, b0 in enumerate(batches):
        idx = order[b0 : b0 + batch_size]
        xb = x[idx] if transform is None else transform(x[idx])
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx].long())
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * idx.numel()
        seen += idx.numel()
        if bar and (i % 20 == 0 or i + 1 == len(batches)):
            bar.update(min(i + 1, len(batches)) - bar.done, f"loss {total / seen:.4f}")
    if bar:
        bar.close()
    return total / max(seen, 1)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000, transform=None) -> np.ndarray:
    """Predicted classes (argmax of the outputs), in eval mode."""
    was = model.training
    model.eval()
    out = []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        out.append(model(xb if transform is None else transform(xb)).argmax(1).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.empty(0, np.int64)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, transform=None) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(predict(model, x, batch_size, transform) == np.asarray(y)))


# --------------------------------------------------------------------------
# Sensitivity


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


# --------------------------------------------------------------------------
# Trained quantisation


class _Shared:
    """One layer's weight sharing: fixed codes and scales, trained centroids."""

    def __init__(self, name, param, cb, sparse):
        self.name, self.param, self.sparse = name, param, sparse
        self.shape = tuple(param.shape)
        self.codebook_dtype = cb.codebook.dtype
        self.scale_dtype = None if cb.scales is None else cb.scales.dtype
        self.scales_np = cb.scales
        self.codes = torch.from_numpy(cb.codes.astype(np.int64).reshape(-1)).to(param.device)
        self.codes_np = cb.codes.reshape(self.shape).copy()
        rows = cb.codes.shape[0]
        s = np.ones(rows, np.float32) if cb.scales is None else cb.scales.astype(np.float32)
        self.row_scale = torch.from_numpy(s).to(param.device)
        self.rows, self.cols = cb.codes.shape
        # float32 master copy of the centroids; the weights use their value
        # rounded to the codebook dtype, which is what the file stores.
        self.centroids = torch.nn.Parameter(torch.from_numpy(cb.codebook.astype(np.float32)).to(param.device))

    def stored_codebook(self) -> torch.Tensor:
        c = self.centroids.detach()
        if self.codebook_dtype == np.float16:
            c = c.half().float()
        if self.sparse:
            c = c.clone()
            c[0] = 0.0
        return c

    @torch.no_grad()
    def write_weights(self) -> None:
        # float32(scale) * float32(codebook[code]): one float32 product, as the decoder.
        w = self.stored_codebook()[self.codes].view(self.rows, self.cols) * self.row_scale[:, None]
        self.param.copy_(w.view(self.shape))

    @torch.no_grad()
    def accumulate(self) -> None:
        g = self.param.grad
        if g is None:
            self.centroids.grad = None
            return
        # dL/dc_k = sum over weights with code k of dL/dw * scale[row].
        gw = (g.reshape(self.rows, self.cols) * self.row_scale[:, None]).reshape(-1)
        gc = torch.zeros_like(self.centroids).index_add_(0, self.codes, gw)
        if self.sparse:
            gc[0] = 0.0
        self.centroids.grad = gc
        self.param.grad = None  # the weight itself is not trained, only its centroids

    def prequantised(self) -> Prequantised:
        cb = self.stored_codebook().cpu().numpy().astype(self.codebook_dtype)
        return Prequantised(cb, self.codes_np.astype(np.uint8), None if self.scales_np is None else self.scales_np.copy(), self.sparse)


class TrainedQuantization:
    """Trained weight sharing (Deep Compression §3.3) on some of a model's
    weights.

    For each layer the codebook, codes and row scales come from the
    encoder's k-means (:func:`cmodel.encoder.share_weights`; a layer with
    exact zeros is sparse: its zeros are the pruned weights and keep code 0).
    The layer's weights become ``scale[row] * codebook[code]``.  During
    training the weights are not updated directly: after ``backward()`` the
    gradient of each centroid is the sum of the gradients of the weights
    that share it times their row scale, the optimizer updates the centroids
    (:meth:`parameters`), and the weights are rewritten from them.  Codes and
    scales never change; code 0 of a sparse layer stays exactly 0.0.

    Args:
        model: the (pruned) model.
        layers: parameter name → bits (1..8), or → an option dict for
            :func:`cmodel.encoder.share_weights` (``bits``, ``scale``,
            ``scale_dtype``, ``codebook_dtype``).

    Example:
        >>> tq = TrainedQuantization(model, {"ip1.weight": 6, "ip2.weight": 6})   # doctest: +SKIP
        >>> opt = torch.optim.SGD(tq.parameters() + tq.other_parameters(), lr=1e-3)
        >>> tq.attach(opt)
        >>> ...train...
        >>> report = tq.export(torch.zeros(1, 1, 28, 28), "m.cmz")
    """

    def __init__(self, model: torch.nn.Module, layers: Mapping[str, int | Mapping]):
        self.model = model
        self.layers: dict[str, _Shared] = {}
        for name, spec in layers.items():
            p = _param(model, name)
            opts = {"bits": spec} if not isinstance(spec, Mapping) else dict(spec)
            sparse = bool((p.detach() == 0).any())
            if sparse:
                opts["threshold"] = 0.0  # keep exactly the nonzeros: the mask training left
            cb = encoder.share_weights(name, p.detach().cpu().float().numpy(), opts)
            self.layers[name] = _Shared(name, p, cb, sparse)
        self.write_weights()

    def parameters(self) -> list[torch.nn.Parameter]:
        """The centroid tensors, one per layer, for an optimizer."""
        return [s.centroids for s in self.layers.values()]

    def other_parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters that are not shared (biases, other layers)."""
        ids = {id(s.param) for s in self.layers.values()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    def write_weights(self) -> None:
        for s in self.layers.values():
            s.write_weights()

    def accumulate(self) -> None:
        """Turn the weights' gradients into centroid gradients (done by the
        optimizer hook of :meth:`attach`)."""
        for s in self.layers.values():
            s.accumulate()

    def attach(self, optimizer: torch.optim.Optimizer) -> _Handles:
        """Hook ``optimizer``: centroid gradients before each step, weights
        rewritten from the centroids after it.  The optimizer should hold
        :meth:`parameters` (and any :meth:`other_parameters` to train)."""
        pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.accumulate())
        post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.write_weights())
        return _Handles([pre, post])

    def codes(self, name: str) -> np.ndarray:
        """A layer's (fixed) codes, uint8 of the weight's shape."""
        return self.layers[name].codes_np.copy()

    def codebook(self, name: str) -> np.ndarray:
        """A layer's current codebook as it would be stored."""
        return self.layers[name].prequantised().codebook

    def prequantised(self) -> dict[str, Prequantised]:
        """name → :class:`cmodel.encoder.Prequantised` (current codebooks)."""
        return {n: s.prequantised() for n, s in self.layers.items()}

    def export(self, example_input, path: str | os.PathLike, rules=None, metadata=None, options=None):
        """Write the model with its graph (``cmodel.save_model``'s capture)
        to ``path``, the shared layers stored with exactly their codebooks,
        codes and scales; other tensors as ``rules``/``options`` say.

        Returns:
            The encoder's :class:`cmodel.CompressionReport`.

        Raises:
            CmzError: ``input`` if the capture changed a shared weight (a
                BatchNorm folded into it: fold before quantising).
        """
        from .runtime.capture import capture

        self.write_weights()
        graph, tensors = capture(self.model, example_input)
        for name, s in self.layers.items():
            if name not in tensors:
                raise CmzError("input", f"layer {name!r}: expected it among the captured tensors; found {sorted(tensors)}")
            if not np.array_equal(np.asarray(tensors[name]), s.param.detach().cpu().numpy()):
                raise CmzError("input", f"layer {name!r}: expected the capture to keep the shared weight; found it changed (a folded BatchNorm?) — fold BatchNorm before trained quantisation")
            tensors[name] = s.prequantised()
        return encoder.save_file(tensors, path, rules=rules, metadata=metadata, options=options, graph=graph)
