"""Which channels pass `prune` removes: importance scores and per-group widths.

Channels coupled by the analysis (passes/_channels.py) form units; roots whose units
overlap form groups that are pruned together. A channel's score is the L1/L2 norm of
its BN-folded filter, its BN scale, or (criterion=activation) its mean |activation| on
the samples times its consumer's weight norm, normalized per layer and summed over the
coupled layers. `select` turns scores into a kept-mask: each group loses `ratio`
(uniform, or per layer_ratios pattern), the globally weakest normalized units go
(scope=global), or the widths come from measured sensitivities (scope=sensitivity,
passes/_sensitivity.py); kept counts are rounded to the CPU's NCHWc block.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx_graphsurgeon as gs

from ._channels import Analysis, read_constant
from ._sensitivity import allocate


def groups_of(an: Analysis, comp: np.ndarray):
    """Roots whose channels are coupled (share a unit), as lists of roots."""
    parent = list(range(len(an.roots)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first = {}
    for i, r in enumerate(an.roots):
        for c in set(comp[r.elems].tolist()):
            if c in first:
                a, b = find(first[c]), find(i)
                if a != b:
                    parent[b] = a
            else:
                first[c] = i
    out: dict[int, list] = {}
    for i, r in enumerate(an.roots):
        out.setdefault(find(i), []).append(r)
    return list(out.values())


def element_scores(an: Analysis, criterion: str, collector) -> np.ndarray:
    """Importance of every channel element, normalized per layer (coupled layers' scores
    add up in their unit): L1/L2 norm of the BN-folded filter, BN scale, or mean
    |activation| on the samples times the consumer's weight norm."""
    n = len(an.parent)
    scores = np.full(n, np.nan)
    if criterion == "bn":
        for sl in an.slices:
            node = sl.ref.node
            if node.op == "BatchNormalization" and sl.ref.index == 1:
                gamma = np.abs(sl.ref.get().astype(np.float64))
                lay = an.layouts[sl.tensor]
                _assign(scores, lay.elems, gamma / max(gamma.mean(), 1e-12))
    if criterion == "activation" and collector is not None:
        acc = np.zeros(n)
        for s in an.sinks:
            stat = collector.channel_mean_abs.get(s.tensor)
            if stat is None:
                continue
            w = s.weight.get().astype(np.float64)
            axes = tuple(i for i in range(w.ndim) if i != s.axis)
            col = np.sqrt((w ** 2).sum(axis=axes))
            v = stat * col
            np.add.at(acc, an.layouts[s.tensor].elems, v / max(v.mean(), 1e-12))
        touched = np.zeros(n, bool)
        for s in an.sinks:
            if s.tensor in collector.channel_mean_abs:
                touched[an.layouts[s.tensor].elems] = True
        scores[touched] = acc[touched]
    for r in an.roots:
        if not np.isnan(scores[r.elems]).all():
            continue
        w = r.weight.get().astype(np.float64)
        axes = tuple(i for i in range(w.ndim) if i != r.axis)
        norm = np.sqrt((w ** 2).sum(axis=axes)) if criterion == "l2" else np.abs(w).sum(axis=axes)
        norm = norm * _bn_scale(r.node)
        scores[r.elems] = norm / max(norm.mean(), 1e-12)
    return np.nan_to_num(scores, nan=0.0)


def _group_ratio(opts, group_roots) -> float:
    for pattern, r in opts.layer_ratio_rules:
        if any(fnmatch.fnmatchcase(root.node.name or "", pattern) for root in group_roots):
            return r
    return opts.ratio


def select(opts, an: Analysis, comp: np.ndarray, blocked: set[int], groups, scores: np.ndarray,
           multiple: int, sensitivity_input=None) -> tuple[np.ndarray, dict | None]:
    """The kept-mask over union-find units and, for scope=sensitivity, its report.
    `opts` is the pass (its options: scope, ratio, macs, layer_ratio_rules, exclude,
    min_channels); kept counts are rounded to `multiple`; `sensitivity_input` is
    (original model, samples, seed) for scope=sensitivity."""
    keep = np.ones(len(an.parent), bool)
    report = None
    unit_score = np.zeros(len(an.parent))
    np.add.at(unit_score, comp, scores)
    plans = []
    for roots in groups:
        if any(any(fnmatch.fnmatchcase(r.node.name or "", p) for p in opts.exclude) for r in roots):
            continue
        units = sorted({int(c) for r in roots for c in comp[r.elems]} - blocked)
        if not units:
            continue
        fixed = max(int(np.isin(comp[r.elems], list(blocked)).sum()) for r in roots)
        smallest = min(len(r.elems) for r in roots)
        plans.append((roots, np.array(units), fixed, smallest))
    if opts.scope == "global":
        # Normalize per group so that groups of different scales compare; then remove
        # the globally weakest units, group minimums permitting.
        allu, owner = [], []
        for gi, (roots, units, fixed, smallest) in enumerate(plans):
            s = unit_score[units]
            allu.append(s / max(s.mean(), 1e-12))
            owner.append(np.full(len(units), gi))
        if not allu:
            return keep, None
        flat, own = np.concatenate(allu), np.concatenate(owner)
        budget = int(round(opts.ratio * len(flat)))
        order = np.argsort(flat, kind="stable")
        count = np.zeros(len(plans), int)
        for j in order[:budget]:
            count[own[j]] += 1
        targets = [len(p[1]) - count[gi] for gi, p in enumerate(plans)]
    elif opts.scope == "sensitivity":
        proto, samples, seed = sensitivity_input
        targets, report = allocate(
            proto, an, comp, plans, unit_score, samples, opts.ratio, opts.macs, multiple,
            max(opts.min_channels, 1), seed)
    else:
        targets = [len(p[1]) - int(np.floor(_group_ratio(opts, p[0]) * len(p[1]) + 1e-9))
                   if _group_ratio(opts, p[0]) > 0 else len(p[1]) for p in plans]
    for (roots, units, fixed, smallest), target in zip(plans, targets):
        n = len(units)
        kept = max(target, opts.min_channels - fixed, 1 if fixed == 0 else 0)
        if multiple > 1:
            total = kept + fixed
            total = max(multiple, int(round(total / multiple)) * multiple)
            kept = total - fixed
        kept = min(max(kept, 0), n)
        if kept >= n:
            continue
        order = np.argsort(unit_score[units], kind="stable")
        keep[units[order[: n - kept]]] = False
    _keep_nonempty(an, comp, keep, scores)
    return keep, report


def _keep_nonempty(an: Analysis, comp: np.ndarray, keep: np.ndarray, scores: np.ndarray) -> None:
    """Tensors that must not lose all channels (Split outputs) keep their best unit."""
    unit_score = np.zeros(len(an.parent))
    np.add.at(unit_score, comp, scores)
    for name in an.nonempty:
        units = comp[an.layouts[name].elems]
        if not keep[units].any():
            keep[units[np.argmax(unit_score[units])]] = True



def _bn_scale(node: gs.Node):
    """|gamma| / sqrt(var + eps) of a BatchNormalization that alone reads the node's output
    (the filter norm of the BN-folded layer is what matters), else 1."""
    y = node.outputs[0]
    if len(y.outputs) != 1 or y.outputs[0].op != "BatchNormalization":
        return 1.0
    bn = y.outputs[0]
    gamma, var = (read_constant(bn.inputs[i]) for i in (1, 4))
    if gamma is None or var is None:
        return 1.0
    eps = float(bn.attrs.get("epsilon", 1e-5))
    return np.abs(np.asarray(gamma, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps)


def _assign(scores: np.ndarray, elems: np.ndarray, values: np.ndarray) -> None:
    cur = scores[elems]
    scores[elems] = np.where(np.isnan(cur), values, np.maximum(cur, values))

