"""Numba kernels for cmodel, one module per kind:

* :mod:`.simd` — the SIMD level (``SIMD``), LLVM-IR helpers and packed
  field loads shared by the kernels;
* :mod:`.sparse_linear` — sparse codebook GEMV/GEMM on relative-index
  entries (row order and EIE's column order);
* :mod:`.codebook_linear` — dense codebook GEMV/GEMM on packed codes;
* :mod:`.conv` — direct sparse, depthwise and codebook convolution;
* :mod:`.huffman` — Huffman chunk decode;
* :mod:`.entries` — relative-index entry encode, check, pack and unpack;
* :mod:`.cuda` — numba-cuda twins of the above, module for module.

This package imports only numpy, numba and llvmlite, never ``cmodel``,
``cmodel.runtime`` or torch.  Kernels do no bounds checks: callers
validate inputs first (spec §6).
"""
