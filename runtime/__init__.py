"""The cmodel runtime: graph IR, capture from ``torch.nn.Module``, and the
executor that runs a ``.cmz`` on its compressed weights.
"""
