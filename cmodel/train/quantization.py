"""Trained quantisation (Deep Compression §3.3; needs torch).

:class:`TrainedQuantization` — weight sharing with fine-tuned centroids:
codebooks, codes and row scales from the encoder's k-means
(:func:`cmodel.encode.encoder.share_weights`: linear initialisation, row
scales as the encoder makes them), then each centroid moves by the sum of
the gradients of the weights that share it (times their row scale); codes
and scales stay fixed and code 0 (pruned) stays exactly zero.
:meth:`TrainedQuantization.export` writes the ``.cmz`` with exactly those
codebooks and codes (:class:`cmodel.encode.rules.Prequantised`), no
re-clustering.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch

from ..encode import encoder
from ..encode.rules import Prequantised
from ..errors import CmzError
from .masks import _Handles, _param


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
    encoder's k-means (:func:`cmodel.encode.encoder.share_weights`; a layer with
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
            :func:`cmodel.encode.encoder.share_weights` (``bits``, ``scale``,
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
        """name → :class:`cmodel.encode.rules.Prequantised` (current codebooks)."""
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
        from ..runtime.capture import capture

        self.write_weights()
        graph, tensors = capture(self.model, example_input)
        for name, s in self.layers.items():
            if name not in tensors:
                raise CmzError("input", f"layer {name!r}: expected it among the captured tensors; found {sorted(tensors)}")
            if not np.array_equal(np.asarray(tensors[name]), s.param.detach().cpu().numpy()):
                raise CmzError("input", f"layer {name!r}: expected the capture to keep the shared weight; found it changed (a folded BatchNorm?) — fold BatchNorm before trained quantisation")
            tensors[name] = s.prequantised()
        return encoder.save_file(tensors, path, rules=rules, metadata=metadata, options=options, graph=graph)
