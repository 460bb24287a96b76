"""Sensitivity-aware per-group widths for pass `prune` (scope=sensitivity).

1. Sensitivity: for each coupled group, the output error of the model when only that
   group is pruned (its weakest channels removed, consumers' weights zeroed: what pruning
   without reconstruction computes) at about 25 %, 50 % and 75 % of its channels, on the
   samples. Error = 1 - cosine between the original and the pruned outputs, per sample
   row, averaged. One onnxruntime session serves all measurements: the consumer weights
   become graph inputs and each candidate feeds its zeroed copy.
2. Cost: MACs of every Conv/Gemm/MatMul (graphopt.analysis) scaled by the kept fraction
   of its output and input channels.
3. Allocation: greedy, one width step (the CPU's block, `multiple`) at a time, always
   the step with the least error added per MAC saved (errors of groups taken as
   additive, interpolated between the measured widths, no group cut past the largest
   measured cut), until the MACs are down to the budget: the MACs the uniform `ratio`
   keeps, or the fraction `macs` of the model's MACs.

Progress: one step per group measured ("prune: measuring group sensitivity").
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt import progress, runtime

log = logging.getLogger(__name__)

FRACTIONS = (0.25, 0.5, 0.75)
MAX_ROWS = 32


def _grid(n: int, fixed: int, multiple: int, min_keep: int) -> list[int]:
    """Kept unit counts k (k + fixed a multiple of `multiple`), ascending, ending with n."""
    lo = max(min_keep - fixed, 1 if fixed == 0 else 0)
    out = sorted({t - fixed for t in range(multiple, n + fixed + 1, multiple) if lo <= t - fixed < n})
    return out + [n]


def _uniform_kept(n, fixed, ratio, multiple, min_keep):
    kept = max(n - int(np.floor(ratio * n + 1e-9)), min_keep - fixed, 1 if fixed == 0 else 0)
    if multiple > 1:
        total = max(multiple, int(round((kept + fixed) / multiple)) * multiple)
        kept = total - fixed
    return min(max(kept, 0), n)


class _Probe:
    """One session of the original model with the consumer weights as inputs."""

    def __init__(self, proto: onnx.ModelProto, an, samples, seed):
        inits = {t.name: t for t in proto.graph.initializer}
        self.sinks = [s for s in an.sinks if s.weight.tensor.name in inits]
        names = sorted({s.weight.tensor.name for s in self.sinks})
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        keep = [t for t in m.graph.initializer if t.name not in names]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
        self.weights = {}
        for n in names:
            arr = numpy_helper.to_array(inits[n])
            self.weights[n] = arr
            m.graph.input.append(onnx.helper.make_tensor_value_info(n, inits[n].data_type, list(arr.shape)))
        self.sess = runtime.session(m, threads=1, optimize=True, log_level=3)
        feed_names = [i.name for i in self.sess.get_inputs() if i.name not in self.weights]
        self.feeds = []
        rows = 0
        for sample in samples:
            self.feeds.append({k: np.asarray(sample[k]) for k in feed_names})
            rows += len(next(iter(self.feeds[-1].values()))) if self.feeds[-1] else 1
            if rows >= MAX_ROWS:
                break
        self.ref = self._run(self.weights)
        self.runs = 0

    def _run(self, weights):
        return [self.sess.run(None, {**f, **weights}) for f in self.feeds]

    def error(self, keep_units: np.ndarray, an, comp) -> float:
        weights = dict(self.weights)
        for s in self.sinks:
            mask = keep_units[comp[an.layouts[s.tensor].elems]]
            if mask.all():
                continue
            name = s.weight.tensor.name
            w = np.array(weights[name])
            index = [slice(None)] * w.ndim
            index[s.axis] = ~mask
            w[tuple(index)] = 0
            weights[name] = w
        self.runs += 1
        errs = []
        for ref_outs, outs in zip(self.ref, self._run(weights)):
            for a, b in zip(ref_outs, outs):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
                    continue
                a2, b2 = a.reshape(len(a), -1) if a.ndim > 1 else a[None], b.reshape(len(b), -1) if b.ndim > 1 else b[None]
                den = np.maximum(np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1), 1e-12)
                errs.append(float(np.mean(1.0 - (a2 * b2).sum(1) / den)))
        return float(np.mean(errs)) if errs else 0.0


def _mac_model(proto, an, comp):
    """(per-node (macs, out unit ids, in unit ids), MACs outside the pruned layers)."""
    from graphopt.analysis import count_macs

    try:
        per_node = count_macs(proto, batch=1, strict=False).per_node
    except Exception as e:  # noqa: BLE001 - no cost model: channel counts instead
        log.info("prune: MACs unavailable (%s); sensitivity budget counts channels", e)
        per_node = {}
    nodes: dict[str, list] = {}
    for r in an.roots:
        nodes.setdefault(r.node.name, [float(per_node.get(r.node.name, len(r.elems))), None, None])[1] = comp[r.elems]
    for s in an.sinks:
        entry = nodes.setdefault(s.node.name, [float(per_node.get(s.node.name, 1.0)), None, None])
        entry[2] = comp[an.layouts[s.tensor].elems]
    rest = float(sum(v for k, v in per_node.items() if k not in nodes))
    return list(nodes.values()), rest


def _macs(nodes, rest, keep_units) -> float:
    total = rest
    for macs, out_u, in_u in nodes:
        f = macs
        if out_u is not None:
            f *= keep_units[out_u].mean()
        if in_u is not None:
            f *= keep_units[in_u].mean()
        total += f
    return total


def allocate(proto, an, comp, plans, unit_score, samples, ratio, macs, multiple, min_keep, seed):
    """Kept unit count per plan (same order as `plans`) and a report."""
    probe = _Probe(proto, an, samples, seed)
    n_all = len(an.parent)
    orders, grids, curves = [], [], []
    with progress.task("prune: measuring group sensitivity", len(plans)) as counted:
        for roots, units, fixed, _ in plans:
            order = units[np.argsort(unit_score[units], kind="stable")]
            grid = _grid(len(units), fixed, multiple, min_keep)
            cands = sorted({min(grid, key=lambda k: abs((len(units) - k) - f * len(units))) for f in FRACTIONS}
                           - {len(units)})
            points = [(0, 0.0)]
            for k in sorted(cands, reverse=True):
                keep = np.ones(n_all, bool)
                keep[order[: len(units) - k]] = False
                points.append((len(units) - k, probe.error(keep, an, comp)))
            orders.append(order)
            grids.append(grid)
            curves.append(points)
            counted.advance()

    def err(gi, removed):
        xs, ys = zip(*curves[gi])
        return float(np.interp(removed, xs, ys))

    nodes, rest = _mac_model(proto, an, comp)
    full = np.ones(n_all, bool)
    total = _macs(nodes, rest, full)
    if macs > 0:
        budget = macs * total
    else:
        uni = np.ones(n_all, bool)
        for (roots, units, fixed, _), order in zip(plans, orders):
            k = _uniform_kept(len(units), fixed, ratio, multiple, min_keep)
            uni[order[: len(units) - k]] = False
        budget = _macs(nodes, rest, uni)
    kept = [len(p[1]) for p in plans]
    keep = full.copy()
    current = total
    while current > budget:
        best = None
        for gi, (roots, units, fixed, _) in enumerate(plans):
            lower = [k for k in grids[gi] if k < kept[gi]]
            max_cut = curves[gi][-1][0]
            if not lower or len(units) - lower[-1] > max_cut:
                continue
            k = lower[-1]
            trial = keep.copy()
            trial[orders[gi][: len(units) - k]] = False
            saved = current - _macs(nodes, rest, trial)
            if saved <= 0:
                continue
            cost = err(gi, len(units) - k) - err(gi, len(units) - kept[gi])
            score = max(cost, 0.0) / saved
            if best is None or score < best[0]:
                best = (score, gi, k, trial)
        if best is None:
            log.info("prune: sensitivity budget not reached (no group can lose more within the measured widths)")
            break
        _, gi, k, keep = best
        kept[gi] = k
        current = _macs(nodes, rest, keep)
    report = {
        "model_runs": probe.runs,
        "macs_kept_estimate": round(current / max(total, 1e-12), 4),
        "macs_budget": round(budget / max(total, 1e-12), 4),
        "groups": {" + ".join(r.node.name for r in p[0][:2]) + (" ..." if len(p[0]) > 2 else ""):
                   {"kept": f"{k}/{len(p[1])}",
                    "error_when_removing": {str(x): round(y, 4) for x, y in curves[gi][1:]}}
                   for gi, (p, k) in enumerate(zip(plans, kept))},
    }
    return kept, report
