"""Run a graph with PyTorch eager ops: the "≡" column of spec §10.4,
executable.  Tests compare the runtime against it on the same (decoded)
weights, and ``cmz bench model`` uses it as the "torch eager" baseline.
torch is imported when this module is, so import it lazily.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


def run_torch(graph, tensors: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``graph`` on ``inputs`` with ``tensors`` (name → array) as
    parameters, computed by the PyTorch equivalents of spec §10.4."""
    env = {v.name: torch.from_numpy(np.asarray(x, np.float32)) for v, x in zip(graph.inputs, inputs)}
    for n in graph.nodes:
        a = n.attrs
        xs = [env[v] for v in n.inputs]
        p = {r: torch.from_numpy(np.ascontiguousarray(tensors[name], dtype=np.float32)) for r, name in n.params.items()}
        x = xs[0]
        op = n.op
        if op == "linear":
            y = F.linear(x, p["weight"], p.get("bias"))
        elif op == "conv2d":
            t, l, b, r = a["padding"]
            y = F.conv2d(F.pad(x, (l, r, t, b)), p["weight"], p.get("bias"), a["stride"], 0, a["dilation"], a["groups"])
        elif op == "batch_norm":
            y = F.batch_norm(x, p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"), training=False, eps=a["eps"])
        elif op == "relu":
            y = F.relu(x)
        elif op == "relu6":
            y = F.relu6(x)
        elif op == "leaky_relu":
            y = F.leaky_relu(x, a["negative_slope"])
        elif op == "sigmoid":
            y = torch.sigmoid(x)
        elif op == "tanh":
            y = torch.tanh(x)
        elif op == "gelu":
            y = F.gelu(x, approximate=a["approximate"])
        elif op == "silu":
            y = F.silu(x)
        elif op == "hardswish":
            y = F.hardswish(x)
        elif op == "hardsigmoid":
            y = F.hardsigmoid(x)
        elif op == "max_pool2d":
            y = F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        elif op == "avg_pool2d":
            y = F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], divisor_override=None)
        elif op == "adaptive_avg_pool2d":
            y = F.adaptive_avg_pool2d(x, a["output_size"])
        elif op == "flatten":
            y = torch.flatten(x, a["start_dim"], a["end_dim"])
        elif op == "reshape":
            y = x.reshape(x.shape[0], *a["shape"][1:])
        elif op == "add":
            y = xs[0] + xs[1] if len(xs) == 2 else torch.add(x, a["scalar"])
        elif op == "mul":
            y = xs[0] * xs[1] if len(xs) == 2 else torch.mul(x, a["scalar"])
        elif op == "cat":
            y = torch.cat(xs, a["dim"])
        elif op == "softmax":
            y = F.softmax(x, a["dim"])
        elif op == "log_softmax":
            y = F.log_softmax(x, a["dim"])
        elif op in ("dropout", "identity"):
            y = F.dropout(x, training=False)
        else:  # pragma: no cover
            raise AssertionError(f"no PyTorch equivalent for {op}")
        env[n.outputs[0]] = y
    return [env[v.name].numpy() for v in graph.outputs]
