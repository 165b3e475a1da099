"""Numba kernels for cmodel: Huffman chunk decode, relative-index entry
codecs, and (later) sparse/dense codebook GEMV, GEMM and convolution.

This package imports only numpy and numba, never ``cmodel`` or torch.
Kernels do no bounds checks: callers validate inputs first (spec §6).
"""
