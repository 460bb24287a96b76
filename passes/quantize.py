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
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.ir import fresh_namer, outer_names_used, subgraphs_of

from graphopt.pipeline import budget_options
from graphopt.verify.contracts import rel_l2 as _contract_rel_l2

from . import _calibrate
from ._budget import describe, excess, layer_errors

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
ACT_OPS = ("Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize")
DEFAULT_OPS = WEIGHT_OPS + ACT_OPS
CHEAP_OPS = ACT_OPS  # removed first when quantization does not pay

_NP = {"uint8": np.uint8, "int8": np.int8}


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
        "cost_cache": Option(bool, True, "with measure: reuse this machine's earlier measurement of the same "
                             "models ($GRAPHOPT_CACHE_DIR/quant-timing.json), so a verdict near min_speedup "
                             "does not flip between runs"),
        "accuracy": Option(bool, True, "keep the most sensitive nodes in float until the budget holds"),
        **budget_options(budget),
        "calib_samples": Option(int, 64, "at most this many samples for calibration"),
        "max_trials": Option(int, 48, "at most this many model runs for the accuracy search"),
        "prefuse": Option(bool, True, "fold BatchNorm / affine / Pad into convolutions before quantizing"),
    }

    # ------------------------------------------------------------------ driver
    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.budget = self.budget_for(ctx)  # what the search aims at and the verifier checks
        stats: dict = {"left_float": {}}
        fp32 = self._prefused(model, ctx, stats) if self.prefuse else model.to_onnx()
        samples = ctx.samples
        generated = False
        if not samples:
            samples = generate_samples(fp32, ctx, 8)
            generated = True
        samples = [{k: np.asarray(v) for k, v in s.items()} for s in samples]
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
        need = 13 if (per_channel or mode == "dynamic") else 10
        if mode == "dynamic":
            need = 11
        if opset < need:
            up = self._upgrade(fp32, need if mode == "dynamic" else 13, samples[:4]) if self.upgrade_opset else None
            if up is not None:
                stats["opset_upgraded"] = f"{opset}->{max(need, 13)}"
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
        builder = _Builder(fp32, mode, op_types, set(self.exclude), cfg)
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
        ref = _run(fp32, evals)
        # accuracy: keep the most sensitive nodes float until the budget holds
        if self.accuracy:
            stats["budget"] = describe(self.budget)
            use = excess(self.budget, ref, _run(q, evals))
            stats["budget_use_before_selection"] = round(use, 4)  # 1.0 = exactly at the budget
            if use > 1.0:
                q, skip = self._select(builder, ref, evals, stats)
                if q is None:
                    stats["reverted"] = "no subset of nodes meets the budget"
                    return PassResult(False, stats)
        # cost: never slower than FP32 on onnxruntime
        if self.measure:
            q, skip = self._cost(fp32, q, builder, skip, samples[0], stats)
            if q is None:
                return PassResult(False, stats)
        stats["quantized"] = len(builder.candidates) - len(skip)
        stats["rel_l2"] = round(_error(ref, _run(q, evals)), 5)
        stats["per_layer_error"] = layer_errors(fp32, q, evals[0])
        for name in skip:
            stats["left_float"].setdefault(name, "excluded")
        model.replace_with(Model.from_onnx(keep_model_fields(q, fp32)))
        return PassResult(True, stats)

    def _prefused(self, model: Model, ctx: PassContext, stats: dict) -> onnx.ModelProto:
        """The float model to quantize: BatchNorm, per-channel Mul/Add and zero Pad folded
        into the convolutions first (on a copy), as quantization tools do, so that each Q/DQ
        pair wraps a whole fused op. The input model is untouched if quant changes nothing."""
        from graphopt.pipeline import get_pass

        work = model.copy()
        unfused = unfuse_ort(work)
        if unfused:
            stats["unfused_ort_ops"] = unfused
        folded = unfused
        for name in ("fold-pad", "fold-bn", "fold-affine"):
            res = get_pass(name)().run(work, ctx)
            folded += sum(v for v in res.stats.values() if isinstance(v, int))
        if folded:
            stats["prefused"] = folded
            return work.to_onnx()
        return model.to_onnx()

    def _upgrade(self, proto, version, samples):
        from onnx import version_converter

        try:
            up = version_converter.convert_version(proto, max(version, 13))
            onnx.checker.check_model(up)
            err = _error(_run(proto, samples), _run(up, samples))
            if err > 1e-5:
                log.info("quant: opset upgrade changed outputs (rel %.2g); not using it", err)
                return None
            return up
        except Exception as e:  # the converter fails on assorted models
            log.info("quant: opset upgrade failed: %s", e)
            return None

    def _validated(self, q, builder, skip, stats):
        problem = validate(q)
        if problem and builder.cfg["per_channel"]:
            log.warning("quant: per-channel model invalid (%s); falling back to per-tensor", problem)
            builder.cfg["per_channel"] = False
            stats["per_channel"] = "off: " + problem
            q = builder.build(skip)
            problem = validate(q)
        if problem:
            stats["skipped"] = "quantized model invalid: " + problem
            log.warning("quant: %s; model left unchanged", stats["skipped"])
            return None
        return q

    def _select(self, builder, ref, evals, stats):
        """Keep the most sensitive nodes float: group testing by bisection (a group is
        tested by quantizing only that group), capped at max_trials model runs."""
        from .fp16 import _bisect_block

        names = list(builder.candidates)
        errs: dict[str, float] = {}

        def err(skip):
            try:
                e = excess(self.budget, ref, _run(builder.build(set(skip)), evals))
            except Exception as ex:  # a candidate onnxruntime rejects counts as failing
                log.debug("quant trial failed: %s", ex)
                e = float("inf")
            rest = set(names) - set(skip)
            if len(rest) == 1:
                errs[next(iter(rest))] = e
            return e

        skip = _bisect_block(names, err, 1.0, self.max_trials)
        if len(skip) == len(names):
            return None, set()
        q = builder.build(skip)
        for n in skip:
            why = (f"sensitive (alone: {errs[n]:.3g} of the budget)" if n in errs
                   else "sensitive (group over budget)")
            stats["left_float"][n] = why
        stats["kept_float_for_accuracy"] = sorted(skip)
        return q, skip

    def _cost(self, fp32, q, builder, skip, feed, stats):
        """Keep INT8 only where it is measured faster than `fp32` by min_speedup, at batch 1
        and at the samples' batch (where the leading dim is free). Candidate sets of
        quantized nodes are tried in a fixed order (see _cost_configs); each is timed
        against FP32 (passes/_timing: paired interleaved rounds, median, 99% interval).
        A set counts only when its whole interval clears min_speedup; a later set replaces
        the chosen one only when its interval lies entirely above the chosen one's. An
        inconclusive measurement never picks INT8: the model stays float."""
        from . import _timing

        feeds = _cost_feeds(fp32, feed)
        ref_session = None
        ref_bytes = fp32.SerializeToString()
        need = self.min_speedup
        reused = []

        def speed(model, sess=None):  # the worst feed decides
            nonlocal ref_session
            worst = None
            new_bytes = model.SerializeToString()
            for f in feeds:
                key = _timing.cache_key(ref_bytes, new_bytes, f) if self.cost_cache else None
                sp = _timing.cached(key) if key else None
                if sp is None:
                    ref_session = ref_session or _timing.session(fp32)
                    sess = sess or _timing.session(model)
                    sp = _timing.paired_speedup(ref_session, sess, f, need=need)
                    if key:
                        _timing.remember(key, sp)
                else:
                    reused.append(key)
                if worst is None or sp.ratio < worst.ratio:
                    worst = sp
            return worst

        tried = []
        best = None  # (label, q, skip, Speedup, why)
        regions = builder.regions(skip, feeds[0])
        for label, cfg_skip, why in self._cost_configs(builder, skip, regions):
            cand, sess = q, None
            if cfg_skip != skip:  # (q itself was validated before)
                cand = builder.build(cfg_skip)
                try:  # the timing session doubles as the onnxruntime half of validate()
                    onnx.checker.check_model(cand)
                    sess = _timing.session(cand)
                except Exception as e:
                    log.info("quant: cost set %s is not a valid model (%s); skipped", label, str(e).splitlines()[0][:200])
                    continue
            sp = speed(cand, sess)
            verdict = sp.verdict(need)
            tried.append((label, sp, verdict))
            log.info("quant: cost of %s: %s (needs %gx) -> %s", label, sp.describe(), need, verdict)
            if verdict != "faster":
                continue
            if best is None or sp.lo > best[3].hi:
                best = (label, cand, cfg_skip, sp, why)
        stats["cost_trials"] = [f"{label}: {sp.describe()} -> {verdict}" for label, sp, verdict in tried]
        if reused:
            stats["cost_cache"] = f"{len(reused)} measurement(s) reused from {_timing.cache_path()}"
        if best is None:
            first = f"{tried[0][0]}: {tried[0][1].describe()}" if tried else "no valid candidate"
            stats["reverted"] = (f"INT8 not shown faster than FP32 by {need:g}x on onnxruntime ({first}); "
                                 f"model kept in float")
            log.warning("quant: %s", stats["reverted"])
            stats["latency_ratio"] = round(tried[0][1].ratio, 3) if tried else 0.0
            stats["regions"] = {r.describe(): "float: no set of regions measured faster than FP32" for r in regions}
            return None, skip
        label, cand, cfg_skip, sp, why = best
        for n in cfg_skip - skip:
            stats["left_float"][n] = why.get(n, "cost")
        stats["cost_choice"] = label
        stats["latency_ratio"] = round(sp.ratio, 3)
        stats["latency_ratio_interval"] = [round(sp.lo, 3), round(sp.hi, 3)]
        stats["regions"] = {}
        for r in regions:
            kept = [n for n in r.nodes if n not in cfg_skip]
            if not kept:
                stats["regions"][r.describe()] = "float: " + why.get(r.nodes[0], "cost").removeprefix("cost: ")
            elif len(kept) < len(r.nodes):
                stats["regions"][r.describe()] = (f"int8 ({len(kept)}/{len(r.nodes)} nodes; "
                                                  f"the rest float: no speedup from INT8 there)")
            else:
                stats["regions"][r.describe()] = f"int8 (in the chosen set '{label}', measured {sp.describe()})"
        return cand, cfg_skip

    QDQ_COSTS = (4.0, 16.0, 64.0, 256.0)

    def _cost_configs(self, builder, skip, regions):
        """(label, nodes kept float, why per node) in the fixed order the cost check tries
        them: everything; element-wise/pooling ops float; then the regions whose estimated
        gain is positive, for each Q/DQ cost in QDQ_COSTS (greedy by estimated gain: a
        higher Q/DQ cost keeps fewer, denser regions). Sets already tried are skipped."""
        seen = []

        def new(cfg):
            if cfg in seen:
                return False
            seen.append(cfg)
            return True

        if new(skip):
            yield "all candidates", skip, {}
        cheap = {n for n, node in builder.candidates.items() if node.op in CHEAP_OPS} - skip
        if cheap and new(skip | cheap):
            yield "element-wise/pooling ops float", skip | cheap, dict.fromkeys(cheap, "cost: no speedup from INT8 here")
        if len(regions) < 2:
            return
        for k in self.QDQ_COSTS:
            losing = [r for r in regions if r.gain(k) <= 0]
            if not losing or len(losing) == len(regions):
                continue
            cfg = skip | {n for r in losing for n in r.nodes}
            if new(cfg):
                why = {n: f"cost: region {r.label} estimated to lose ({r.gain(k) / 1e6:+.2f} M MAC-equivalents "
                          f"at Q/DQ cost {k:g})" for r in losing for n in r.nodes}
                yield f"regions with estimated gain > 0 at Q/DQ cost {k:g} ({len(regions) - len(losing)}/{len(regions)})", cfg, why


# ---------------------------------------------------------------------------- helpers

_MS = "com.microsoft"


def unfuse_ort(model: Model) -> int:
    """Split onnxruntime's FusedConv / FusedGemm (what `fuse --target ort` emits) back into
    Conv [+ Add(Z)] / Gemm + the activation, in place on quant's working copy: quantization
    works on standard ops (a Relu/Clip then folds into the Q range) and onnxruntime fuses
    what stays float again when it loads the model. An activation it does not know stays fused."""
    g = model.graph
    namer = fresh_namer(g, "unfused")
    n = 0
    for node in list(g.nodes):
        if node.domain != _MS or node.op not in ("FusedConv", "FusedGemm") or len(node.outputs) != 1:
            continue
        attrs = dict(node.attrs)
        act = attrs.pop("activation", None)
        act = act.decode() if isinstance(act, bytes) else act
        if node.op == "FusedConv":
            params = list(attrs.pop("activation_params", []) or [])
        else:
            params = [attrs.pop(k) for k in ("activation_alpha", "activation_beta") if k in attrs]
            attrs.pop("activation_gamma", None)
        act_attrs: dict = {}
        extra: list = []
        if act in ("Relu", "Sigmoid", "Tanh"):
            pass
        elif act == "LeakyRelu" and len(params) >= 1:
            act_attrs = {"alpha": float(params[0])}
        elif act == "HardSigmoid" and len(params) >= 2:
            act_attrs = {"alpha": float(params[0]), "beta": float(params[1])}
        elif act == "Clip" and len(params) >= 2:
            extra = [gs.Constant(namer("clip_min"), np.array(params[0], np.float32)),
                     gs.Constant(namer("clip_max"), np.array(params[1], np.float32))]
        else:
            continue
        out = node.outputs[0]
        ins = list(node.inputs)
        z = ins[3] if node.op == "FusedConv" and len(ins) > 3 and ins[3].name else None
        base = gs.Variable(namer(out.name + "_pre"), dtype=out.dtype, shape=out.shape)
        core = gs.Node("Conv" if node.op == "FusedConv" else "Gemm", node.name or namer("node"),
                       attrs=attrs, inputs=ins[:3], outputs=[base])
        new = [core]
        if z is not None:
            summed = gs.Variable(namer(out.name + "_sum"), dtype=out.dtype, shape=out.shape)
            new.append(gs.Node("Add", namer("Add"), inputs=[base, z], outputs=[summed]))
            base = summed
        node.outputs = []
        node.inputs = []
        new.append(gs.Node(act, namer(act), attrs=act_attrs, inputs=[base] + extra, outputs=[out]))
        g.nodes.extend(new)
        n += 1
    if n:
        g.cleanup(remove_unused_graph_inputs=False)
        g.toposort()
    return n



def choose_mode(proto: onnx.ModelProto, has_samples: bool) -> str:
    inits = {t.name for t in proto.graph.initializer}
    consts = inits | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    mm = sum(1 for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts)
    conv = sum(1 for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    if mm > conv or not has_samples:
        return "dynamic"
    return "static"


def generate_samples(proto: onnx.ModelProto, ctx: PassContext, n: int) -> list[dict]:
    rng = np.random.default_rng(ctx.seed)
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for _ in range(n):
        s = {}
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            shape = ctx.input_shapes.get(vi.name) or tuple(
                d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim)
            dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            lo, hi = ctx.input_ranges.get(vi.name, (0.0, 1.0))
            if np.issubdtype(dt, np.floating):
                s[vi.name] = rng.uniform(lo, hi, shape).astype(dt)
            elif dt == np.bool_:
                s[vi.name] = np.ones(shape, dt)
            else:
                s[vi.name] = rng.integers(int(lo), max(int(hi), int(lo) + 1), shape).astype(dt)
        out.append(s)
    return out


def _session(proto: onnx.ModelProto, optimize: bool = False, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(proto: onnx.ModelProto, samples: list[dict]) -> list[list[np.ndarray]]:
    sess = _session(proto, optimize=True)
    return [sess.run(None, s) for s in samples]


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a-b|| / ||a|| as the verifier measures it (graphopt.verify.contracts.rel_l2)."""
    return _contract_rel_l2(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())


def _error(ref, got) -> float:
    """Worst relative L2 error over samples and float outputs."""
    worst = 0.0
    for ra, rb in zip(ref, got):
        for a, b in zip(ra, rb):
            if np.issubdtype(np.asarray(a).dtype, np.floating):
                worst = max(worst, rel_l2(a, b))
    return worst


def validate(proto: onnx.ModelProto) -> str | None:
    """None if the model passes onnx.checker and loads in onnxruntime, else the reason."""
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        return f"onnx.checker: {str(e).splitlines()[0][:200]}"
    try:
        _session(proto, optimize=True, threads=1)
    except Exception as e:
        return f"onnxruntime: {str(e).splitlines()[0][:200]}"
    return None


def _cost_feeds(proto: onnx.ModelProto, feed: dict) -> list[dict]:
    """The inputs the cost check times: the sample, and its first row alone when every
    input has a free leading (batch) dim and the sample holds more than one row."""
    free = all(
        vi.type.tensor_type.shape.dim and not vi.type.tensor_type.shape.dim[0].HasField("dim_value")
        for vi in proto.graph.input if vi.name in feed)
    rows = {np.asarray(v).shape[0] if np.asarray(v).ndim else 1 for v in feed.values()}
    if free and len(rows) == 1 and rows.pop() > 1:
        return [{k: np.asarray(v)[:1] for k, v in feed.items()}, feed]
    return [feed]


# ---------------------------------------------------------------------------- rewriting


def inline_constants(g: gs.Graph) -> int:
    """Turn Constant nodes holding a tensor into initializers (exact; exporters such as
    Paddle's emit all weights this way). Outputs read by subgraphs or graph outputs stay."""
    protected = {t.name for t in g.outputs}
    for node in g.nodes:
        for sub in subgraphs_of(node):
            protected |= outer_names_used(sub)
    n = 0
    for node in list(g.nodes):
        if node.op != "Constant" or not isinstance(node.attrs.get("value"), gs.Constant):
            continue
        out = node.outputs[0]
        if out.name in protected:
            continue
        const = gs.Constant(out.name, node.attrs["value"].values)
        for c in list(out.outputs):
            for i, t in enumerate(c.inputs):
                if t is out:
                    c.inputs[i] = const
        node.outputs = []
        n += 1
    g.cleanup(remove_unused_graph_inputs=False)
    return n


def keep_model_fields(out: onnx.ModelProto, like: onnx.ModelProto) -> onnx.ModelProto:
    """Carry the model-level fields a graph export drops (metadata, producer, docs, functions)."""
    if not out.metadata_props and like.metadata_props:
        out.metadata_props.extend(like.metadata_props)
    for f in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if getattr(like, f) and not getattr(out, f):
            setattr(out, f, getattr(like, f))
    have = {(f.domain, f.name) for f in out.functions}
    out.functions.extend(f for f in like.functions if (f.domain, f.name) not in have)
    return out


def export_like(g: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a gs graph with the IR version and opsets of `like` (IR < 4 models list
    their initializers as graph inputs too)."""
    out = gs.export_onnx(g, do_type_check=False)
    out.ir_version = like.ir_version
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    if out.ir_version < 4:
        listed = {i.name for i in out.graph.input}
        for t in out.graph.initializer:
            if t.name not in listed:
                out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


class Region:
    """A set of quantized nodes that stays INT8 inside, with what the cost estimate needs."""

    # The estimate, in units of one float32 multiply-accumulate of a dense convolution:
    # an INT8 dense MAC saves about half of one (u8s8 kernels); a depthwise MAC saves
    # nothing (onnxruntime's INT8 depthwise kernels are no faster than float); every
    # element quantized at a region's entry or dequantized at its exit costs QDQ_COST MACs.
    # QDQ_COST is not known well a priori (memory bound, machine dependent): the cost
    # check tries several values and times the whole model for each (see Quantize._cost).
    DENSE_SAVING = 0.5
    DW_SAVING = 0.0

    def __init__(self, nodes: list[str], ops: list[str]):
        self.nodes = nodes
        self.ops = ops
        self.label = ""
        self.macs_dense = 0
        self.macs_dw = 0
        self.entry_elems = 0
        self.exit_elems = 0

    def gain(self, qdq_cost: float) -> float:
        return (self.DENSE_SAVING * self.macs_dense + self.DW_SAVING * self.macs_dw
                - qdq_cost * (self.entry_elems + self.exit_elems))

    def describe(self) -> str:
        from collections import Counter

        ops = ", ".join(f"{op}x{c}" if c > 1 else op for op, c in sorted(Counter(self.ops).items()))
        return (f"{self.label} ({ops}; {self.macs_dense / 1e6:.2f} M dense + {self.macs_dw / 1e6:.2f} M depthwise MACs, "
                f"{self.entry_elems + self.exit_elems} Q/DQ elements)")


class _Builder:
    """Plans once, then builds quantized models for any set of nodes kept in float."""

    def __init__(self, proto, mode, op_types, exclude, cfg):
        self.proto = onnx.shape_inference.infer_shapes(proto)
        self.mode = mode
        self.cfg = cfg
        self.ranges: dict[str, tuple[float, float]] = {}
        g = gs.import_onnx(self.proto)
        inline_constants(g)
        self.candidates: dict[str, gs.Node] = {}
        names = fresh_namer(g, "node")
        used_by_sub = set()
        for node in g.nodes:
            for sub in subgraphs_of(node):
                used_by_sub |= outer_names_used(sub)
        self.used_by_sub = used_by_sub
        for node in g.nodes:
            if not node.name:
                node.name = names(node.op)
            if node.name in exclude or node.op in exclude or node.op not in op_types:
                continue
            if node.domain not in (None, "", "ai.onnx"):
                continue
            if self._eligible(node):
                self.candidates[node.name] = node
        # proto with node names assigned, for consistent rebuilds
        self.proto = export_like(g, proto)
        del self.proto.graph.output[:]
        self.proto.graph.output.extend(proto.graph.output)

    def _eligible(self, node) -> bool:
        def is_f32(t):
            return t.dtype == np.float32

        if self.mode == "dynamic":
            if node.op == "Gather":  # embedding tables: gather int8 rows, then dequantize
                d = node.inputs[0]
                return isinstance(d, gs.Constant) and d.values.dtype == np.float32 and d.values.size >= 4096
            if node.op == "Conv":  # DynamicQuantizeLinear -> ConvInteger (int8 weights, zero point 0)
                w = node.inputs[1] if len(node.inputs) > 1 else None
                b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
                return (isinstance(w, gs.Constant) and w.values.dtype == np.float32 and w.values.ndim >= 3
                        and is_f32(node.inputs[0]) and not isinstance(node.inputs[0], gs.Constant)
                        and (b is None or isinstance(b, gs.Constant)))
            if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
                return False
            w = node.inputs[1]
            if not isinstance(w, gs.Constant) or w.values.ndim != 2 or w.values.dtype != np.float32:
                return False
            if not is_f32(node.inputs[0]) or isinstance(node.inputs[0], gs.Constant):
                return False
            if node.op == "Gemm":
                a = node.attrs
                if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
                    return False
                if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
                    return False
            return True
        ins = [t for t in node.inputs if t.name]
        if node.op == "Gather":  # dynamic mode only
            return False
        if node.op in ("Conv", "ConvTranspose"):
            return is_f32(ins[0]) and isinstance(ins[1], gs.Constant)
        if node.op == "Gemm":
            return is_f32(ins[0]) and not node.attrs.get("transA", 0)
        if node.op == "Resize":
            return is_f32(ins[0])
        return all(isinstance(t, gs.Constant) and t.values.dtype == np.float32 or
                   (not isinstance(t, gs.Constant) and is_f32(t)) for t in ins[:1] + ins[1:]) and \
            (node.op != "Concat" or all(not isinstance(t, gs.Constant) for t in ins))

    # -- static plan ------------------------------------------------------------
    def _act_inputs(self, node) -> list[int]:
        if node.op in ("Conv", "ConvTranspose", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool"):
            return [0]
        if node.op == "Gemm":
            return [0] if isinstance(node.inputs[1], gs.Constant) else [0, 1]
        if node.op == "MatMul":
            return [i for i in (0, 1) if not isinstance(node.inputs[i], gs.Constant)]
        return [i for i, t in enumerate(node.inputs) if not isinstance(t, gs.Constant)]

    def _output_target(self, g, node) -> tuple[gs.Tensor, gs.Node | None]:
        """The tensor whose range quantizes this node's output (after a foldable Relu/Clip)."""
        out = node.outputs[0]
        if self.cfg["symmetric"] or out in g.outputs or out.name in self.used_by_sub:
            return out, None
        if len(out.outputs) == 1:
            nxt = out.outputs[0]
            if nxt.op == "Relu" or (nxt.op == "Clip" and all(
                    isinstance(t, gs.Constant) for t in nxt.inputs[1:] if t.name)):
                y = nxt.outputs[0]
                if y not in g.outputs and y.name not in self.used_by_sub:
                    return y, nxt
        return out, None

    def plan_tensors(self) -> list[str]:
        g = gs.import_onnx(self.proto)
        names = set()
        for node in g.nodes:
            if node.name not in self.candidates:
                continue
            for i in self._act_inputs(node):
                names.add(node.inputs[i].name)
            names.add(self._output_target(g, node)[0].name)
        return sorted(names)

    # -- regions (issue 16) ---------------------------------------------------------
    def regions(self, skip: set[str], feed: dict | None = None) -> list["Region"]:
        """The quantized nodes (candidates not in `skip`) grouped into regions: chains that
        stay INT8 between the quantize at their entry and the dequantize at their exit. Two
        nodes share a region when one's quantized output is the other's quantized input and
        no float op reads it (static); in dynamic mode every node quantizes its own input
        and is a region alone.
        Each region carries what a cost estimate needs: MACs of its convolutions/matmuls
        (dense and depthwise) and the number of elements quantized at entry and
        dequantized at exit, from onnx shape inference with the graph inputs' symbolic dims
        taken from `feed` (dims still unknown count as 1)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for vi in proto.graph.input:  # symbolic dims (batch, image size) from the sample fed
            if feed is not None and vi.name in feed and vi.type.tensor_type.HasField("shape"):
                shape = np.shape(feed[vi.name])
                dims = vi.type.tensor_type.shape.dim
                if len(dims) == len(shape):
                    for d, v in zip(dims, shape):
                        d.Clear()
                        d.dim_value = int(v)
        del proto.graph.value_info[:]
        try:
            proto = onnx.shape_inference.infer_shapes(proto)
        except Exception as e:  # estimates only: unknown sizes count as 1
            log.debug("quant: shape inference for the region estimate failed: %s", e)
        elems: dict[str, int] = {}
        for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape"):
                elems[vi.name] = int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in dims]))
        g = gs.import_onnx(self.proto)
        active = [n for n in g.nodes if n.name in self.candidates and n.name not in skip]
        names = {n.name for n in active}
        parent = {n: n for n in names}

        def find(a):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        target = {n.name: self._output_target(g, n)[0] for n in active}
        produced = {t.name: name for name, t in target.items()}
        ins = {n.name: [n.inputs[i] for i in self._act_inputs(n)] for n in active}
        if self.mode == "static":
            outs = {t.name for t in g.outputs} | self.used_by_sub
            for n in active:
                for t in ins[n.name]:
                    p = produced.get(t.name)
                    # stays INT8 from p to n only if nothing reads t in float (else it is
                    # dequantized there anyway: the chain ends)
                    if p is not None and t.name not in outs and all(c.name in names for c in t.outputs):
                        parent[find(n.name)] = find(p)
        groups: dict[str, list] = {}
        for n in active:
            groups.setdefault(find(n.name), []).append(n)
        out = []
        for nodes in groups.values():
            members = {n.name for n in nodes}
            r = Region(sorted(members), [n.op for n in nodes])
            for n in nodes:
                if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and isinstance(n.inputs[1], gs.Constant):
                    w = n.inputs[1].values
                    o_el = elems.get(n.outputs[0].name, 0)
                    if n.op in ("Conv", "ConvTranspose"):
                        group = int(n.attrs.get("group", 1))
                        if n.op == "Conv":  # W: [M, C/group, k...]
                            macs, cin = o_el * int(np.prod(w.shape[1:])), w.shape[1] * group
                        else:  # ConvTranspose, W: [C, M/group, k...]: per input element
                            macs, cin = elems.get(n.inputs[0].name, 0) * int(np.prod(w.shape[1:])), w.shape[0]
                        if group > 1 and group == cin:
                            r.macs_dw += macs
                        else:
                            r.macs_dense += macs
                    else:
                        k = w.shape[1] if n.op == "Gemm" and n.attrs.get("transB", 0) else w.shape[0]
                        r.macs_dense += o_el * int(k)
                for t in ins[n.name]:  # entry: quantized here unless a region member made it
                    if produced.get(t.name) not in members or self.mode == "dynamic":
                        r.entry_elems += elems.get(t.name, 0)
                t = target[n.name]
                readers = [c for c in t.outputs if c.name not in members]
                if readers or t in g.outputs or self.mode == "dynamic":  # exit: dequantized for float readers
                    r.exit_elems += elems.get(t.name, 0)
            out.append(r)
        out.sort(key=lambda r: r.nodes[0])
        for i, r in enumerate(out):
            r.label = f"R{i}"
        return out

    def calibrate(self, samples, method, percentile):
        names = self.plan_tensors()
        self.ranges = _calibrate.collect(self.proto, names, samples, method, percentile)

    # -- build --------------------------------------------------------------------
    def build(self, skip: set[str]) -> onnx.ModelProto:
        g = gs.import_onnx(self.proto)
        namer = fresh_namer(g, "q")
        nodes = [n for n in g.nodes if n.name in self.candidates and n.name not in skip]
        if self.mode == "dynamic":
            for node in nodes:
                self._dynamic(g, node, namer)
        else:
            self._static(g, nodes, namer)
        g.cleanup(remove_unused_graph_inputs=False)
        g.toposort()
        return export_like(g, self.proto)

    def _weight(self, w: np.ndarray, axis: int | None):
        """int8 symmetric quantization of a weight; per-channel along axis when given."""
        if axis is None:
            m = float(np.abs(w).max())
            scale = np.float32(m / 127.0 if m > 0 else 1.0)
            q = np.asarray(np.clip(np.round(w / scale), -127, 127).astype(np.int8))
            return q, np.array(scale, np.float32), np.array(0, np.int8)
        red = tuple(i for i in range(w.ndim) if i != axis)
        m = np.abs(w).max(axis=red)
        scale = np.where(m > 0, m / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return q, scale, np.zeros(scale.shape, np.int8)

    def _static(self, g, nodes, namer):
        cfg = self.cfg
        act = cfg["act"]
        qparams = {}

        def params(name):
            if name not in qparams:
                lo, hi = self.ranges.get(name, (0.0, 0.0))
                s, z = _calibrate.qparams(lo, hi, act, cfg["symmetric"])
                qparams[name] = (np.array(s, np.float32), np.array(z, _NP[act]))
            return qparams[name]

        # tensor name -> dq output tensor; quantize each tensor once
        dq_of: dict[str, gs.Variable] = {}
        dq_ids: set[int] = set()

        our_q: set[int] = set()

        def qdq(t: gs.Tensor, range_name: str) -> gs.Variable:
            if t.name in dq_of:
                return dq_of[t.name]
            if id(t) in dq_ids:
                return t
            s, z = params(range_name)
            sc = gs.Constant(namer("scale"), s)
            zp = gs.Constant(namer("zp"), z)
            tq = gs.Variable(namer(t.name + "_q"), dtype=_NP[act], shape=t.shape)
            tdq = gs.Variable(namer(t.name + "_dq"), dtype=np.float32, shape=t.shape)
            qn = gs.Node("QuantizeLinear", namer("Q"), inputs=[t, sc, zp], outputs=[tq])
            our_q.add(id(qn))
            g.nodes.append(qn)
            g.nodes.append(gs.Node("DequantizeLinear", namer("DQ"), inputs=[tq, sc, zp], outputs=[tdq]))
            dq_of[t.name] = tdq
            dq_ids.add(id(tdq))
            return tdq

        def reroute(t, new):
            for c in list(t.outputs):
                if id(c) in our_q:
                    continue
                for i, x in enumerate(c.inputs):
                    if x is t:
                        c.inputs[i] = new

        for node in nodes:
            # activation inputs
            for i in self._act_inputs(node):
                t = node.inputs[i]
                node.inputs[i] = qdq(t, t.name)
            # constant inputs of element-wise ops: per-tensor activation-type quantization
            if node.op in ("Add", "Mul"):
                for i, t in enumerate(node.inputs):
                    if isinstance(t, gs.Constant):
                        v = t.values.astype(np.float32)
                        s, z = _calibrate.qparams(float(v.min()), float(v.max()), act, False)
                        qv = np.clip(np.round(v / s) + z, *(0, 255) if act == "uint8" else (-128, 127)).astype(_NP[act])
                        tdq = gs.Variable(namer(t.name + "_dq"), dtype=np.float32)
                        g.nodes.append(gs.Node("DequantizeLinear", namer("DQ"), inputs=[
                            gs.Constant(namer(t.name + "_q"), np.asarray(qv)), gs.Constant(namer("scale"), np.array(s, np.float32)),
                            gs.Constant(namer("zp"), np.array(z, _NP[act]))], outputs=[tdq]))
                        node.inputs[i] = tdq
            # weights and bias
            if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and isinstance(node.inputs[1], gs.Constant):
                self._quant_weight(g, node, namer, params)
            # output (with Relu/Clip folded)
            target, fold = self._output_target(g, node)
            out = node.outputs[0]
            if fold is not None:
                y = fold.outputs[0]
                fold.outputs = []
                fold.inputs = []
                dq = qdq(out, y.name)
                reroute(y, dq)
                reroute(out, dq)
            else:
                dq = qdq(out, out.name)
                reroute(out, dq)

    def _quant_weight(self, g, node, namer, params):
        w = node.inputs[1].values.astype(np.float32)
        op = node.op
        per = self.cfg["per_channel"]
        axis = None
        if per:
            if op == "Conv":
                axis = 0
            elif op == "ConvTranspose":
                axis = 1 if node.attrs.get("group", 1) == 1 else None
            elif op == "Gemm":
                axis = 0 if node.attrs.get("transB", 0) else 1
            elif op == "MatMul":
                axis = w.ndim - 1 if w.ndim >= 2 else None
        q, s, z = self._weight(w, axis)
        attrs = {"axis": axis} if axis is not None else {}
        wdq = gs.Variable(namer(node.inputs[1].name + "_dq"), dtype=np.float32, shape=list(w.shape))
        g.nodes.append(gs.Node("DequantizeLinear", namer("DQ"), attrs=attrs, inputs=[
            gs.Constant(namer(node.inputs[1].name + "_q"), q), gs.Constant(namer("wscale"), s),
            gs.Constant(namer("wzp"), z)], outputs=[wdq]))
        node.inputs[1] = wdq
        # bias: int32 with scale s_x * s_w
        if op in ("Conv", "Gemm") and len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
            if op == "Gemm" and (node.attrs.get("beta", 1.0) != 1.0 or node.inputs[2].values.ndim != 1):
                return
            b = node.inputs[2].values.astype(np.float32)
            x_dq = node.inputs[0]
            xs = x_dq.inputs[0].inputs[1].values if x_dq.inputs and x_dq.inputs[0].op == "DequantizeLinear" else None
            if xs is None:
                return
            bs = (np.float32(xs) * s).astype(np.float32)
            bs_safe = np.where(bs > 0, bs, 1.0).astype(np.float32)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                qb64 = np.round(b.astype(np.float64) / bs_safe.astype(np.float64))
            if not np.all(np.abs(qb64) <= 2**31 - 1):
                # the bias does not fit int32 at scale s_x * s_w (e.g. a channel of tiny
                # weights): keep it in float rather than saturate it
                return
            qb = qb64.astype(np.int32)
            battrs = {"axis": 0} if bs.ndim == 1 and bs.size > 1 else {}
            if bs.ndim == 1 and bs.size == 1:
                bs_safe = bs_safe.reshape(())
            bdq = gs.Variable(namer(node.inputs[2].name + "_dq"), dtype=np.float32, shape=list(b.shape))
            g.nodes.append(gs.Node("DequantizeLinear", namer("DQ"), attrs=battrs, inputs=[
                gs.Constant(namer(node.inputs[2].name + "_q"), qb), gs.Constant(namer("bscale"), bs_safe),
                gs.Constant(namer("bzp"), np.zeros(bs_safe.shape, np.int32))], outputs=[bdq]))
            node.inputs[2] = bdq

    def _dynamic(self, g, node, namer):
        if node.op == "Conv":
            return self._dynamic_conv(g, node, namer)
        if node.op == "Gather":
            q, s, z = self._weight(node.inputs[0].values.astype(np.float32), None)
            out = node.outputs[0]
            rows = gs.Variable(namer("rows_q"), dtype=np.int8)
            node.inputs[0] = gs.Constant(namer(node.inputs[0].name + "_q"), q)
            node.outputs = [rows]
            g.nodes.append(gs.Node("DequantizeLinear", namer("DQ"), inputs=[
                rows, gs.Constant(namer("scale"), s), gs.Constant(namer("zp"), z)], outputs=[out]))
            return
        x = node.inputs[0]
        w = node.inputs[1].values.astype(np.float32)
        bias = None
        if node.op == "Gemm":
            if node.attrs.get("transB", 0):
                w = w.T.copy()
            if len(node.inputs) > 2 and node.inputs[2].name:
                bias = (node.inputs[2].values * node.attrs.get("beta", 1.0)).astype(np.float32)
        q, s, z = self._weight(w, 1 if self.cfg["per_channel"] else None)
        out = node.outputs[0]
        node.outputs = []
        _integer_chain(g, namer, x, "MatMulInteger", "MMI", {}, q, z, s, bias, out)

    def _dynamic_conv(self, g, node, namer):
        """Conv -> DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul(x_scale * w_scale)
        [-> Add(bias)]. onnxruntime's ConvInteger takes only a per-tensor weight zero point:
        weights are symmetric (zero point 0), so per-channel scales apply after the
        integer convolution."""
        x = node.inputs[0]
        w = node.inputs[1].values.astype(np.float32)
        bias = node.inputs[2].values.astype(np.float32) if len(node.inputs) > 2 and node.inputs[2].name else None
        q, s, _ = self._weight(w, 0 if self.cfg.get("conv_per_channel", True) else None)
        bshape = [-1] + [1] * (w.ndim - 2)  # per output channel over [N, M, spatial...]
        if s.ndim:
            s = s.reshape(bshape)
        out, attrs = node.outputs[0], dict(node.attrs)
        node.outputs = []
        node.inputs = []
        _integer_chain(g, namer, x, "ConvInteger", "ConvInteger", attrs, q, np.array(0, np.int8),
                       np.asarray(s, np.float32), None if bias is None else bias.reshape(bshape), out)


def _integer_chain(g, namer, x, op: str, name: str, attrs: dict, wq: np.ndarray, wzp: np.ndarray,
                   ws: np.ndarray, bias: np.ndarray | None, out) -> None:
    """Append x -> DynamicQuantizeLinear -> `op` (MatMulInteger / ConvInteger with the
    int8 weight `wq`, zero point `wzp`) -> Cast -> Mul(x_scale * `ws`) [-> Add(`bias`)]
    writing `out`: dynamic INT8, where onnxruntime finds the activation range per run."""
    xq = gs.Variable(namer("xq"), dtype=np.uint8)
    xs = gs.Variable(namer("xs"), dtype=np.float32, shape=[])
    xz = gs.Variable(namer("xzp"), dtype=np.uint8, shape=[])
    g.nodes.append(gs.Node("DynamicQuantizeLinear", namer("DQL"), inputs=[x], outputs=[xq, xs, xz]))
    acc = gs.Variable(namer("acc"), dtype=np.int32)
    g.nodes.append(gs.Node(op, namer(name), attrs=attrs, inputs=[
        xq, gs.Constant(namer("wq"), wq), xz, gs.Constant(namer("wzp"), wzp)], outputs=[acc]))
    accf = gs.Variable(namer("accf"), dtype=np.float32)
    g.nodes.append(gs.Node("Cast", namer("Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[acc], outputs=[accf]))
    sc = gs.Variable(namer("scale"), dtype=np.float32)
    g.nodes.append(gs.Node("Mul", namer("Mul"), inputs=[xs, gs.Constant(namer("ws"), ws)], outputs=[sc]))
    if bias is None:
        g.nodes.append(gs.Node("Mul", namer("Mul"), inputs=[accf, sc], outputs=[out]))
    else:
        y = gs.Variable(namer("y"), dtype=np.float32)
        g.nodes.append(gs.Node("Mul", namer("Mul"), inputs=[accf, sc], outputs=[y]))
        g.nodes.append(gs.Node("Add", namer("Add"), inputs=[y, gs.Constant(namer("bias"), bias)], outputs=[out]))
