"""The rewrite of pass `prune`: removing the chosen channels from the graph.

Given a kept-mask per analysed tensor (passes/_channels.py's layouts), `apply_masks`
slices every recorded weight, BN parameter and per-channel constant, runs the fixups
(Reshape constants, Split sizes, depthwise group counts), fixes the stale channel dims of
intermediate shapes and drops the constant producers nothing reads any more.
`zero_consumers` is the `mask_only` reference: nothing removed, the consumer weights of
the channels that would be removed set to zero.

Without samples, `mean_compensation` estimates the expected value of every removed
channel (a Gaussian model fed by the BatchNorm statistics, pushed through
ReLU/Clip/Add/pooling) and `apply_masks` adds its contribution to the consumers' biases
(He et al.'s reconstruction reduced to its mean term).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import GraphoptError

from ._channels import Analysis, Sink, compress, read_constant


def apply_masks(graph: gs.Graph, an: Analysis, masks: dict, namer, bias_deltas: dict) -> None:
    """Remove the channels whose mask entry is False: slice weights and parameters, run
    the fixups, add `bias_deltas` (sink id -> delta, from `mean_compensation` on the
    unpruned weights) to the consumers' biases, refresh intermediate shapes, drop
    orphaned constant producers."""
    weight_producers = [sl.ref.tensor.inputs[0] for sl in an.slices
                        if isinstance(sl.ref.tensor, gs.Variable) and len(sl.ref.tensor.inputs) == 1]
    done = set()
    for sl in an.slices:
        key = (id(sl.ref.node), sl.ref.index, sl.axis, sl.role)
        if key in done:
            continue
        done.add(key)
        mask = masks[sl.tensor]
        if mask.all():
            continue
        value = sl.ref.get()
        if value.shape[sl.axis] != len(mask):
            raise GraphoptError(f"internal: cannot slice {sl.ref.tensor.name} {value.shape} on axis {sl.axis} with {len(mask)} channels")
        sl.ref.set(compress(value, mask, sl.axis), namer)
    for fx in an.fixups:
        if fx.tensors:
            if not all(masks[t].all() for t in fx.tensors):
                fx.fn([int(masks[t].sum()) for t in fx.tensors], namer)
            continue
        mask = masks[fx.tensor]
        if not mask.all():
            fx.fn(int(mask.sum()), namer)
    for s in an.sinks:
        if id(s) in bias_deltas:
            _add_bias(s, bias_deltas[id(s)], masks, namer)
    _refresh_shapes(graph, an, masks)
    _drop_orphans(graph, weight_producers)


def zero_consumers(an: Analysis, masks: dict, namer) -> None:
    """The mask_only reference: zero the consumer weights that read removed channels."""
    for s in an.sinks:
        mask = masks[s.tensor]
        if not mask.all():
            w = np.array(s.weight.get())
            index = [slice(None)] * w.ndim
            index[s.axis] = ~mask
            w[tuple(index)] = 0
            s.weight.set(w, namer)


def set_bias(node: gs.Node, values: np.ndarray, namer) -> None:
    """Give a Conv/Gemm a new constant bias (third input), replacing the one it has."""
    const = gs.Constant(namer((node.name or node.op) + "_bias"), values)
    if len(node.inputs) > 2 and node.inputs[2].name:
        node.inputs[2] = const
    else:
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(const)


def _gauss_relu_mean(m, s, lo=0.0, hi=None):
    """E[clip(z, lo, hi)] for z ~ N(m, s^2) (hi=None: no upper bound)."""
    from math import erf, exp, pi, sqrt

    def e_relu(mu, sd):  # E[max(z, 0)]
        out = np.empty_like(mu)
        for i, (a, b) in enumerate(zip(mu, sd)):
            if b <= 1e-12:
                out[i] = max(a, 0.0)
            else:
                t = a / b
                out[i] = a * 0.5 * (1 + erf(t / sqrt(2))) + b * exp(-t * t / 2) / sqrt(2 * pi)
        return out

    mean = lo + e_relu(m - lo, s)
    if hi is not None:
        mean = mean - e_relu(m - hi, s)
    return mean


def _estimate(t: gs.Tensor, memo: dict):
    """Per-channel (mean, std) of a tensor under a Gaussian model driven by the
    BatchNorm running statistics (the distribution the network was trained on), or None."""
    if t.name in memo:
        return memo[t.name]
    memo[t.name] = None
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    out = None
    if node.op == "BatchNormalization":
        gamma, beta = read_constant(node.inputs[1]), read_constant(node.inputs[2])
        if gamma is not None and beta is not None:
            out = (np.asarray(beta, np.float64).reshape(-1), np.abs(np.asarray(gamma, np.float64)).reshape(-1))
    elif node.op in ("Relu", "Clip"):
        src = _estimate(node.inputs[0], memo)
        if src is not None:
            lo, hi = 0.0, None
            if node.op == "Clip":
                lo_v = read_constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
                hi_v = read_constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
                lo = float(np.asarray(lo_v).reshape(-1)[0]) if lo_v is not None else float(node.attrs.get("min", -np.inf))
                hi = float(np.asarray(hi_v).reshape(-1)[0]) if hi_v is not None else node.attrs.get("max")
                if not np.isfinite(lo):
                    return None
            m, sd = src
            out = (_gauss_relu_mean(m, sd, lo, hi), sd * 0.6)  # spread shrinks under clipping
    elif node.op == "Add" and len(node.inputs) == 2:
        a, b = (_estimate(i, memo) for i in node.inputs)
        if a is not None and b is not None and a[0].shape == b[0].shape:
            out = (a[0] + b[0], np.sqrt(a[1] ** 2 + b[1] ** 2))
    elif node.op in ("MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Identity", "Dropout"):
        out = _estimate(node.inputs[0], memo)
    memo[t.name] = out
    return out


def mean_compensation(an: Analysis, masks) -> dict:
    """Without samples: for each sink whose input loses channels, the bias change that
    adds back those channels' expected contribution (He et al.'s reconstruction, reduced
    to its mean term, with the means estimated from BN statistics)."""
    memo: dict = {}
    deltas = {}
    for s in an.sinks:
        mask = masks[s.tensor]
        if mask.all():
            continue
        t = next((i for i in s.node.inputs if i.name == s.tensor), None)
        est = _estimate(t, memo) if t is not None else None
        if est is None:
            continue
        mean = est[0]
        w = np.asarray(s.weight.get(), np.float64)
        if s.kind == "conv":
            if len(mean) != w.shape[1]:
                continue
            removed = np.where(mask, 0.0, mean)
            delta = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) @ removed
        elif s.kind == "gemm":
            k = w.shape[s.axis]
            if k % len(mean):
                continue
            rep = k // len(mean)  # Flatten: each channel is a block of features
            removed = np.where(mask, 0.0, np.repeat(mean, rep))
            w2 = w if s.axis == 0 else w.T  # [K, N]
            delta = float(s.node.attrs.get("alpha", 1.0)) * (removed @ w2)
        else:
            continue
        deltas[id(s)] = delta
    return deltas


def _add_bias(s: Sink, delta: np.ndarray, masks, namer) -> None:
    node = s.node
    out_mask = masks.get(node.outputs[0].name)
    if out_mask is not None and not out_mask.all():
        delta = delta[out_mask]
    if s.kind == "gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if len(node.inputs) > 2 and node.inputs[2].name and beta == 0.0:
            return
        delta = delta / (beta if beta else 1.0)
    cur = read_constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    dtype = s.weight.get().dtype
    bias = (np.broadcast_to(np.asarray(cur, np.float64).reshape(-1), delta.shape) if cur is not None else 0.0) + delta
    set_bias(node, np.asarray(bias, dtype=dtype), namer)


def _refresh_shapes(graph: gs.Graph, an: Analysis, masks) -> None:
    """Fix the channel dimension of every tensor whose channels changed; clear shapes
    that cannot be fixed (onnx shape inference recomputes them)."""
    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    tensors = graph.tensors()
    for name, lay in an.layouts.items():
        mask = masks[name]
        if mask.all() or name in io:
            continue
        t = tensors.get(name)
        if not isinstance(t, gs.Variable) or t.shape is None:
            continue
        shape = list(t.shape)
        if lay.axis < len(shape) and isinstance(shape[lay.axis], int):
            shape[lay.axis] = int(mask.sum())
            t.shape = shape
        else:
            t.shape = None


def _drop_orphans(graph: gs.Graph, candidates) -> None:
    """Remove the constant-producing nodes (Constant, ConstantOfShape, Unsqueeze of a
    constant...) whose weights were replaced and that nothing reads any more."""
    outputs = {t.name for t in graph.outputs}
    dead = set()
    todo = list(candidates)
    while todo:
        node = todo.pop()
        if id(node) in dead or node.op not in ("Constant", "ConstantOfShape", "Unsqueeze", "Reshape"):
            continue
        if any(t.outputs or t.name in outputs for t in node.outputs):
            continue
        dead.add(id(node))
        for t in node.inputs:
            t.outputs.remove(node) if node in t.outputs else None
            if isinstance(t, gs.Variable) and len(t.inputs) == 1:
                todo.append(t.inputs[0])
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) not in dead]


