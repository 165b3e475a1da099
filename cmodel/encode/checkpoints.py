"""Reading state dicts from files the encoder accepts, and writing decoded
tensors back out (``cmz decompress``).

Formats: PyTorch ``.pt``/``.pth`` (``torch.load(weights_only=True)``: never
pickle code execution), ``.safetensors``, ``.npz`` (``allow_pickle=False``).
torch and safetensors are optional and imported only here, only when used.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np

from ..errors import CmzError

INPUT_SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")


def _need(module: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise CmzError("input", f"{what}: expected the optional package {module.split('.')[0]!r} to be installed; found it missing (pip install 'cmodel-cmz[torch]')") from None


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _pick_state_dict(path: str, obj) -> dict:
    """A bare state dict, or a checkpoint holding one under ``state_dict`` or ``model``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CmzError("input", f"{path}: expected a state dict (name → tensor), or a checkpoint dict holding one under 'state_dict' or 'model'; found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not (type(v).__module__.split(".")[0] == "torch" and hasattr(v, "detach"))]
    if bad:
        raise CmzError("input", f"{path}: expected every state dict value to be a tensor; found {type(obj[bad[0]]).__name__} at key {bad[0]!r}")
    return obj


def load_tensors(path: str | os.PathLike) -> dict:
    """Read a state dict from ``.pt``/``.pth``, ``.safetensors`` or ``.npz``.

    Returns:
        name → tensor (torch tensors for ``.pt`` and, when torch is installed,
        ``.safetensors``; numpy arrays otherwise), in file order (sorted by
        name for ``.safetensors``, which keeps no order).

    Raises:
        CmzError: unknown suffix, unreadable content, missing optional package.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    suffix = _suffix(path)
    if suffix in (".pt", ".pth"):
        torch = _need("torch", path)
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for bad or unsafe pickles
            raise CmzError("input", f"{path}: expected a PyTorch checkpoint loadable with weights_only=True; found {type(e).__name__}: {str(e).splitlines()[0]}") from None
        return dict(_pick_state_dict(path, obj))
    if suffix == ".safetensors":
        st = _need("safetensors", path)
        try:
            import torch  # noqa: F401  (bfloat16 needs the torch framework)

            framework = "pt"
        except ImportError:
            framework = "np"
        try:
            with st.safe_open(path, framework=framework) as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, FileNotFoundError):
            raise
        except Exception as e:
            raise CmzError("input", f"{path}: expected a valid safetensors file; found {type(e).__name__}: {e}") from None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, FileNotFoundError) as e:
            if isinstance(e, FileNotFoundError) or not os.path.exists(path):
                raise
            raise CmzError("input", f"{path}: expected a valid .npz archive; found {e}") from None
        except ValueError as e:
            raise CmzError("input", f"{path}: expected a .npz archive of plain arrays; found {e}") from None
    raise CmzError("input", f"{path}: expected a file ending in one of {', '.join(INPUT_SUFFIXES)}; found {suffix or 'no suffix'!r}")


def _atomic(path: str, write: Callable[[str], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write dense arrays to ``.safetensors``, ``.npz`` or ``.pt`` atomically.

    Raises:
        CmzError: unknown suffix or missing optional package.
    """
    path = os.fspath(path)
    suffix = _suffix(path)
    if suffix == ".safetensors":
        st = _need("safetensors.numpy", path)
        _atomic(path, lambda p: st.save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, p))
    elif suffix == ".npz":
        def w(p):
            with open(p, "wb") as f:
                np.savez(f, **tensors)
        _atomic(path, w)
    elif suffix in (".pt", ".pth"):
        torch = _need("torch", path)
        _atomic(path, lambda p: torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, p))
    else:
        raise CmzError("input", f"{path}: expected an output ending in .safetensors, .npz or .pt; found {suffix or 'no suffix'!r}")
