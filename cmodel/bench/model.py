"""``cmz bench kernels FILE`` and ``cmz bench model FILE``.

Per layer (every linear and conv2d node of the file's graph) the ``cpu``
backend's kernel runs on the layer's real input against, on the decoded
weight: numpy dense (BLAS; im2col + BLAS for convs), scipy.sparse CSR float32,
torch dense (``F.linear``/``F.conv2d``) and torch sparse CSR, the last three
when installed.  ``model`` adds the whole graph: the ``cpu`` session against
the ``numpy`` session and against torch eager running the same graph on the
dense weights.  Contenders are interleaved in short blocks (A B C … A B C
…, see ``_time_interleaved``) and medians reported, every time as a ratio to ours; the same thread count is set for
Numba and torch; the first call (Numba compilation or cache load) is timed
separately.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import open as cmz_open
from .timing import interleave


def _torch():
    try:
        import torch
        import torch.nn.functional as F  # noqa: N812
    except ImportError:
        return None, None
    return torch, F


def _scipy_sparse():
    try:
        import scipy.sparse as sp
    except ImportError:
        return None
    return sp


def _time_interleaved(fns: dict, repeats: int, inner: int = 3) -> dict:
    """Rounds of A B C …; in each round a contender gets one untimed call and
    then ``inner`` timed ones (``cmodel.bench.timing.interleave``).  The untimed
    call absorbs what the previous contender leaves behind: OpenBLAS and
    OpenMP worker threads keep spinning for a while after a call and, on 2
    cores, slow the next library's threads by 10× or more."""
    return interleave(fns, repeats, timed=inner)[0]


def _im2col(x: np.ndarray, kh, kw, stride, padding, dilation) -> np.ndarray:
    """[N, C, H, W] → [C·kh·kw, N·OH·OW] (one group) for the CSR/BLAS baselines."""
    top, left, bottom, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, w = xp.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = np.empty((c, kh, kw, n, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dilation[0], j * dilation[1]
            cols[:, i, j] = xp[:, :, hs : hs + stride[0] * oh : stride[0], ws : ws + stride[1] * ow : stride[1]].transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * oh * ow)


def torch_graph_runner(graph, weights: dict):
    """A function running ``graph`` with torch eager ops on dense weights
    (the "torch eager" baseline), or None without torch."""
    torch, _ = _torch()
    if torch is None:
        return None
    from ..runtime.torch_ref import run_torch

    dense = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}

    def run(x: np.ndarray):
        with torch.inference_mode():
            return run_torch(graph, dense, [x])

    return run


def _to_csr(t):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return t.to_sparse_csr()


def _layer_contenders(node, step_kernel, x: np.ndarray, w: np.ndarray, torch, F, sp) -> dict:
    """Callables for one linear/conv2d layer, ours first."""
    fns = {"cmodel": lambda: step_kernel([x])}
    if node.op == "linear":
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        wt = np.ascontiguousarray(w)
        fns["numpy dense"] = lambda: x2 @ wt.T
        if sp is not None:
            csr = sp.csr_matrix(wt)
            xt = np.ascontiguousarray(x2.T)
            fns["scipy CSR"] = lambda: csr @ xt
        if torch is not None:
            tx, tw = torch.from_numpy(x2), torch.from_numpy(wt)
            fns["torch dense"] = lambda: F.linear(tx, tw)
            tcsr = _to_csr(tw)
            txt = tx.T.contiguous()
            fns["torch CSR"] = lambda: torch.sparse.mm(tcsr, txt)
        return fns
    a = node.attrs
    k, cg, kh, kw = w.shape
    g = a["groups"]
    if g == 1:
        cols = _im2col(x, kh, kw, a["stride"], a["padding"], a["dilation"])
        w2 = np.ascontiguousarray(w.reshape(k, -1))
        fns["numpy im2col+BLAS"] = lambda: w2 @ _im2col(x, kh, kw, a["stride"], a["padding"], a["dilation"])
        if sp is not None:
            csr = sp.csr_matrix(w2)
            fns["scipy CSR (im2col)"] = lambda: csr @ cols
        if torch is not None:
            tcsr = _to_csr(torch.from_numpy(w2))
            tcols = torch.from_numpy(cols)
            fns["torch CSR (im2col)"] = lambda: torch.sparse.mm(tcsr, tcols)
    if torch is not None:
        tx, tw = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w))
        top, left, bottom, right = a["padding"]

        def tconv():
            xx = tx if (top, left) == (bottom, right) else F.pad(tx, (left, right, top, bottom))
            pad = (top, left) if (top, left) == (bottom, right) else (0, 0)
            return F.conv2d(xx, tw, None, tuple(a["stride"]), pad, tuple(a["dilation"]), g)

        fns["torch dense"] = tconv
    return fns


def bench_model(path: str, batch: int = 1, repeats: int = 10, threads: int | None = None, whole: bool = True, layers: bool = True) -> dict:
    """Benchmark a ``.cmz`` with a graph; see the module docstring."""
    import numba

    from ..runtime import Session

    torch, F = _torch()
    sp = _scipy_sparse()
    if threads:
        numba.set_num_threads(threads)
    threads = numba.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cpu = Session(path, backend="cpu")
    load_s = time.perf_counter() - t0
    ref = Session(path, backend="numpy")
    shape = (batch,) + tuple(cpu.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    t0 = time.perf_counter()
    cpu.run(x)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu.run(x)
    second_s = time.perf_counter() - t0
    with cmz_open(path) as f:
        dense = {name: f.read(name).astype(np.float32, copy=False) for name in f.tensor_names()}
        fp32_bytes = sum(4 * f.record(n).numel for n in f.tensor_names())
    result = {
        "path": path, "batch": batch, "threads": threads, "repeats": repeats,
        "load_s": load_s, "first_run_s": first_s, "compile_s": max(first_s - second_s, 0.0),
        "weight_bytes_cpu": cpu.weight_bytes(), "weight_bytes_fp32": fp32_bytes, "layers": [], "model": None,
    }
    if layers:
        # Each layer's real input: run the cpu session's kernels one by one.
        graph = cpu.graph
        vals = {graph.inputs[0].name: x}
        for n, kernel in cpu.kernels():
            ins = [vals[v] for v in n.inputs]
            if n.op in ("linear", "conv2d"):
                w = dense[n.params["weight"]]
                fns = _layer_contenders(n, kernel, ins[0], w, torch, F, sp)
                for fn in fns.values():
                    fn()  # warm up every contender
                med = _time_interleaved(fns, repeats)
                result["layers"].append({"node": n.outputs[0], "op": n.op, "weight": n.params["weight"], "shape": list(w.shape),
                                         "encoding": _encoding(path, n.params["weight"]), "seconds": med})
            out = kernel(ins)
            for v, o in zip(n.outputs, out):
                vals[v] = o
    if whole:
        fns = {"cmodel cpu": lambda: cpu.run(x), "numpy backend": lambda: ref.run(x)}
        trun = torch_graph_runner(cpu.graph, dense)
        if trun is not None:
            trun(x)
            fns["torch eager"] = lambda: trun(x)
        result["model"] = _time_interleaved(fns, repeats)
    cpu.close()
    ref.close()
    return result


def _encoding(path, name) -> str:
    with cmz_open(path) as f:
        r = f.record(name)
        p = r.params
        if r.encoding == "raw":
            return "raw"
        return f"{r.encoding} {p['bits']}b" + (f" r{p['index_bits']} {p['order']}" if r.encoding == "sparse" else "")


def format_result(r: dict) -> str:
    lines = [
        f"{r['path']}: batch {r['batch']}, {r['threads']} threads (Numba and torch; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), medians over {r['repeats']} interleaved rounds of 3 runs; ratios > 1: cmodel faster",
        f"load {r['load_s'] * 1e3:.0f} ms; first run {r['first_run_s'] * 1e3:.0f} ms (Numba compile or cache load ≈ {r['compile_s'] * 1e3:.0f} ms)",
        f"weights held by the cpu session: {r['weight_bytes_cpu']:,} B vs fp32 {r['weight_bytes_fp32']:,} B = {r['weight_bytes_fp32'] / max(r['weight_bytes_cpu'], 1):.1f}× smaller",
    ]
    for layer in r["layers"]:
        s = layer["seconds"]
        ours = s["cmodel"]
        others = ", ".join(f"{k} {v / ours:.2f}×" for k, v in s.items() if k != "cmodel")
        lines.append(f"  {layer['node']:<24} {layer['op']:<7} {'×'.join(map(str, layer['shape'])):<16} {layer['encoding']:<18} {ours * 1e3:8.3f} ms  speedup vs: {others}")
    if r["model"]:
        m = r["model"]
        ours = m["cmodel cpu"]
        lines.append(f"  whole model: cmodel cpu {ours * 1e3:.2f} ms; speedup vs: " + ", ".join(f"{k} {v / ours:.2f}×" for k, v in m.items() if k != "cmodel cpu"))
    return "\n".join(lines)
