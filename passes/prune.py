"""Structured channel pruning (pass `prune`) on the ONNX graph, with optional least-squares reconstruction.

The pass removes whole output channels of Conv/Gemm/MatMul layers and everything that
depends on them (BN parameters, per-channel constants, depthwise convs, the input
channels of consumer layers, Reshape constants, Gemm features after a Flatten), so the
model really gets smaller and faster — no masks. Coupled channels (residual adds,
depthwise chains, concatenations) are found by the channel analysis and removed together.

The pass is spread over modules by responsibility; this one holds its options and run():

    _channels, _channels_ops   the channel analysis: records, and one rule per op
    _prune_select              importance scores, coupled groups, kept widths
    _sensitivity               scope=sensitivity: measured per-group errors, MAC budget
    _prune_rewrite             removing the channels; mean compensation without samples
    _prune_refit               least-squares reconstruction with samples

Long steps report counted progress (graphopt.progress): one step per group measured
(scope=sensitivity) and one per layer refit per reconstruction round.

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

import logging

import numpy as np

from graphopt import GraphoptError, Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.analysis.shapes import static_shapes
from graphopt.ir import fresh_namer, toposort
from graphopt.pipeline import budget_options
from graphopt.runtime import check, random_inputs

from ._budget import layer_errors
from ._channels_ops import analyze
from ._prune_refit import Collector, bias_of, reconstruct
from ._prune_rewrite import apply_masks, mean_compensation, zero_consumers
from ._prune_select import element_scores, groups_of, select

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


    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        toposort(graph)
        original_proto = model.to_onnx()
        an = analyze(graph, static_shapes(original_proto, ctx.input_shapes), model.opset() or 13)
        if not an.roots:
            return PassResult(False, {"layers": 0, "reason": "no prunable Conv/Gemm/MatMul"})
        samples = (ctx.samples or [])[: self.max_samples]
        if self.criterion == "activation" and not samples:
            raise GraphoptError("criterion=activation needs samples (--samples)")
        if self.scope == "sensitivity" and not samples:
            raise GraphoptError("scope=sensitivity needs samples (--samples)")

        comp = an.components()
        blocked = an.blocked_components(comp)
        groups = groups_of(an, comp)
        collector = None
        sinks_needed = self.criterion == "activation" or (self.reconstruct and samples)
        if sinks_needed and samples and an.sinks:
            collector = Collector(original_proto, an, samples, ctx.seed)
        scores = element_scores(an, self.criterion, collector)
        keep_comp, sensitivity = select(self, an, comp, blocked, groups, scores, self.width_multiple(),
                                        (original_proto, samples, ctx.seed))

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
        if sensitivity is not None:
            stats["sensitivity"] = sensitivity
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
            zero_consumers(an, masks, namer)
            return PassResult(True, stats)
        refit = self.reconstruct and samples and collector is not None
        deltas = mean_compensation(an, masks) if self.compensate and not refit else {}
        orig_weights = {id(s): s.weight.get() for s in an.sinks}
        orig_biases = {id(s): bias_of(s) for s in an.sinks}
        apply_masks(graph, an, masks, namer, deltas)
        if deltas:
            stats["compensated"] = len(deltas)
        if refit:
            stats["reconstructed"] = reconstruct(model, an, masks, collector, orig_weights, orig_biases, namer,
                                                 samples, ctx.seed, self.reconstruct_rounds)
        elif self.reconstruct and not samples:
            stats["reconstructed"] = 0
            log.info("prune: no samples given, skipping least-squares reconstruction")
        if check(original_proto, load=False, shapes=True) is None:
            reason = check(model.to_onnx(), load=False, shapes=True)
            if reason is not None:  # the input was valid: a broken output is a bug of this pass
                raise GraphoptError(f"pruned model is invalid: {reason}")
        feed = samples[0] if samples else random_inputs(original_proto, 1, seed=ctx.seed, shapes=ctx.input_shapes,
                                                        ranges=ctx.input_ranges)[0]
        stats["per_layer_error"] = layer_errors(original_proto, model.to_onnx(),
                                                {k: np.asarray(v) for k, v in feed.items()})
        return PassResult(True, stats)

    def width_multiple(self) -> int:
        """The multiple kept channel counts are rounded to: `round_to`, or (0) the NCHWc
        block onnxruntime uses on this CPU, probed the way pass `ort-nchwc` does."""
        if self.round_to:
            return self.round_to
        from .nchwc import probe_block_size

        return probe_block_size() or 1
