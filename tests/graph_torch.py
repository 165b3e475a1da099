"""Test helpers: the PyTorch reference run of a graph (spec §10.4's "≡"
column, in ``cmodel.runtime.torch_ref``) and the closeness check.  A wrong
numpy op, a wrong attribute mapping in the spec, and a wrong capture all show
up as a difference."""

from __future__ import annotations

import numpy as np

from cmodel.runtime.torch_ref import run_torch  # noqa: F401  (re-exported for the tests)


def assert_close(y: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    """``max |y − ref| ≤ rel · max |ref|``, same shape, float32."""
    assert y.dtype == np.float32 and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    scale = float(np.abs(ref).max())
    err = float(np.abs(y.astype(np.float64) - ref).max())
    assert err <= rel * scale, f"max error {err:.3g} vs {rel} × max |ref| {scale:.3g}"
