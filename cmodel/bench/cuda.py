"""``cmz bench kernels|model FILE --backend cuda``: the ``cuda`` backend on a
real GPU (issue 5).

The twin of :mod:`cmodel.bench.model` (same interleaved rounds,
``bench_model._time_interleaved``, and the same report layout), with what a
device needs:

* **synchronisation around timings**: every timed call ends with a device
  synchronisation (``numba.cuda.synchronize()``, and
  ``torch.cuda.synchronize()`` when torch has CUDA), and so the next one
  starts on an idle device: kernels are asynchronous, so without it a
  timing measures the launch, not the work;
* **warm-up**: every contender runs once before the timed rounds (and once,
  untimed, at the start of each round);
* **compile time separate**: the session's first run compiles every kernel
  (Numba CUDA JIT: typing, NVVM, PTX load); it is timed alone and reported
  as first run minus second run;
* per layer, on the layer's real input already on the device, the cuda
  kernel against **torch CUDA dense** (``F.linear`` / ``F.conv2d``) and
  **torch sparse CSR on CUDA** (``torch.sparse.mm``, cuSPARSE; convs with
  ``groups == 1`` through an ``F.unfold`` im2col matrix built once) on the
  decoded weight, when torch with CUDA is installed;
* ``model`` adds the whole graph: the cuda session (device input, device
  outputs: no host copies in the loop) against the cpu and numpy sessions
  on the same machine.  A whole-model torch CUDA eager baseline is not
  measured (the graph's torch interpreter, ``runtime/torch_ref``, runs on
  the CPU).

Without numba-cuda or a GPU it fails at once with the backend's
``CmzError`` (check ``input``).  Under ``NUMBA_ENABLE_CUDASIM=1`` it runs
on the simulator (for its test; those times mean nothing).
"""

from __future__ import annotations

import time

import numpy as np

from .. import open as cmz_open
from .model import _encoding, _time_interleaved, _torch


def _torch_cuda():
    torch, F = _torch()
    if torch is None or not torch.cuda.is_available():
        return None, None
    return torch, F


def _device_name(cuda) -> str:
    from numba import config

    if config.ENABLE_CUDASIM:
        return "the Numba CUDA simulator (times are not GPU times)"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return f"{name} (sm_{dev.compute_capability[0]}{dev.compute_capability[1]})"


def _synced(fn, sync):
    def call():
        fn()
        sync()

    return call


def _layer_contenders(node, kernel, x, w: np.ndarray, torch, F) -> dict:
    """Callables for one linear/conv2d layer on the device, ours first."""
    fns = {"cmodel cuda": lambda: kernel([x])}
    if torch is None:
        return fns
    tx = torch.as_tensor(x, device="cuda")  # __cuda_array_interface__: no copy
    tw = torch.from_numpy(np.ascontiguousarray(w)).cuda()
    if node.op == "linear":
        x2 = tx.reshape(-1, tx.shape[-1])
        fns["torch CUDA dense"] = lambda: F.linear(x2, tw)
        csr = tw.to_sparse_csr()
        xt = x2.T.contiguous()
        fns["torch CUDA CSR"] = lambda: torch.sparse.mm(csr, xt)
        return fns
    a = node.attrs
    top, left, bottom, right = a["padding"]
    xp = F.pad(tx, (left, right, top, bottom))
    stride, dilation, g = tuple(a["stride"]), tuple(a["dilation"]), a["groups"]
    fns["torch CUDA dense"] = lambda: F.conv2d(xp, tw, None, stride, 0, dilation, g)
    if g == 1:
        k = tw.shape[0]
        cols = F.unfold(xp, tuple(tw.shape[2:]), dilation=dilation, stride=stride)  # [N, C*R*S, L]
        cols = cols.permute(1, 0, 2).reshape(cols.shape[1], -1).contiguous()
        csr = tw.reshape(k, -1).to_sparse_csr()
        fns["torch CUDA CSR (im2col)"] = lambda: torch.sparse.mm(csr, cols)
    return fns


def bench_model_cuda(path: str, batch: int = 1, repeats: int = 10, whole: bool = True, layers: bool = True) -> dict:
    """Benchmark a ``.cmz`` with a graph on the ``cuda`` backend; see the
    module docstring.  Returns the dict :func:`format_result` prints.

    Raises:
        CmzError: check ``input``: no numba-cuda or no CUDA device.
    """
    from ..runtime import Session
    from ..runtime.backends.cuda import require_cuda

    cuda = require_cuda()  # fail before any work without a GPU
    torch, F = _torch_cuda()

    def sync():
        cuda.synchronize()
        if torch is not None:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    s = Session(path, backend="cuda", device_outputs=True)
    sync()
    load_s = time.perf_counter() - t0
    shape = (batch,) + tuple(s.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    xd = cuda.to_device(x)
    runs = []
    for _ in range(2):  # the first compiles every kernel
        t0 = time.perf_counter()
        s.run(xd)
        sync()
        runs.append(time.perf_counter() - t0)
    with cmz_open(path) as f:
        dense = {name: f.read(name).astype(np.float32, copy=False) for name in f.tensor_names()}
        fp32_bytes = sum(4 * f.record(n).numel for n in f.tensor_names())
    result = {
        "path": path, "batch": batch, "device": _device_name(cuda), "repeats": repeats,
        "load_s": load_s, "first_run_s": runs[0], "compile_s": max(runs[0] - runs[1], 0.0),
        "weight_bytes_device": s.weight_bytes(), "weight_bytes_fp32": fp32_bytes, "layers": [], "model": None,
        "torch_cuda": torch is not None,
    }
    if layers:
        vals = {s.graph.inputs[0].name: xd}
        for n, kernel in s.kernels():
            ins = [vals[v] for v in n.inputs]
            if n.op in ("linear", "conv2d"):
                w = dense[n.params["weight"]]
                fns = {k: _synced(fn, sync) for k, fn in _layer_contenders(n, kernel, ins[0], w, torch, F).items()}
                for fn in fns.values():
                    fn()  # warm up every contender (and compile ours)
                med = _time_interleaved(fns, repeats)
                result["layers"].append({"node": n.outputs[0], "op": n.op, "weight": n.params["weight"], "shape": list(w.shape),
                                         "encoding": _encoding(path, n.params["weight"]), "seconds": med})
            for v, o in zip(n.outputs, kernel(ins)):
                vals[v] = o
        sync()
    if whole:
        cpu, ref = Session(path, backend="cpu"), Session(path, backend="numpy")
        cpu.run(x)  # compile the cpu kernels outside the timings
        fns = {"cmodel cuda": _synced(lambda: s.run(xd), sync), "cmodel cpu": lambda: cpu.run(x), "numpy backend": lambda: ref.run(x)}
        result["model"] = _time_interleaved(fns, repeats)
        cpu.close()
        ref.close()
    s.close()
    return result


def format_result(r: dict) -> str:
    lines = [
        f"{r['path']}: backend cuda on {r['device']}, batch {r['batch']}, medians over {r['repeats']} interleaved rounds of 3 runs, "
        "each ended by a device synchronisation; ratios > 1: cmodel faster",
        f"load {r['load_s'] * 1e3:.0f} ms; first run {r['first_run_s'] * 1e3:.0f} ms (CUDA JIT compile ≈ {r['compile_s'] * 1e3:.0f} ms)",
        f"weights held on the device: {r['weight_bytes_device']:,} B vs fp32 {r['weight_bytes_fp32']:,} B = "
        f"{r['weight_bytes_fp32'] / max(r['weight_bytes_device'], 1):.1f}× smaller",
    ]
    if not r["torch_cuda"]:
        lines.append("  (torch with CUDA not available: no torch CUDA dense / CSR baselines)")
    for layer in r["layers"]:
        s = layer["seconds"]
        ours = s["cmodel cuda"]
        others = ", ".join(f"{k} {v / ours:.2f}×" for k, v in s.items() if k != "cmodel cuda") or "-"
        lines.append(f"  {layer['node']:<24} {layer['op']:<7} {'×'.join(map(str, layer['shape'])):<16} {layer['encoding']:<18} "
                     f"{ours * 1e3:8.3f} ms  speedup vs: {others}")
    if r["model"]:
        m = r["model"]
        ours = m["cmodel cuda"]
        lines.append(f"  whole model: cmodel cuda {ours * 1e3:.2f} ms; speedup vs: " + ", ".join(f"{k} {v / ours:.2f}×" for k, v in m.items() if k != "cmodel cuda"))
    return "\n".join(lines)
