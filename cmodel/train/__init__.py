"""Training-time compression (DESIGN §4, "Training-time parts"; needs torch).

Owns the parts of the methods that need gradients; what they produce is
written by :mod:`cmodel.encode` and run by :mod:`cmodel.runtime`.

* :mod:`.masks` — magnitude pruning and masked retraining (:class:`Masks`,
  :func:`prune_masks`, :func:`iterative_prune`).
* :mod:`.sensitivity` — per-layer pruning sensitivity sweeps.
* :mod:`.quantization` — trained quantisation (:class:`TrainedQuantization`).
* :mod:`.loop` — a plain training epoch, predictions and accuracy.
* :mod:`.datasets` — Fashion-MNIST from the Debian package's IDX files.
* :mod:`.demo` — the Deep Compression pipeline on LeNet-300-100 / LeNet-5.

May import :mod:`cmodel.encode`, :mod:`cmodel.format`, :mod:`cmodel.codecs`,
:mod:`cmodel.runtime` and torch; nothing below it imports this package.
``import cmodel`` does not import torch.
"""

from __future__ import annotations

from .loop import accuracy, predict, train_epoch
from .masks import Masks, iterative_prune, magnitude_mask, prune_masks, pruning_schedule
from .quantization import TrainedQuantization
from .sensitivity import sensitivity

__all__ = [
    "Masks",
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
