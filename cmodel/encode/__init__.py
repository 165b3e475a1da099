"""The encoder: from a state dict (or a checkpoint file) to a ``.cmz``
(DESIGN §4).

* :mod:`.rules` — defaults, options, glob rules, protected tensors and the
  per-tensor plan; :class:`~.rules.Prequantised` for codebooks that training
  fixed.
* :mod:`.encoder` — prune, share weights, relative-index, pack or
  Huffman-code, write: :func:`~.encoder.save_file`.
* :mod:`.report` — the byte-exact compression report and stage ratios.
* :mod:`.checkpoints` — reading and writing checkpoint files (``.pt``,
  ``.safetensors``, ``.npz``); :mod:`.tensors` — torch/numpy tensors to the
  format's dtypes.

May import :mod:`cmodel.format`, :mod:`cmodel.codecs`, :mod:`cmodel.errors`
(and torch/safetensors lazily, for checkpoints); never :mod:`cmodel.train`,
:mod:`cmodel.runtime` or :mod:`cmodel.bench`.
"""

from .encoder import save_file
from .report import CompressionReport
from .rules import Prequantised

__all__ = ["CompressionReport", "Prequantised", "save_file"]
