"""Unstructured magnitude sparsity (pass `sparsify`).

`sparsify(ratio=0.5, block=1)` sets the smallest-magnitude weights of every Conv, Gemm
and MatMul to zero: per layer, the `ratio` fraction of the weights (or, with block=B,
of the blocks of B consecutive input channels of one output channel, ranked by their L2
norm). Nothing else changes: the graph, the shapes and the speed on dense kernels stay
the same (onnxruntime's CPU kernels do not skip zeros). What it buys is size after
compression: zeros compress, so the zipped model is smaller (the pass reports the zlib
size before and after). Accuracy drops with the ratio; `distill` after it recovers much
of it and keeps the zeros (it does not train weights that a sparsify left at zero).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import GraphoptError, Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.pipeline import budget_options

log = logging.getLogger(__name__)

_WEIGHT_SLOT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def _zipped_bytes(model: Model) -> int:
    return len(zlib.compress(model.to_onnx().SerializeToString(), 6))


@register_pass("sparsify")
class Sparsify(Pass):
    """Unstructured magnitude sparsity: zero the smallest Conv/Gemm/MatMul weights (smaller zipped size, same speed)."""

    contract = "lossy"
    budget = {"cosine": 0.5}
    options = {
        "ratio": Option(float, 0.5, "fraction of each layer's weights (or blocks) set to zero"),
        "block": Option(int, 1, "zero blocks of this many consecutive input channels (1: single weights)"),
        "min_size": Option(int, 256, "layers with fewer weights are left dense"),
        "exclude": Option(list, [], "node names left dense"),
        **budget_options(budget),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        if not 0.0 <= self.ratio < 1.0:
            raise GraphoptError(f"pass 'sparsify': ratio must be in [0, 1), got {self.ratio}")
        if self.block < 1:
            raise GraphoptError("pass 'sparsify': block must be >= 1")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        zipped_before = _zipped_bytes(model)
        seen: set[int] = set()
        layers, zeros, total = {}, 0, 0
        for node in model.graph.nodes:
            slot = _WEIGHT_SLOT.get(node.op)
            if slot is None or node.name in self.exclude or len(node.inputs) <= slot:
                continue
            t = node.inputs[slot]
            if not isinstance(t, gs.Constant) or id(t) in seen:
                continue
            w = np.asarray(t.values)
            if not np.issubdtype(w.dtype, np.floating) or w.size < self.min_size:
                continue
            seen.add(id(t))
            new = _sparsify(w, self.ratio, self.block, in_axis=_input_axis(node, w))
            t.values = new
            z = int((new == 0).sum())
            layers[node.name or t.name] = round(z / w.size, 3)
            zeros += z
            total += w.size
        if not layers:
            return PassResult(False, {"layers": 0, "reason": "no Conv/Gemm/MatMul weights large enough"})
        stats = {"layers": len(layers), "sparsity": round(zeros / max(total, 1), 4), "per_layer": layers,
                 "zipped_bytes_before": zipped_before, "zipped_bytes_after": _zipped_bytes(model)}
        log.info("sparsify: %d layers, %.1f%% zeros, zipped %d -> %d bytes (dense kernels run at the same speed)",
                 len(layers), 100 * stats["sparsity"], zipped_before, stats["zipped_bytes_after"])
        return PassResult(True, stats)


def _input_axis(node: gs.Node, w: np.ndarray) -> int:
    if node.op == "Conv":
        return 1
    if node.op == "Gemm":
        return 1 if node.attrs.get("transB", 0) else 0
    return w.ndim - 2  # MatMul: [..., K, N]


def _sparsify(w: np.ndarray, ratio: float, block: int, in_axis: int) -> np.ndarray:
    """Zero the `ratio` smallest weights (or blocks of `block` along the input axis)."""
    if block == 1:
        k = int(np.floor(ratio * w.size))
        if k == 0:
            return w.copy()
        flat = np.abs(w).reshape(-1)
        cut = np.argpartition(flat, k - 1)[:k]
        out = w.copy().reshape(-1)
        out[cut] = 0
        return out.reshape(w.shape)
    moved = np.moveaxis(w, in_axis, -1)  # [..., K]
    k_in = moved.shape[-1]
    nb = -(-k_in // block)
    padded = np.zeros(moved.shape[:-1] + (nb * block,), w.dtype)
    padded[..., :k_in] = moved
    blocks = padded.reshape(moved.shape[:-1] + (nb, block))
    norms = np.sqrt((blocks.astype(np.float64) ** 2).sum(-1)).reshape(-1)
    k = int(np.floor(ratio * norms.size))
    if k == 0:
        return w.copy()
    keep = np.ones(norms.size, bool)
    keep[np.argpartition(norms, k - 1)[:k]] = False
    blocks = blocks * keep.reshape(blocks.shape[:-1] + (1,))
    out = blocks.reshape(padded.shape)[..., :k_in]
    return np.ascontiguousarray(np.moveaxis(out, -1, in_axis)).astype(w.dtype)
