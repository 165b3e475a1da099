"""Benchmarks: every figure is a ratio against a baseline measured in the
same run, contenders interleaved (:mod:`.timing`), with the machine and the
thread count printed beside it.

* :mod:`.linear` — sparse and dense codebook GEMV/GEMM against numpy and
  scipy (``python -m cmodel.bench.linear``).
* :mod:`.conv` — the convolution kernels against torch
  (``python -m cmodel.bench.conv``).
* :mod:`.model` — whole models and per layer (``cmz bench model``);
  :mod:`.cuda` — the same on a GPU (``cmz bench model --backend cuda``).
* :mod:`.decode` — Huffman decode against zstd (``cmz bench decode``).
* :mod:`.encode` — encoder throughput (``cmz bench encode``).

May import anything in the project; nothing imports this package except
the CLI and the demo.
"""
