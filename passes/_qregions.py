"""Quant's cost decision: quantized nodes grouped into regions, a gain estimate per region,
and the timed choice of which regions stay INT8.

A region is a chain that stays INT8 between the quantize at its entry and the dequantize
at its exit (regions()). choose() times candidate sets of quantized nodes against the
FP32 model in a fixed order (passes/_timing: paired interleaved rounds with the
deployment's threads, median and its 99% interval) and keeps INT8 only where the whole interval clears
min_speedup; an inconclusive measurement keeps the model float, so the verdict does not
flip with timing noise.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import _timing
from ._qbuild import ACT_OPS, Builder

log = logging.getLogger(__name__)

CHEAP_OPS = ACT_OPS  # removed first when quantization does not pay
QDQ_COSTS = (4.0, 16.0, 64.0, 256.0)
RETRY_SECONDS = 3.0  # paired_speedup's default budget; a promising inconclusive set gets 3x that once
# a later set whose interval against FP32 overlaps the chosen one's, with a higher median, is
# timed head to head against the chosen set and replaces it when at least this much faster
SWITCH_MARGIN = 1.03


class Region:
    """A set of quantized nodes that stays INT8 inside, with what the cost estimate needs."""

    # The estimate, in units of one float32 multiply-accumulate of a dense convolution:
    # an INT8 dense MAC saves about half of one (u8s8 kernels); a depthwise MAC saves
    # nothing (onnxruntime's INT8 depthwise kernels are no faster than float); every
    # element quantized at a region's entry or dequantized at its exit costs QDQ_COST MACs.
    # QDQ_COST is not known well a priori (memory bound, machine dependent): the cost
    # check tries several values and times the whole model for each (see choose).
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
        ops = ", ".join(f"{op}x{c}" if c > 1 else op for op, c in sorted(Counter(self.ops).items()))
        return (f"{self.label} ({ops}; {self.macs_dense / 1e6:.2f} M dense + {self.macs_dw / 1e6:.2f} M depthwise MACs, "
                f"{self.entry_elems + self.exit_elems} Q/DQ elements)")



def regions(b: Builder, skip: set[str], feed: dict | None = None) -> list[Region]:
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
    proto.CopyFrom(b.proto)
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
    g = gs.import_onnx(b.proto)
    active = [n for n in g.nodes if n.name in b.candidates and n.name not in skip]
    names = {n.name for n in active}
    parent = {n: n for n in names}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    target = {n.name: b._output_target(g, n)[0] for n in active}
    produced = {t.name: name for name, t in target.items()}
    ins = {n.name: [n.inputs[i] for i in b._act_inputs(n)] for n in active}
    if b.mode == "static":
        outs = {t.name for t in g.outputs} | b.used_by_sub
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
                if produced.get(t.name) not in members or b.mode == "dynamic":
                    r.entry_elems += elems.get(t.name, 0)
            t = target[n.name]
            readers = [c for c in t.outputs if c.name not in members]
            if readers or t in g.outputs or b.mode == "dynamic":  # exit: dequantized for float readers
                r.exit_elems += elems.get(t.name, 0)
        out.append(r)
    out.sort(key=lambda r: r.nodes[0])
    for i, r in enumerate(out):
        r.label = f"R{i}"
    return out


def choose(fp32: onnx.ModelProto, q: onnx.ModelProto, builder: Builder, skip: set[str], feed: dict,
           stats: dict, need: float, use_cache: bool, threads: int = 2, spinning: bool = True
           ) -> tuple[onnx.ModelProto | None, set[str]]:
    """Keep INT8 only where it is measured faster than `fp32` by min_speedup, at batch 1
    and at the samples' batch (where the leading dim is free). Candidate sets of
    quantized nodes are tried in a fixed order (see _configs); each is timed
    against FP32 (passes/_timing: paired interleaved rounds, median, 99% interval).
    A set counts only when its whole interval clears min_speedup; a later set replaces
    the chosen one when its interval lies entirely above the chosen one's, or, when the two
    intervals overlap and its median is higher, when it is measured faster than the chosen
    set head to head (paired rounds of the two INT8 models, the whole interval above
    SWITCH_MARGIN): a direct comparison is far tighter than two intervals against FP32, so
    which set wins does not hang on the noise of either. A set measured inconclusive with
    its median above min_speedup is measured once more, three times longer (a busy machine
    widens the interval), and judged on that measurement alone. An inconclusive measurement never picks INT8: the model stays float. Sessions
    use `threads` intra-op threads that spin or not (the deployment's: the ranking of sets,
    and whether INT8 pays at all, can change with either; see _timing.Timer)."""
    with _timing.Timer(threads, spinning) as timer:
        return _choose(fp32, q, builder, skip, feed, stats, need, use_cache, timer)


def _choose(fp32, q, builder, skip, feed, stats, need, use_cache, timer: _timing.Timer):
    feeds = _feeds(fp32, feed)
    ref_session = None
    ref_bytes = fp32.SerializeToString()
    reused = []
    remeasured = []

    def speed(model, sess=None, base=None, base_sess=None):
        """(Speedup of the worst feed, `model`'s session once built): `model` timed against
        FP32, or head to head against the INT8 model `base`."""
        nonlocal ref_session
        worst = None
        new_bytes = model.SerializeToString()
        base_bytes, bar = (ref_bytes, need) if base is None else (base.SerializeToString(), SWITCH_MARGIN)
        for f in feeds:
            key = _timing.cache_key(base_bytes, new_bytes, f, timer.threads, timer.spinning) if use_cache else None
            sp = _timing.cached(key) if key else None
            if sp is None:
                if base is None:
                    ref_session = base_sess = ref_session or timer.session(fp32)
                base_sess = base_sess or timer.session(base)
                sess = sess or timer.session(model)
                sp = _timing.paired_speedup(base_sess, sess, f, need=bar)
                if base is None and sp.verdict(need) == "inconclusive" and sp.ratio >= need:
                    # promising but undecided (a busy machine widens the interval): one
                    # longer measurement, judged alone by the same rule
                    sp = _timing.paired_speedup(base_sess, sess, f, need=need, seconds=3 * RETRY_SECONDS,
                                                max_rounds=3 * 121)
                    remeasured.append(sp)
                if key:
                    _timing.remember(key, sp)
            else:
                reused.append(key)
            if worst is None or sp.ratio < worst.ratio:
                worst = sp
        return worst, sess

    tried = []
    head_to_head = []
    best = None  # (label, q, skip, Speedup, why, session)
    regs = regions(builder, skip, feeds[0])
    for label, cfg_skip, why in _configs(builder, skip, regs):
        cand, sess = q, None
        if cfg_skip != skip:  # (q itself was validated before)
            cand = builder.build(cfg_skip)
            try:  # the timing session doubles as the onnxruntime half of runtime.check
                onnx.checker.check_model(cand)
                sess = timer.session(cand)
            except Exception as e:
                log.info("quant: cost set %s is not a valid model (%s); skipped", label, str(e).splitlines()[0][:200])
                continue
        sp, sess = speed(cand, sess)
        verdict = sp.verdict(need)
        tried.append((label, sp, verdict))
        log.info("quant: cost of %s: %s (needs %gx) -> %s", label, sp.describe(), need, verdict)
        if verdict != "faster":
            continue
        if best is None or sp.lo > best[3].hi:
            best = (label, cand, cfg_skip, sp, why, sess)
        elif sp.ratio > best[3].ratio:
            h2h, _ = speed(cand, sess, best[1], best[5])
            won = h2h.verdict(SWITCH_MARGIN) == "faster"
            head_to_head.append(f"{label} vs {best[0]}: {h2h.describe()} -> "
                                f"{'replaces it' if won else 'kept ' + repr(best[0])}")
            log.info("quant: head to head: %s", head_to_head[-1])
            if won:
                best = (label, cand, cfg_skip, sp, why, sess)
    stats["cost_trials"] = [f"{label}: {sp.describe()} -> {verdict}" for label, sp, verdict in tried]
    stats["cost_timing"] = timer.describe()
    if head_to_head:
        stats["cost_head_to_head"] = head_to_head
    if reused:
        stats["cost_cache"] = f"{len(reused)} measurement(s) reused from {_timing.cache_path()}"
    if remeasured:
        stats["cost_remeasured"] = (f"{len(remeasured)} inconclusive measurement(s) with a median above {need:g}x "
                                    f"measured again, longer: " + "; ".join(sp.describe() for sp in remeasured))
    if best is None:
        first = f"{tried[0][0]}: {tried[0][1].describe()}" if tried else "no valid candidate"
        stats["reverted"] = (f"INT8 not shown faster than FP32 by {need:g}x on onnxruntime ({first}); "
                             f"model kept in float")
        log.warning("quant: %s", stats["reverted"])
        stats["latency_ratio"] = round(tried[0][1].ratio, 3) if tried else 0.0
        stats["regions"] = {r.describe(): "float: no set of regions measured faster than FP32" for r in regs}
        return None, skip
    label, cand, cfg_skip, sp, why, _ = best
    for n in cfg_skip - skip:
        stats["left_float"][n] = why.get(n, "cost")
    stats["cost_choice"] = label
    stats["latency_ratio"] = round(sp.ratio, 3)
    stats["latency_ratio_interval"] = [round(sp.lo, 3), round(sp.hi, 3)]
    stats["regions"] = {}
    for r in regs:
        kept = [n for n in r.nodes if n not in cfg_skip]
        if not kept:
            stats["regions"][r.describe()] = "float: " + why.get(r.nodes[0], "cost").removeprefix("cost: ")
        elif len(kept) < len(r.nodes):
            stats["regions"][r.describe()] = (f"int8 ({len(kept)}/{len(r.nodes)} nodes; "
                                              f"the rest float: no speedup from INT8 there)")
        else:
            stats["regions"][r.describe()] = f"int8 (in the chosen set '{label}', measured {sp.describe()})"
    return cand, cfg_skip


def _configs(builder: Builder, skip: set[str], regions: list[Region]):
    """(label, nodes kept float, why per node) in the fixed order the cost check tries
    them: everything; the convolutions that only add a quantize (see _float_fed_convs);
    element-wise/pooling ops float; then the regions whose estimated
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
    lead = _float_fed_convs(builder, skip)
    if lead and new(skip | set(lead)):
        yield "convolutions on float inputs float (input and float-fed depthwise)", skip | set(lead), lead
    cheap = {n for n, node in builder.candidates.items() if node.op in CHEAP_OPS} - skip
    if cheap and new(skip | cheap):
        yield "element-wise/pooling ops float", skip | cheap, dict.fromkeys(cheap, "cost: no speedup from INT8 here")
    if len(regions) < 2:
        return
    for k in QDQ_COSTS:
        losing = [r for r in regions if r.gain(k) <= 0]
        if not losing or len(losing) == len(regions):
            continue
        cfg = skip | {n for r in losing for n in r.nodes}
        if new(cfg):
            why = {n: f"cost: region {r.label} estimated to lose ({r.gain(k) / 1e6:+.2f} M MAC-equivalents "
                      f"at Q/DQ cost {k:g})" for r in losing for n in r.nodes}
            yield f"regions with estimated gain > 0 at Q/DQ cost {k:g} ({len(regions) - len(losing)}/{len(regions)})", cfg, why


def _float_fed_convs(builder: Builder, skip: set[str]) -> dict[str, str]:
    """Convolutions at the model's float entry whose INT8 form would add a quantize and
    save little: those reading a graph input (few channels: onnxruntime's INT8 kernel is
    bound by its im2col, 2x slower than NCHWc float on MobileNetV3's 3-channel stem), then
    depthwise convolutions whose input is still float, computed from the graph inputs by
    float ops only (INT8 depthwise kernels are no faster than float: 3x3 ones measured 2-3x
    slower). Node -> why."""
    g = gs.import_onnx(builder.proto)
    floating = {t.name for t in g.inputs}  # computed from the graph inputs by float ops only
    why: dict[str, str] = {}
    for n in g.nodes:  # topological order
        acts = [t for t in n.inputs if t.name and not isinstance(t, gs.Constant)]
        is_float = bool(acts) and all(t.name in floating for t in acts)
        if n.name in builder.candidates and n.name not in skip:
            w = n.inputs[1] if n.op == "Conv" and len(n.inputs) > 1 else None
            depthwise = (isinstance(w, gs.Constant) and int(n.attrs.get("group", 1)) > 1
                         and w.values.shape[1] == 1)
            if not is_float or w is None:
                continue
            if n.inputs[0].name in {t.name for t in g.inputs}:
                why[n.name] = "cost: convolution on a graph input (INT8 im2col-bound, adds a quantize)"
            elif depthwise:
                why[n.name] = "cost: depthwise convolution on a float input (INT8 saves nothing, adds a quantize)"
            else:
                continue
        if is_float:
            floating |= {t.name for t in n.outputs}
    return why


def _feeds(proto: onnx.ModelProto, feed: dict) -> list[dict]:
    """The inputs the cost check times: the sample, and its first row alone when every
    input has a free leading (batch) dim and the sample holds more than one row."""
    free = all(
        vi.type.tensor_type.shape.dim and not vi.type.tensor_type.shape.dim[0].HasField("dim_value")
        for vi in proto.graph.input if vi.name in feed)
    rows = {np.asarray(v).shape[0] if np.asarray(v).ndim else 1 for v in feed.values()}
    if free and len(rows) == 1 and rows.pop() > 1:
        return [{k: np.asarray(v)[:1] for k, v in feed.items()}, feed]
    return [feed]
