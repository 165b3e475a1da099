"""Host-side helpers shared by every module of ``cmodel.kernels.cuda``:
device-array conversion and checks, the output array protocol, and the one
place kernels are launched.

Arrays: a numba DeviceNDArray (or the simulator's stand-in) is used as it
is; any other object with ``__cuda_array_interface__`` (CuPy, PyTorch) is
wrapped without a copy by ``cuda.as_cuda_array``; a host numpy array is
copied with ``cuda.to_device`` on the call's stream.  Kernels take flat
C-contiguous arrays, so every array must be C-contiguous (host arrays are
made so by the copy).

Outputs: ``out`` may be a device array, written in place, or a host numpy
array, in which case the result is computed into a device array and copied
back into it before the call returns (the stream is synchronised).

Device helpers called by kernels are ``cuda.jit(device=True,
inline="always")``: they are inlined into the kernel's Numba IR, whereas
``numba.cuda.compile_ptx`` of a kernel calling a non-inlined device
function asks for the current device's compute capability, which fails
where there is no GPU (tests/test_cuda_ptx.py).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

# Most threads per block any kernel here is launched with: shared arrays are
# sized for it at compile time, and block-wide loops use cuda.blockDim.x, so
# a launch may use fewer (the simulator tests do, to stay fast and to cover
# several entry chunks and pixel tiles with small tensors).
MAX_THREADS = 128


def describe(a) -> str:
    """``"float32 array of shape (2, 3)"`` for arrays, the type name otherwise."""
    dt, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
    if dt is not None and shape is not None:
        where = "device " if not isinstance(a, np.ndarray) else ""
        return f"{np.dtype(dt)} {where}array of shape {tuple(shape)}"
    return type(a).__name__


def is_device(a) -> bool:
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def as_device(a, name: str, stream=0):
    """``a`` as a C-contiguous device array (see the module doc).

    Raises:
        ValueError: ``a`` is neither a numpy array nor a CUDA array, or a
            device array that is not C-contiguous.
    """
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a), stream=stream)
    if getattr(a, "__cuda_ndarray__", False):
        d = a
    elif hasattr(a, "__cuda_array_interface__"):
        d = cuda.as_cuda_array(a)
    else:
        raise ValueError(f"{name}: expected a numpy array or a CUDA device array; found {describe(a)}")
    if d.size and not d.is_c_contiguous():
        raise ValueError(f"{name}: expected a C-contiguous array; found a strided {describe(d)}")
    return d


def check(a, name: str, dtypes, ndim=None, shape=None, what: str = "") -> None:
    """Raise ``ValueError("<name>: expected …; found …")`` unless ``a`` has one
    of ``dtypes`` (a dtype or a tuple of them), ``ndim`` dimensions and
    ``shape`` (None: any)."""
    dts = tuple(np.dtype(d) for d in (dtypes if isinstance(dtypes, tuple) else (dtypes,)))
    dt = getattr(a, "dtype", None)
    ok = dt is not None and np.dtype(dt) in dts
    ok = ok and (ndim is None or len(a.shape) == ndim) and (shape is None or tuple(a.shape) == tuple(shape))
    if not ok:
        kinds = "/".join(str(d) for d in dts)
        want = what or (f"a {kinds} array" + (f" of shape {tuple(shape)}" if shape is not None else f" with {ndim} dimensions" if ndim is not None else ""))
        raise ValueError(f"{name}: expected {want}; found {describe(a)}")


def vector(a, name: str, n: int, stream=0):
    """An optional float32[n] parameter (row scales, bias) on the device, or
    None."""
    if a is None:
        return None
    d = as_device(a if not isinstance(a, np.ndarray) else np.asarray(a, np.float32), name, stream)
    check(d, name, np.float32, shape=(n,), what=f"None or {n} float32 values")
    return d


class Output:
    """``out`` checked against ``shape``, and its device side (``.dev``)."""

    def __init__(self, out, shape, stream=0, name: str = "out"):
        shape = tuple(int(s) for s in shape)
        if isinstance(out, np.ndarray):
            if not (out.dtype == np.float32 and out.shape == shape and out.flags.c_contiguous and out.flags.writeable):
                raise ValueError(f"{name}: expected a writeable C-contiguous float32 array of shape {shape}; found {describe(out)}")
            self.host = out
            self.dev = cuda.device_array(shape, np.float32, stream=stream)
        elif is_device(out):
            d = as_device(out, name, stream)
            check(d, name, np.float32, shape=shape, what=f"a C-contiguous float32 array of shape {shape}")
            self.host = None
            self.dev = d
        else:
            raise ValueError(f"{name}: expected a float32 array of shape {shape} (device or numpy); found {describe(out)}")
        self.out = out
        self.stream = stream

    @property
    def size(self) -> int:
        return int(np.prod(self.dev.shape, dtype=np.int64))

    def flat(self):
        return flat(self.dev)

    def finish(self):
        """Copy a host ``out`` back (synchronising the stream); return ``out``."""
        if self.host is not None:
            self.dev.copy_to_host(self.host, stream=self.stream)
            if self.stream:
                self.stream.synchronize()
        return self.out


def flat(d):
    """A 1-D view of a C-contiguous device array (kernels index flat arrays)."""
    n = int(np.prod(d.shape, dtype=np.int64))
    return d if len(d.shape) == 1 else d.reshape(n)


def blocks(n: int, threads: int, cap: int = 65535 * 32) -> int:
    """Blocks of a 1-D grid-stride launch over n items (at least 1)."""
    return max(1, min(cap, -(-n // threads)))


def launch(kernel, grid, block, stream, *args) -> None:
    """Launch ``kernel`` on ``stream``: every launch of the conv and ops
    modules goes through here (a test records the argument types)."""
    kernel[grid, block, stream](*args)
