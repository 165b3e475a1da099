"""Magnitude pruning and masked retraining (Deep Compression §2; needs torch).

* :func:`prune_masks` — magnitude-pruning masks per layer, computed by the
  encoder's own rule (:func:`cmodel.encode.encoder.prune`), so a mask made
  here and the encoder's ``sparsity`` option prune the same weights.
* :class:`Masks` — masked retraining: :meth:`Masks.attach` hooks an optimizer
  so that pruned weights are exactly +0.0 after every step.  Before the step
  the gradients and every per-parameter optimizer state (momentum buffers,
  Adam moments) are zeroed at pruned positions, after it the weights and the
  states again, so neither weight decay nor a momentum buffer filled before
  pruning can bring a pruned weight back.
* :func:`pruning_schedule`, :func:`iterative_prune` — prune in steps, retrain
  after each (the kept fraction shrinks geometrically to the target).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..encode import encoder
from ..errors import CmzError


def _params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def _param(model, name: str) -> torch.nn.Parameter:
    params = _params(model)
    if name not in params:
        raise CmzError("input", f"layer {name!r}: expected a parameter name of the model, one of {sorted(params)}; found none")
    return params[name]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask (True = kept) with which the encoder prunes ``weight`` to
    ``sparsity``: :func:`cmodel.encode.encoder.prune`, i.e. the ``k = round(s·n)``
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
