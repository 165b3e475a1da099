"""Training and evaluation helpers on in-memory tensors (needs torch):
one epoch of cross-entropy training, predictions, top-1 accuracy."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm


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
    uint8 images to normalised float32); ``label`` shows a progress bar (tqdm, on a terminal)."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator)
    batches = range(0, n, batch_size)
    bar = tqdm(total=len(batches), desc=label, disable=None if label else True, leave=True, file=sys.stderr)
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
        bar.update(1)
        if i % 20 == 0 or i + 1 == len(batches):
            bar.set_postfix_str(f"loss {total / seen:.4f}", refresh=False)
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
