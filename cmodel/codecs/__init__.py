"""The codecs of Deep Compression, on numpy arrays, with no file format:

* :mod:`.huffman` — canonical, length-limited Huffman codes in independent
  chunks (spec §6.5): code lengths, encode, checked decode.
* :mod:`.entries` — relative-index entries with filler zeros (spec §6.3):
  encode a pruned code matrix, pack/unpack fields LSB-first (§6.4),
  validate entry streams and pointers.
* :mod:`.quantize` — magnitude pruning masks, 1-D k-means with linear
  initialisation (sorted prefix sums), row scales, codebooks.

May import :mod:`cmodel.errors`, :mod:`cmodel.format.constants` and
:mod:`cmodel.kernels`; never :mod:`cmodel.encode`, :mod:`cmodel.train`,
:mod:`cmodel.runtime` or :mod:`cmodel.bench`.
"""
