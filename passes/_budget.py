"""Judging a lossy rewrite against its error budget while a pass searches (quant, fp16).

`excess(budget, ref, got)` says how far a candidate's outputs are from breaking the
budget: at most 1.0 means every metric holds. Metrics follow graphopt.verify.contracts:
rel_l2 (worst over samples and outputs, at most), cosine (worst, at least) and top1
(argmax agreement over the last axis pooled over all samples, at least).
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify.contracts import cosine, rel_l2, top1_agreement

_TINY = 1e-12


def excess(budget: dict[str, float], ref: list[list], got: list[list]) -> float:
    """max over metrics of (shortfall / allowed shortfall); inf on NaN/inf mismatches."""
    worst = 0.0
    agree = rows = 0
    for outs_a, outs_b in zip(ref, got):
        for a, b in zip(outs_a, outs_b):
            a, b = np.asarray(a), np.asarray(b)
            if not np.issubdtype(a.dtype, np.floating):
                continue
            fa, fb = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
            if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
                if np.array_equal(fa, fb, equal_nan=True):
                    continue
                return float("inf")
            for metric, bound in budget.items():
                if metric == "rel_l2":
                    worst = max(worst, rel_l2(fa, fb) / max(bound, _TINY))
                elif metric == "cosine":
                    worst = max(worst, (1.0 - cosine(fa, fb)) / max(1.0 - bound, _TINY))
                elif metric == "top1":
                    pair = top1_agreement(a, b)
                    if pair is not None:
                        agree += pair[0]
                        rows += pair[1]
    if "top1" in budget and rows:
        worst = max(worst, (1.0 - agree / rows) / max(1.0 - budget["top1"], _TINY))
    return worst


def describe(budget: dict[str, float]) -> str:
    return ", ".join(f"{m} {'<=' if m == 'rel_l2' else '>='} {v:g}" for m, v in budget.items())


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm")


def layer_errors(ref: onnx.ModelProto, new: onnx.ModelProto, feeds: dict,
                 max_layers: int = 64) -> dict[str, float]:
    """Relative L2 error of each layer's output (Conv/Gemm/MatMul, in execution order) of
    `new` against `ref` on one input, for tensors both models have under the same name and
    shape: where a lossy rewrite loses accuracy. Best effort: {} if a model cannot run."""
    def layers(m):
        return [(n.name or n.output[0], n.output[0]) for n in m.graph.node
                if n.op_type in LAYER_OPS and n.output and n.output[0]]

    ref_layers = layers(ref)
    new_outputs = {t for n in new.graph.node for t in n.output}
    picked = [(name, t) for name, t in ref_layers if t in new_outputs][:max_layers]
    if not picked:
        return {}

    from ._calibrate import session_with_outputs

    names = [t for _, t in picked]

    def run(m):
        return dict(zip(names, session_with_outputs(m, names).run(names, feeds)))

    try:
        a, b = run(ref), run(new)
    except Exception as e:  # informative only: never fail a pass over it
        import logging
        logging.getLogger(__name__).debug("per-layer error: %s", e)
        return {}
    out = {}
    for name, t in picked:
        x, y = np.asarray(a[t], np.float64), np.asarray(b[t], np.float64)
        if x.shape != y.shape or not np.isfinite(x).all() or not np.isfinite(y).all():
            continue
        den = float(np.linalg.norm(x))
        out[name] = round(float(np.linalg.norm(x - y)) / den, 6) if den > 0 else 0.0
    return out
