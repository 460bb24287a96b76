"""Structured channel pruning (pass `prune`) on the ONNX graph, with optional least-squares reconstruction.

The pass removes whole output channels of Conv/Gemm/MatMul layers and everything that
depends on them (BN parameters, per-channel constants, depthwise convs, the input
channels of consumer layers, Reshape constants, Gemm features after a Flatten), so the
model really gets smaller and faster — no masks. Coupled channels (residual adds,
depthwise chains, concatenations) are found by `passes._channels` and removed together.

Without fine-tuning, pruning loses accuracy; with samples (``PassContext.samples``) the
pass re-fits every consumer layer by least squares so that its output matches the
unpruned model's (He et al. 2017), which recovers much of it: first each layer on the
original model's inputs, then layer by layer on the pruned model's own inputs, as a ridge
regression towards the original weights (layers that see fewer rows than features, e.g.
a classifier after global pooling, only get their bias re-fitted). Without samples, the
expected value of every removed channel — a Gaussian model fed by the BatchNorm
statistics, pushed through ReLU/Clip/Add/pooling — is added to the consumers' biases.
Channel importance: L1/L2 norm of the BN-folded filter, BN scale, or activations on the
samples; scores are normalized per layer and summed over coupled layers.

Widths: by default the kept channel count of every group is rounded to a multiple of
onnxruntime's NCHWc block on this CPU (8 with AVX2, 16 with AVX-512; probed the way pass
`ort-nchwc` does), because other widths fall off its blocked kernels and can make a
pruned model slower than its input (MobileNetV2 at 0.3: 0.95x exact, 1.74x rounded, see
benchmarks/results/prune.md). `round_to=N` overrides, `round_to=1` keeps exact ratios.
`scope=sensitivity` (passes/_sensitivity.py) measures each group's output error on the
samples and spends the budget (the uniform ratio's MACs, or `macs=`) where it hurts least.
Fine-tuning is pass `distill` (passes/distill), run after this one.

Verification budget: pruning without fine-tuning is lossy by design, so the default
budget is loose: ``cosine >= 0.5`` between original and pruned outputs. It is meant to
separate "degraded" from "destroyed", and it is only meaningful on real inputs (give the
verifier samples). Measured on the trained digits CNN (models/digits_cnn.onnx), mean
cosine of the logits on real test images: without reconstruction 0.15 at ratio 0.3
(accuracy 98% -> 9%: rejected, rightly), with reconstruction 0.97 at 0.3 and 0.88 at 0.5
(accuracy 95% / 87%: accepted). On random inputs the same models score 0.26-0.78, so
without samples expect rejections. Override with ``min_cosine`` / ``max_rel_l2`` /
``min_top1``; accuracy itself must be measured on labelled data. The structural rewrite
is exact and checkable on its own: ``mask_only=true`` produces the reference the pruned
model must equal (consumer weights of the removed channels zeroed instead of removed).
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import GraphoptError, Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.ir import fresh_namer, toposort
from graphopt.pipeline import budget_options

from ._budget import layer_errors
from ._calibrate import session_with_outputs
from ._channels import Analysis, Sink, analyze, compress, infer_shapes, read_constant, skeleton

log = logging.getLogger(__name__)

DEFAULT_MIN_COSINE = 0.5


@register_pass("prune")
class ChannelPrune(Pass):
    """Structured channel pruning of Conv/Gemm/MatMul with coupled-channel analysis and least-squares reconstruction."""

    contract = "lossy"
    budget = {"cosine": DEFAULT_MIN_COSINE}
    options = {
        "ratio": Option(float, 0.3, "fraction of channels removed from every prunable group"),
        "scope": Option(str, "uniform", "uniform: each group loses `ratio`; global: rank normalized "
                        "scores across all groups and remove `ratio` of all channels; sensitivity: measure "
                        "each group's output error on the samples at a few widths and spend the budget "
                        "(the MACs a uniform `ratio` saves, or `macs`) where it costs least accuracy",
                        ("uniform", "global", "sensitivity")),
        "macs": Option(float, 0.0, "scope=sensitivity: keep about this fraction of the prunable layers' MACs "
                       "(0: the MACs a uniform `ratio` keeps)"),
        "layer_ratios": Option(list, [], "per-layer ratios as pattern:ratio items (fnmatch on node names, "
                               "e.g. conv1:0.5); a coupled group takes the first pattern matching one of its layers"),
        "criterion": Option(str, "l1", "channel importance: l1/l2 filter norm, bn scale, or activation "
                            "(mean |activation| on samples times the consumer's weight norm)",
                            ("l1", "l2", "bn", "activation")),
        "min_channels": Option(int, 1, "keep at least this many channels per layer"),
        "round_to": Option(int, 0, "round kept channel counts to a multiple of this; 0 (default): the "
                           "NCHWc block of this CPU's onnxruntime (8 with AVX2, 16 with AVX-512; 1 where it "
                           "has none), so that pruned layers stay on its fast kernels; 1: exact ratios"),
        "exclude": Option(list, [], "node-name patterns whose output channels are never pruned"),
        "reconstruct": Option(bool, True, "with samples, re-fit consumer layers by least squares"),
        "reconstruct_rounds": Option(int, 2, "1: fit every layer on the original model's inputs; 2: then "
                                     "refit layer by layer on the pruned model's own inputs (one "
                                     "onnxruntime run per depth level)"),
        "compensate": Option(bool, True, "without samples: add the expected value of removed channels, "
                             "estimated from BatchNorm statistics, to the consumers' biases"),
        "mask_only": Option(bool, False, "remove nothing: zero the consumer weights that read the channels "
                            "that would be removed (the exact reference a pruned model must match)"),
        "max_samples": Option(int, 64, "at most this many samples are used for activations/reconstruction"),
        **budget_options(budget),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        if not 0.0 <= self.ratio < 1.0:
            raise GraphoptError(f"pass 'prune': ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.macs < 1.0:
            raise GraphoptError(f"pass 'prune': macs must be in (0, 1) (0: unset), got {self.macs}")
        if self.min_channels < 1 or self.round_to < 0:
            raise GraphoptError("pass 'prune': min_channels must be >= 1 and round_to >= 0")
        self.layer_ratio_rules = []
        for item in self.layer_ratios:
            text = str(item)
            cut = max(text.rfind(":"), text.rfind("="))
            pattern, sep, value = (text[:cut], text[cut], text[cut + 1:]) if cut >= 0 else ("", "", text)
            try:
                r = float(value)
            except ValueError:
                r = -1.0
            if not sep or not pattern or not 0.0 <= r < 1.0:
                raise GraphoptError(f"pass 'prune': layer_ratios item {item!r} is not pattern:ratio with ratio in [0, 1)")
            self.layer_ratio_rules.append((pattern, r))

    # ------------------------------------------------------------------------------ run
    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        toposort(graph)
        original_proto = model.to_onnx()
        shapes = infer_shapes(original_proto, ctx.input_shapes)
        an = analyze(graph, shapes, model.opset() or 13)
        if not an.roots:
            return PassResult(False, {"layers": 0, "reason": "no prunable Conv/Gemm/MatMul"})
        samples = (ctx.samples or [])[: self.max_samples]
        if self.criterion == "activation" and not samples:
            raise GraphoptError("criterion=activation needs samples (--samples)")
        if self.scope == "sensitivity" and not samples:
            raise GraphoptError("scope=sensitivity needs samples (--samples)")

        comp = an.components()
        blocked = an.blocked_components(comp)
        groups = _groups(an, comp)
        collector = None
        sinks_needed = self.criterion == "activation" or (self.reconstruct and samples)
        if sinks_needed and samples and an.sinks:
            collector = _Collector(original_proto, an, samples, ctx.seed)
        scores = self._element_scores(an, collector)
        self._sensitivity_input = (original_proto, samples, ctx.seed)
        keep_comp = self._select(an, comp, blocked, groups, scores)
        _keep_nonempty(an, comp, keep_comp, scores)

        removed = {}
        root_before = {}
        for r in an.roots:
            mask = keep_comp[comp[r.elems]]
            root_before[r.node.name] = len(mask)
            if not mask.all():
                removed[r.node.name] = int((~mask).sum())
        stats = {
            "layers": len(an.roots),
            "groups": len(groups),
            "layers_pruned": len(removed),
            "channels_before": int(sum(root_before.values())),
            "channels_removed": int(sum(removed.values())),
            "blocked_channels": int(sum(int(np.isin(comp[r.elems], list(blocked)).sum()) for r in an.roots)),
            "blocked_by": dict(an.reasons.most_common(8)),
            "width_multiple": self.width_multiple(),
            # chosen widths: output channels kept per pruned layer (before -> after)
            "widths": {name: f"{n} -> {n - removed[name]}" for name, n in root_before.items() if name in removed},
        }
        if self.scope == "sensitivity":
            stats["sensitivity"] = self.sensitivity_report
        if not removed:
            return PassResult(False, stats)

        masks = {name: keep_comp[comp[lay.elems]] for name, lay in an.layouts.items()}
        fresh = fresh_namer(graph)

        def namer(base: str) -> str:  # names of new constants
            name = fresh(base)
            if model.ir_version < 4 or model.initializer_inputs:
                model.initializer_inputs.append(name)  # IR < 4: initializers are graph inputs
            return name

        if self.mask_only:
            for s in an.sinks:
                mask = masks[s.tensor]
                if not mask.all():
                    w = np.array(s.weight.get())
                    index = [slice(None)] * w.ndim
                    index[s.axis] = ~mask
                    w[tuple(index)] = 0
                    s.weight.set(w, namer)
            return PassResult(True, stats)
        weight_producers = [sl.ref.tensor.inputs[0] for sl in an.slices
                            if isinstance(sl.ref.tensor, gs.Variable) and len(sl.ref.tensor.inputs) == 1]
        use_samples = self.reconstruct and samples and collector is not None
        deltas = _mean_compensation(an, masks) if self.compensate and not use_samples else {}
        orig_weights = {id(s): s.weight.get() for s in an.sinks}
        orig_biases = {id(s): _bias_of(s) for s in an.sinks}
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
            if id(s) in deltas:
                _add_bias(s, deltas[id(s)], masks, namer)
        if deltas:
            stats["compensated"] = len(deltas)
        _refresh_shapes(graph, an, masks)
        _drop_orphans(graph, weight_producers)

        if self.reconstruct and samples and collector is not None:
            rec = _Reconstructor(an, masks, collector, orig_weights, orig_biases, namer)
            stats["reconstructed"] = rec.fit_round(None)
            if self.reconstruct_rounds > 1:
                # He et al.: refit each layer on the inputs the *pruned* model really feeds
                # it (upstream errors included), level by level so that every refit sees
                # its already-refitted predecessors.
                for level in rec.levels(graph):
                    rec.fit_round(_Collector(model.to_onnx(), an, samples, ctx.seed, positions=collector.positions,
                                             tensors={s.tensor for s in level}), only={id(s) for s in level})
        elif self.reconstruct and not samples:
            stats["reconstructed"] = 0
            log.info("prune: no samples given, skipping least-squares reconstruction")
        if _is_valid(original_proto):
            _check(model)  # the input was valid: the output must be too
        from .quantize import generate_samples

        feed = samples[0] if samples else generate_samples(original_proto, ctx, 1)[0]
        stats["per_layer_error"] = layer_errors(original_proto, model.to_onnx(),
                                                {k: np.asarray(v) for k, v in feed.items()})
        return PassResult(True, stats)

    # ------------------------------------------------------------------------ importance
    def _element_scores(self, an: Analysis, collector: "_Collector | None") -> np.ndarray:
        n = len(an.parent)
        scores = np.full(n, np.nan)
        if self.criterion == "bn":
            for sl in an.slices:
                node = sl.ref.node
                if node.op == "BatchNormalization" and sl.ref.index == 1:
                    gamma = np.abs(sl.ref.get().astype(np.float64))
                    lay = an.layouts[sl.tensor]
                    _assign(scores, lay.elems, gamma / max(gamma.mean(), 1e-12))
        if self.criterion == "activation" and collector is not None:
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
            norm = np.sqrt((w ** 2).sum(axis=axes)) if self.criterion == "l2" else np.abs(w).sum(axis=axes)
            norm = norm * _bn_scale(r.node)
            scores[r.elems] = norm / max(norm.mean(), 1e-12)
        return np.nan_to_num(scores, nan=0.0)

    # ------------------------------------------------------------------------ selection
    def _group_ratio(self, group_roots) -> float:
        for pattern, r in self.layer_ratio_rules:
            if any(fnmatch.fnmatchcase(root.node.name or "", pattern) for root in group_roots):
                return r
        return self.ratio

    def width_multiple(self) -> int:
        """The multiple kept channel counts are rounded to: `round_to`, or (0) the NCHWc
        block onnxruntime uses on this CPU, probed the way pass `ort-nchwc` does."""
        if self.round_to:
            return self.round_to
        from .nchwc import probe_block_size

        return probe_block_size() or 1

    def _select(self, an: Analysis, comp: np.ndarray, blocked: set[int], groups, scores) -> np.ndarray:
        keep = np.ones(len(an.parent), bool)
        multiple = self.width_multiple()
        unit_score = np.zeros(len(an.parent))
        np.add.at(unit_score, comp, scores)
        plans = []
        for roots in groups:
            if any(any(fnmatch.fnmatchcase(r.node.name or "", p) for p in self.exclude) for r in roots):
                continue
            units = sorted({int(c) for r in roots for c in comp[r.elems]} - blocked)
            if not units:
                continue
            fixed = max(int(np.isin(comp[r.elems], list(blocked)).sum()) for r in roots)
            smallest = min(len(r.elems) for r in roots)
            plans.append((roots, np.array(units), fixed, smallest))
        if self.scope == "global":
            # Normalize per group so that groups of different scales compare; then remove
            # the globally weakest units, group minimums permitting.
            allu, owner = [], []
            for gi, (roots, units, fixed, smallest) in enumerate(plans):
                s = unit_score[units]
                allu.append(s / max(s.mean(), 1e-12))
                owner.append(np.full(len(units), gi))
            if not allu:
                return keep
            flat, own = np.concatenate(allu), np.concatenate(owner)
            budget = int(round(self.ratio * len(flat)))
            order = np.argsort(flat, kind="stable")
            count = np.zeros(len(plans), int)
            for j in order[:budget]:
                count[own[j]] += 1
            targets = [len(p[1]) - count[gi] for gi, p in enumerate(plans)]
        elif self.scope == "sensitivity":
            from ._sensitivity import allocate

            proto, samples, seed = self._sensitivity_input
            targets, self.sensitivity_report = allocate(
                proto, an, comp, plans, unit_score, samples, self.ratio, self.macs, multiple,
                max(self.min_channels, 1), seed)
        else:
            targets = [len(p[1]) - int(np.floor(self._group_ratio(p[0]) * len(p[1]) + 1e-9))
                       if self._group_ratio(p[0]) > 0 else len(p[1]) for p in plans]
        for (roots, units, fixed, smallest), target in zip(plans, targets):
            n = len(units)
            kept = max(target, self.min_channels - fixed, 1 if fixed == 0 else 0)
            if multiple > 1:
                total = kept + fixed
                total = max(multiple, int(round(total / multiple)) * multiple)
                kept = total - fixed
            kept = min(max(kept, 0), n)
            if kept >= n:
                continue
            order = np.argsort(unit_score[units], kind="stable")
            keep[units[order[: n - kept]]] = False
        return keep


# ------------------------------------------------------------------------------ helpers


def _keep_nonempty(an: Analysis, comp: np.ndarray, keep: np.ndarray, scores: np.ndarray) -> None:
    """Tensors that must not lose all channels (Split outputs) keep their best unit."""
    unit_score = np.zeros(len(an.parent))
    np.add.at(unit_score, comp, scores)
    for name in an.nonempty:
        units = comp[an.layouts[name].elems]
        if not keep[units].any():
            keep[units[np.argmax(unit_score[units])]] = True


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


def _mean_compensation(an: Analysis, masks) -> dict:
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
    const = gs.Constant(namer((node.name or node.op) + "_bias"), np.asarray(bias, dtype=dtype))
    if len(node.inputs) > 2 and node.inputs[2].name:
        node.inputs[2] = const
    else:
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(const)


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


def _groups(an: Analysis, comp: np.ndarray):
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


def _matmul_bias(node: gs.Node):
    """(Add node, input index) when a MatMul's only consumer adds a constant bias vector
    of its output width that nothing else reads; else None."""
    y = node.outputs[0]
    if len(y.outputs) != 1 or y.outputs[0].op != "Add":
        return None
    add = y.outputs[0]
    idx = 1 if add.inputs[0] is y else 0
    c = add.inputs[idx]
    n = node.inputs[1].values.shape[-1] if isinstance(node.inputs[1], gs.Constant) else None
    if not isinstance(c, gs.Constant) or len(c.outputs) != 1 or c.values.size != n or c.values.shape[-1] != n:
        return None
    return add, idx


def _bias_of(s: Sink):
    node = s.node
    if len(node.inputs) > 2 and node.inputs[2].name:
        v = read_constant(node.inputs[2])
        return None if v is None else np.array(v)
    return None


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


def _is_valid(proto: onnx.ModelProto) -> bool:
    proto = skeleton(proto)
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception:
        return False
    return True


def _check(model: Model) -> None:
    proto = skeleton(model.to_onnx())
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:  # a broken rewrite is a bug of this pass: say so clearly
        raise GraphoptError(f"pruned model is invalid: {str(e).strip().splitlines()[0]}") from e


# ------------------------------------------------------------------------------ data


class _Collector:
    """Runs a model on samples with sink inputs exposed as outputs; keeps per-channel
    mean |x| and, per sink, a fixed random subset of im2col rows."""

    MAX_ROWS = 8192
    MAX_FLOATS = 250_000_000

    def __init__(self, proto: onnx.ModelProto, an: Analysis, samples, seed: int,
                 positions=None, masks=None, tensors=None):
        sinks = [s for s in an.sinks if tensors is None or s.tensor in tensors]
        names = sorted({s.tensor for s in sinks})
        sess = session_with_outputs(proto, names, threads=0)  # 0: onnxruntime's default
        rng = np.random.default_rng(seed)
        self.channel_mean_abs: dict[str, np.ndarray] = {}
        self.positions = positions if positions is not None else {}
        self.rows: dict[int, list[np.ndarray]] = {id(s): [] for s in sinks}
        sums: dict[str, np.ndarray] = {}
        counts: Counter = Counter()
        feats = {id(s): int(np.prod(s.weight.get().shape) // max(s.weight.get().shape[0 if s.axis == 1 else 1], 1))
                 for s in sinks}
        budget = {k: int(np.clip(4 * f, 2048, self.MAX_ROWS)) for k, f in feats.items()}
        total = sum(budget[k] * feats[k] for k in budget)
        if total > self.MAX_FLOATS:  # keep the stored rows under ~1 GB
            budget = {k: max(256, int(v * self.MAX_FLOATS / total)) for k, v in budget.items()}
        feed_list = list(_feeds(sess, samples))
        for si, feeds in enumerate(feed_list):
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            for n in names:
                x = np.asarray(outs[n], dtype=np.float64)
                lay = an.layouts[n]
                axes = tuple(i for i in range(x.ndim) if i != lay.axis)
                s = np.abs(x).sum(axis=axes)
                if n in sums and sums[n].shape == s.shape:
                    sums[n] += s
                else:
                    sums[n] = s
                counts[n] += int(np.prod([x.shape[i] for i in axes]))
            for s in sinks:
                x = outs[s.tensor]
                key = (id(s), si)
                if key not in self.positions:
                    per_sample = max(1, budget[id(s)] // max(len(feed_list), 1))
                    self.positions[key] = _draw_positions(s, x, per_sample, rng)
                pos = self.positions[key]
                if pos is None:
                    continue
                self.rows[id(s)].append(_gather_rows(s, x, pos))
        self.channel_mean_abs = {n: sums[n] / max(counts[n], 1) for n in sums}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def _feeds(sess, samples):
    """Feeds for each sample: cast to the input's dtype; a sample batch larger than a
    fixed model batch is split into model-sized chunks (in order, deterministic)."""
    inputs = sess.get_inputs()
    for sample in samples:
        arrays = {}
        for i in inputs:
            if i.name not in sample:
                raise GraphoptError(f"sample lacks input '{i.name}'")
            v = np.asarray(sample[i.name])
            dtype = _ORT_TYPES.get(i.type)
            arrays[i.name] = v.astype(dtype) if dtype is not None and v.dtype != dtype else v
        fixed = {i.name: i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
        first = next(iter(arrays.values()))
        batch = fixed.get(inputs[0].name)
        if batch and first.ndim and first.shape[0] > batch and first.shape[0] % batch == 0 and len(fixed) == len(inputs):
            for start in range(0, first.shape[0], batch):
                yield {k: v[start:start + batch] for k, v in arrays.items()}
        else:
            yield arrays


def _conv_geometry(node: gs.Node, x_shape, w_shape):
    k = list(w_shape[2:])
    nd = len(k)
    strides = list(node.attrs.get("strides", [1] * nd))
    dil = list(node.attrs.get("dilations", [1] * nd))
    pads = list(node.attrs.get("pads", [0] * (2 * nd)))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    spatial = list(x_shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - spatial[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    out = [(spatial[i] + pads[i] + pads[i + nd] - (k[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    return k, strides, dil, pads, out


def _draw_positions(s: Sink, x: np.ndarray, n: int, rng):
    if s.kind == "conv":
        if x.ndim != 4:
            return None  # reconstruction supports 2-D convolutions
        w_shape = s.weight.get().shape
        k, strides, dil, pads, out = _conv_geometry(s.node, x.shape, w_shape)
        total = x.shape[0] * out[0] * out[1]
        idx = rng.choice(total, size=min(n, total), replace=False)
        b, rem = np.divmod(idx, out[0] * out[1])
        oh, ow = np.divmod(rem, out[1])
        return (b, oh, ow)
    rows = int(np.prod(x.shape[:-1])) if s.kind == "matmul" else x.shape[0]
    return rng.choice(rows, size=min(n, rows), replace=False)


def _gather_rows(s: Sink, x: np.ndarray, pos) -> np.ndarray:
    """Input rows of the sink at the drawn positions: im2col patches for a Conv
    ([R, C*kh*kw], weight order), feature rows for Gemm/MatMul ([R, K])."""
    if s.kind == "conv":
        w_shape = s.weight.get().shape
        k, strides, dil, pads, out = _conv_geometry(s.node, x.shape, w_shape)
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        b, oh, ow = pos
        cols = np.empty((len(b), x.shape[1], k[0], k[1]), dtype=np.float32)
        for i in range(k[0]):
            for j in range(k[1]):
                cols[:, :, i, j] = xp[b, :, oh * strides[0] + i * dil[0], ow * strides[1] + j * dil[1]]
        return cols.reshape(len(b), -1)
    flat = x.reshape(-1, x.shape[-1]) if s.kind == "matmul" else x
    return np.asarray(flat[pos], dtype=np.float32)


class _Reconstructor:
    """Least-squares re-fit of sink layers (He et al. 2017, without the LASSO step: the
    channels are chosen by the importance criterion)."""

    MAX_FEATURES = 6000
    RIDGE = 1e-2
    MIN_ROWS_PER_FEATURE = 2

    def __init__(self, an: Analysis, masks, collector: _Collector, orig_w, orig_b, namer):
        self.an, self.masks, self.namer = an, masks, namer
        self.targets: dict[int, np.ndarray] = {}
        self.priors: dict[int, tuple] = {}
        self.sinks = []
        for s in an.sinks:
            in_mask = masks[s.tensor]
            rows = collector.rows.get(id(s))
            if in_mask.all() or not rows:
                continue
            w = orig_w[id(s)].astype(np.float64)
            x_full = np.concatenate(rows)
            if s.kind == "conv":
                w2 = w.reshape(w.shape[0], -1)  # [Cout, Cin*k]
            elif s.kind == "gemm":
                w2 = w if s.axis == 1 else w.T  # [N, K]
            else:
                w2 = w.T
            alpha = float(s.node.attrs.get("alpha", 1.0)) if s.kind == "gemm" else 1.0
            beta = float(s.node.attrs.get("beta", 1.0)) if s.kind == "gemm" else 1.0
            y = alpha * (x_full.astype(np.float64) @ w2.T)
            b = orig_b[id(s)]
            if b is not None:
                y = y + beta * np.broadcast_to(b.reshape(-1), y.shape[1:])
            out_mask = masks.get(s.node.outputs[0].name)
            if out_mask is not None and not out_mask.all():
                y = y[:, out_mask]
            if s.kind == "conv":
                feat_mask = np.repeat(in_mask, int(np.prod(w.shape[2:])))
            else:
                feat_mask = in_mask
            if int(feat_mask.sum()) > self.MAX_FEATURES:
                log.info("prune: %s has too many features for reconstruction; skipped", s.node.name)
                continue
            self.targets[id(s)] = y
            # Prior: the original weights on the kept inputs/outputs (and bias). The fit is
            # a ridge regression *towards* them, so that directions the samples do not
            # cover (few rows, e.g. after a global pool) keep the original behaviour.
            w0 = alpha * w2[:, feat_mask]
            b0 = beta * np.broadcast_to(b.reshape(-1), (w2.shape[0],)) if b is not None else np.zeros(w2.shape[0])
            if out_mask is not None and not out_mask.all():
                w0, b0 = w0[out_mask], b0[out_mask]
            self.priors[id(s)] = (w0.T, b0)
            self.sinks.append((s, feat_mask, x_full[:, feat_mask]))

    def fitted_tensors(self) -> set[str]:
        return {s.tensor for s, _, _ in self.sinks}

    def levels(self, graph: gs.Graph) -> list[list[Sink]]:
        """The fitted sinks grouped by depth: a sink's input depends only on sinks of
        lower levels."""
        by_node = {id(s.node): s for s, _, _ in self.sinks}
        level: dict[str, int] = {}
        out: dict[int, list[Sink]] = {}
        for node in graph.nodes:  # topological order
            lv = max((level.get(t.name, 0) for t in node.inputs), default=0)
            s = by_node.get(id(node))
            if s is not None:
                lv += 1
                out.setdefault(lv, []).append(s)
            for t in node.outputs:
                level[t.name] = lv
        return [out[k] for k in sorted(out)]

    def fit_round(self, collector: _Collector | None, only: set | None = None) -> int:
        fitted = 0
        for s, feat_mask, x_orig in self.sinks:
            if only is not None and id(s) not in only:
                continue
            if collector is None:
                x = x_orig
            else:
                rows = collector.rows.get(id(s))
                if not rows:
                    continue
                x = np.concatenate(rows)
            y = self.targets[id(s)]
            if x.shape[0] != y.shape[0]:
                continue
            if self._fit(s, x, y):
                fitted += 1
        return fitted

    def _fit(self, s: Sink, x: np.ndarray, y: np.ndarray) -> bool:
        node = s.node
        bias_add = _matmul_bias(node) if s.kind == "matmul" else None
        use_bias = s.kind in ("conv", "gemm") or bias_add is not None
        x = x.astype(np.float64)
        a = np.hstack([x, np.ones((x.shape[0], 1))]) if use_bias else x
        w0, b0 = self.priors[id(s)]
        prior = np.vstack([w0, b0[None]]) if use_bias else w0
        if x.shape[0] < self.MIN_ROWS_PER_FEATURE * a.shape[1]:
            # Too few rows (a classifier after a global pool, squeeze-excite convs: one
            # row per sample): a full fit would memorize the samples. Keep the weights
            # and re-fit only the bias (mean compensation of the removed channels).
            if not use_bias:
                return False
            sol = prior.copy()
            sol[-1] = (y - x @ w0).mean(axis=0)
        else:
            # Ridge regression towards the prior (the original weights on the kept inputs).
            ata = a.T @ a
            lam = self.RIDGE * max(np.trace(ata) / ata.shape[0], 1e-12)
            ata[np.diag_indices_from(ata)] += lam
            try:
                sol = np.linalg.solve(ata, a.T @ y + lam * prior)  # [F(+1), Cout]
            except np.linalg.LinAlgError:
                return False
        wmat, bias = (sol[:-1].T, sol[-1]) if use_bias else (sol.T, None)
        cur = s.weight.get()
        dtype = cur.dtype
        if s.kind == "conv":
            new_w = wmat.reshape(cur.shape)
        elif s.kind == "gemm":
            alpha = float(node.attrs.get("alpha", 1.0)) or 1.0
            wmat = wmat / alpha
            new_w = wmat if s.axis == 1 else wmat.T
        else:
            new_w = wmat.T
        if new_w.shape != cur.shape:
            return False
        s.weight.set(new_w.astype(dtype), self.namer)
        if bias is not None and bias_add is not None:
            add, idx = bias_add  # MatMul -> Add(const): the intercept shifts that bias
            old = np.asarray(add.inputs[idx].values)
            add.inputs[idx].values = (old + bias.reshape(old.shape)).astype(old.dtype)
        elif bias is not None:
            if s.kind == "gemm":
                beta = float(node.attrs.get("beta", 1.0))
                if beta == 0.0:
                    node.attrs["beta"] = 1.0
                    beta = 1.0
                bias = bias / beta
            bias_c = gs.Constant(self.namer((node.name or node.op) + "_bias"), bias.astype(dtype))
            if len(node.inputs) > 2 and node.inputs[2].name:
                node.inputs[2] = bias_c
            else:
                while len(node.inputs) < 2:
                    node.inputs.append(gs.Variable.empty())
                node.inputs.append(bias_c)
        return True
