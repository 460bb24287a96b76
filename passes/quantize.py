"""INT8 quantization (pass `quant`): static QDQ and dynamic, cost- and accuracy-aware.

Static (QDQ): activations get QuantizeLinear/DequantizeLinear pairs with ranges from
calibration on real samples (PassContext.samples; generated inputs with a loud warning
otherwise); weights are int8 symmetric, per output channel when the opset allows it
(>= 13: the pass upgrades the opset with the onnx version converter when that succeeds
and verifies, else falls back to per-tensor); biases become int32 with scale
s_x * s_w so onnxruntime fuses DQ->Conv->Q into QLinearConv. A Relu/Clip after a
quantized op is folded into the op's output range (Q saturates exactly like the
activation when the zero point sits at the clip bound).

Dynamic: MatMul/Gemm with constant weights become
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale), the pattern onnxruntime
fuses into DynamicQuantizeMatMul.

Dynamic Conv: DynamicQuantizeLinear -> ConvInteger (int8 symmetric weights) -> Cast -> Mul
(per-channel scale) [-> Add(bias)].

mode=auto picks dynamic when the model's constant-weight MatMul/Gemm outnumber its
Conv (transformers), and always when there are no samples: static INT8 needs activation
ranges, and ranges calibrated on made-up inputs are not the model's; dynamic INT8
computes them at run time from each input (one logged line says so). With samples and
a Conv-dominated model: static.

Defaults, explained: uint8 asymmetric activations (the zero point can sit at 0 after a
Relu: no range wasted; x86 u8s8 kernels with VNNI), int8 symmetric per-channel weights
(zero point 0 keeps kernels fast), min-max calibration (no clipping; with a few dozen
samples percentile/entropy estimates are noisy).

Every candidate model is checked with onnx.checker and loaded in onnxruntime before it
is accepted. Then (option accuracy) the most sensitive nodes are kept in float until the
budget holds, and (option measure) candidate sets of quantized nodes are timed against
the FP32 model in a fixed order (passes/_timing: paired interleaved rounds, spinning off,
median and its 99% interval); INT8 is kept only when the whole interval clears
min_speedup, and an inconclusive measurement keeps the model float, so the verdict does
not flip with timing noise.
What was left in float and why is reported in the stats.

This module holds the pass (mode choice, opset upgrade, validation, accuracy search);
_qbuild builds the quantized models, _qregions makes the cost decision, _qunfuse splits
onnxruntime's fused ops first, _lossy holds what quant shares with fp16.
"""

from __future__ import annotations

import logging

import onnx

from graphopt import GraphoptError, Model, Option, Pass, PassContext, PassResult, register_pass, runtime
from graphopt.pipeline import budget_options

from . import _lossy, _qregions
from ._budget import describe, excess, layer_errors
from ._lossy import output_error, outputs
from ._qbuild import DEFAULT_OPS, Builder
from ._qunfuse import unfuse_ort

log = logging.getLogger(__name__)


@register_pass("quant")
class Quantize(Pass):
    """INT8 quantization: static QDQ (calibrated) or dynamic (MatMul-heavy models), never slower."""

    contract = "lossy"
    budget = {"rel_l2": 0.1}
    options = {
        "mode": Option(str, "auto", "static, dynamic or auto", ("auto", "static", "dynamic")),
        "method": Option(str, "minmax", "activation calibration", ("minmax", "percentile", "entropy")),
        "percentile": Option(float, 99.99, "percentile for method=percentile"),
        "per_channel": Option(bool, True, "per-output-channel weight scales (needs opset >= 13; "
                              "dynamic mode defaults to per-tensor, faster in onnxruntime)"),
        "symmetric": Option(bool, False, "symmetric activation ranges"),
        "activation_type": Option(str, "uint8", "activation integer type", ("uint8", "int8")),
        "op_types": Option(list, list(DEFAULT_OPS), "op types to quantize"),
        "exclude": Option(list, [], "node names or op types kept in float"),
        "upgrade_opset": Option(bool, True, "upgrade opset < 13 for per-channel weights"),
        "measure": Option(bool, True, "time the result and drop quantization that does not pay"),
        "min_speedup": Option(float, 1.05, "with measure: keep INT8 only when at least this much faster than "
                              "float (a margin over timing noise)"),
        "threads": Option(int, 2, "with measure: onnxruntime intra-op threads to time with (the deployment's; "
                          "INT8 kernels and FP32 ones do not gain alike from a second thread)"),
        "spinning": Option(bool, True, "with measure: the deployment's intra-op threads spin between operators "
                           "(onnxruntime's default; with threads > 1 the timings then run in a child process)"),
        "cost_cache": Option(bool, True, "with measure: reuse this machine's earlier measurement of the same "
                             "models ($GRAPHOPT_CACHE_DIR/quant-timing.json), so a verdict near min_speedup "
                             "does not flip between runs"),
        "accuracy": Option(bool, True, "keep the most sensitive nodes in float until the budget holds"),
        **budget_options(budget),
        "calib_samples": Option(int, 64, "at most this many samples for calibration"),
        "max_trials": Option(int, 48, "at most this many model runs for the accuracy search"),
        "prefuse": Option(bool, True, "fold BatchNorm / affine / Pad into convolutions before quantizing"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        if self.threads < 1:
            raise GraphoptError(f"pass 'quant': threads must be >= 1, got {self.threads}")

    # ------------------------------------------------------------------ driver
    def run(self, model: Model, ctx: PassContext) -> PassResult:
        # self.budget: the declared budget, resolved for this run by the pass manager
        stats: dict = {"left_float": {}}
        fp32 = self._prefused(model, ctx, stats) if self.prefuse else model.to_onnx()
        samples, generated = _lossy.feeds(fp32, ctx, 8)
        mode = self.mode
        if mode == "auto":
            mode = choose_mode(fp32, has_samples=not generated)
            if generated:
                # static INT8 needs activation ranges, and ranges from made-up inputs are not
                # the model's (the verifier's draws then break the budget: rel_l2 0.85 on the
                # digits CNN); dynamic INT8 computes them at run time from the input itself
                stats["mode_reason"] = ("no samples: dynamic INT8 (activation ranges computed at run time "
                                        "from each input, so no calibration data is needed); pass samples "
                                        "for static INT8")
                log.warning("quant: %s", stats["mode_reason"])
        stats["mode"] = mode
        if generated and mode == "static":
            log.warning(
                "quant: NO CALIBRATION SAMPLES - calibrating static INT8 on generated random inputs; "
                "ranges may be badly wrong. Pass real samples (--samples DIR) for a usable model."
            )
            stats["calibration"] = "generated inputs"
        opset = fp32.opset_import and max(
            (o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), default=0)
        per_channel = self.per_channel
        if mode == "dynamic" and "per_channel" not in self.given_options:
            # onnxruntime's dynamic MatMulInteger path runs per-tensor weights faster
            # (a 4-layer BERT-base-width encoder: 2.43x vs 2.34x over FP32); per_channel=true
            # to trade that for a lower error
            per_channel = False
        need = 11 if mode == "dynamic" else 13 if per_channel else 10
        if opset < need:
            up = self._upgrade(fp32, samples[:4]) if self.upgrade_opset else None
            if up is not None:
                stats["opset_upgraded"] = f"{opset}->13"
                fp32 = up
            elif mode == "dynamic":
                stats["skipped"] = f"opset {opset} < 11 and upgrade failed"
                return PassResult(False, stats)
            else:
                per_channel = False
                stats["per_channel"] = "off: opset < 13 and upgrade did not verify"
        cfg = dict(per_channel=per_channel, act=self.activation_type, symmetric=self.symmetric,
                   # dynamic Conv applies its weight scales after ConvInteger: per-channel costs nothing
                   conv_per_channel=self.per_channel if "per_channel" in self.given_options else True)
        calib = samples[: self.calib_samples]
        excluded_types = set(self.exclude)
        op_types = [o for o in self.op_types if o not in excluded_types]
        builder = Builder(fp32, mode, op_types, set(self.exclude), cfg)
        if not builder.candidates:
            stats["quantized"] = 0
            return PassResult(False, stats)
        if mode == "static":
            builder.calibrate(calib, self.method, self.percentile)
        skip: set[str] = set()
        q = builder.build(skip)
        q = self._validated(q, builder, skip, stats)
        if q is None:
            return PassResult(False, stats)
        evals = samples[:16]
        ref = outputs(fp32, evals)
        # accuracy: keep the most sensitive nodes float until the budget holds
        if self.accuracy:
            stats["budget"] = describe(self.budget)
            use = excess(self.budget, ref, outputs(q, evals))
            stats["budget_use_before_selection"] = round(use, 4)  # 1.0 = exactly at the budget
            if use > 1.0:
                q, skip = self._select(builder, ref, evals, stats)
                if q is None:
                    stats["reverted"] = "no subset of nodes meets the budget"
                    return PassResult(False, stats)
        # cost: never slower than FP32 on onnxruntime
        if self.measure:
            q, skip = _qregions.choose(fp32, q, builder, skip, samples[0], stats, self.min_speedup,
                                       self.cost_cache, self.threads, self.spinning)
            if self.threads != 2:
                stats["cost_threads"] = self.threads
            if q is None:
                return PassResult(False, stats)
        stats["quantized"] = len(builder.candidates) - len(skip)
        stats["rel_l2"] = round(output_error(ref, outputs(q, evals)), 5)
        stats["per_layer_error"] = layer_errors(fp32, q, evals[0])
        for name in skip:
            stats["left_float"].setdefault(name, "excluded")
        model.replace_with(Model.from_onnx(q))
        return PassResult(True, stats)

    def _prefused(self, model: Model, ctx: PassContext, stats: dict) -> onnx.ModelProto:
        """The float model to quantize: BatchNorm, per-channel Mul/Add and zero Pad folded
        into the convolutions first (on a copy), as quantization tools do, so that each Q/DQ
        pair wraps a whole fused op, and HardSwish spelled as one op. The input model is untouched if quant changes nothing."""
        from graphopt.pipeline import get_pass

        work = model.copy()
        unfused = unfuse_ort(work)
        if unfused:
            stats["unfused_ort_ops"] = unfused
        folded = unfused
        for name in ("fold-pad", "fold-bn", "fold-affine"):
            rule = get_pass(name)()
            folded += rule.run(work, ctx).stats.get(rule.stat, 0)  # what fired, not what was refused
        # x * HardSigmoid(x) -> HardSwish (opset >= 14): one float op between regions, which
        # the static build turns into Clip + QLinearMul (passes/_qhardswish; issue 16)
        folded += get_pass("fuse-hardswish")().run(work, ctx).stats.get("fused", 0)
        if folded:
            stats["prefused"] = folded
            return work.to_onnx()
        return model.to_onnx()

    def _upgrade(self, proto, samples):
        """`proto` converted to opset 13 (per-channel Q/DQ, DynamicQuantizeLinear), or None
        when the converter fails or the outputs change."""
        from onnx import version_converter

        try:
            up = version_converter.convert_version(proto, 13)
            onnx.checker.check_model(up)
            err = output_error(outputs(proto, samples), outputs(up, samples))
            if err > 1e-5:
                log.info("quant: opset upgrade changed outputs (rel %.2g); not using it", err)
                return None
            return up
        except Exception as e:  # the converter fails on assorted models
            log.info("quant: opset upgrade failed: %s", e)
            return None

    def _validated(self, q, builder, skip, stats):
        problem = runtime.check(q)
        if problem and builder.cfg["per_channel"]:
            log.warning("quant: per-channel model invalid (%s); falling back to per-tensor", problem)
            builder.cfg["per_channel"] = False
            stats["per_channel"] = "off: " + problem
            q = builder.build(skip)
            problem = runtime.check(q)
        if problem:
            stats["skipped"] = "quantized model invalid: " + problem
            log.warning("quant: %s; model left unchanged", stats["skipped"])
            return None
        return q

    def _select(self, builder, ref, evals, stats):
        """Keep the most sensitive nodes float: group testing by bisection (a group is
        tested by quantizing only that group), capped at max_trials model runs."""
        names = list(builder.candidates)
        errs: dict[str, float] = {}
        trial = _lossy.trial(self.budget, ref, evals, builder.build, "quant")

        def err(skip):  # remembers each node's error alone, for the stats
            e = trial(skip)
            rest = set(names) - set(skip)
            if len(rest) == 1:
                errs[next(iter(rest))] = e
            return e

        skip = _lossy.bisect_block(names, err, 1.0, self.max_trials)
        if len(skip) == len(names):
            return None, set()
        q = builder.build(skip)
        for n in skip:
            why = (f"sensitive (alone: {errs[n]:.3g} of the budget)" if n in errs
                   else "sensitive (group over budget)")
            stats["left_float"][n] = why
        stats["kept_float_for_accuracy"] = sorted(skip)
        return q, skip


def choose_mode(proto: onnx.ModelProto, has_samples: bool) -> str:
    inits = {t.name for t in proto.graph.initializer}
    consts = inits | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    mm = sum(1 for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts)
    conv = sum(1 for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    if mm > conv or not has_samples:
        return "dynamic"
    return "static"
