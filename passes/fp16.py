"""FP16 conversion (pass `fp16`) with IO kept in float32 and an accuracy-aware block list.

Every float32 node not on the block list computes in float16: its float32 constant
inputs become float16 copies (values beyond the float16 range are clamped to +-65504,
tiny non-zeros flushed to the smallest normal), and Cast nodes are inserted wherever a
float16 and a float32 region meet, including at the graph inputs and outputs, whose
types are kept. Blocked nodes (and nodes carrying subgraphs, custom-domain nodes, and
nodes whose types could not be inferred) stay float32 with their subgraphs untouched,
so subgraphs are converted consistently: not at all.

The default block list holds ops whose float16 results are unsafe (ranges/indices,
cumulative sums, random, NMS/TopK/RoiAlign selection) or whose dtype comes from an
attribute. onnxruntime's CPU provider lacks float16 kernels for most ops and inserts
casts around them itself, so FP16 on x86 CPUs is a size (2x smaller) rather than a speed
win; the pass is meant for GPU/NPU targets and storage.

With accuracy=true and samples, the nodes whose float16 error breaks the budget are
found by bisection over the node list (O(k log n) runs for k bad nodes rather than one
run per node) and blocked.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import Model, Option, Pass, PassContext, PassResult, register_pass, runtime
from graphopt.ir import export_graph, fresh_namer, iter_graphs, subgraphs_of
from graphopt.pipeline import budget_options

from . import _lossy
from ._budget import describe, layer_errors
from ._lossy import planning_graph

log = logging.getLogger(__name__)

DEFAULT_BLOCK = [
    "Range", "CumSum", "NonMaxSuppression", "TopK", "RoiAlign", "Cast", "CastLike",
    "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Bernoulli", "Upsample", "Loop", "If", "Scan",
    "SequenceConstruct", "SplitToSequence", "ConcatFromSequence", "Constant", "Einsum",
    "STFT", "DFT",
    # quantized regions stay as they are (their scales are float32 before opset 19)
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul",
]
# inputs that stay float32 whatever the node's compute type
KEEP_F32_INPUTS = {"Resize": {1, 2}, "Dropout": {1}}
FP16_MAX = 65504.0


def to_fp16(v: np.ndarray) -> tuple[np.ndarray, int]:
    """float16 copy of v with out-of-range values clamped; returns (array, clamped count)."""
    v = v.astype(np.float32)
    finite = np.isfinite(v)
    over = finite & (np.abs(v) > FP16_MAX)
    tiny = finite & (v != 0) & (np.abs(v) < np.finfo(np.float16).tiny)
    out = np.where(over, np.sign(v) * FP16_MAX, v)
    out = np.where(tiny, np.sign(v) * np.finfo(np.float16).tiny, out)
    return np.asarray(out.astype(np.float16)), int(over.sum())


@register_pass("fp16")
class Float16(Pass):
    """Convert compute and weights to float16, IO types kept, unsafe ops blocked."""

    contract = "lossy"
    budget = {"rel_l2": 0.01}
    options = {
        "block": Option(list, list(DEFAULT_BLOCK), "op types kept in float32"),
        "block_nodes": Option(list, [], "node names kept in float32"),
        "accuracy": Option(bool, True, "with samples: block nodes until the budget holds"),
        **budget_options(budget),
        "measure": Option(bool, True, "time float16 against float32 in onnxruntime and warn when it is slower"),
        "max_trials": Option(int, 48, "at most this many model runs for the accuracy search"),
    }

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        budget = self.budget  # the declared budget, resolved for this run by the pass manager
        fp32 = model.to_onnx()
        conv = _Converter(fp32, set(self.block), set(self.block_nodes))
        if not conv.eligible:
            return PassResult(False, {"converted": 0})
        blocked: set[str] = set()
        stats: dict = {}
        out = conv.build(blocked)
        samples, generated = _lossy.feeds(fp32, ctx, 1)
        if self.accuracy and not generated:
            evals = samples[:8]
            err = _lossy.trial(budget, _lossy.outputs(fp32, evals), evals, conv.build, "fp16")
            e = err(blocked)
            stats["budget"] = describe(budget)
            stats["budget_use_all_fp16"] = round(e, 6)  # 1.0 = exactly at the budget
            if e > 1.0:
                blocked = _lossy.bisect_block(conv.eligible, err, 1.0, self.max_trials)
                out = conv.build(blocked)
                stats["blocked_for_accuracy"] = sorted(blocked)
        problem = runtime.check(out)
        if problem:
            stats["skipped"] = "fp16 model invalid: " + problem
            log.warning("fp16: %s; model left unchanged", stats["skipped"])
            return PassResult(False, stats)
        stats.update(converted=len(conv.eligible) - len(blocked), kept_float32=conv.kept + len(blocked),
                     clamped_values=conv.clamped)
        from . import _timing

        feed = samples[0]
        stats["per_layer_error"] = layer_errors(fp32, out, feed)
        if self.measure:
            # informative only (the model is converted either way): the same paired-rounds
            # rule and deployment threads as quant's cost check, so the warning does not
            # come and go with noise
            with _timing.Timer() as timer:
                sp = _timing.paired_speedup(timer.session(fp32), timer.session(out), feed, need=1.0)
            stats["latency_ratio"] = round(sp.ratio, 3)  # > 1: float16 is faster here
            stats["latency_ratio_interval"] = [round(sp.lo, 3), round(sp.hi, 3)]
            if sp.verdict(1.0) == "slower":
                log.warning("fp16: the float16 model runs %.2fx slower than float32 in onnxruntime on this CPU "
                            "(interval of the speed-up [%.2f, %.2f]); float16 pays off on GPUs/NPUs with "
                            "half-precision units (converted anyway, as asked)", 1 / sp.ratio, sp.lo, sp.hi)

        model.replace_with(Model.from_onnx(out))
        return PassResult(True, stats)


class _Converter:
    def __init__(self, proto: onnx.ModelProto, block: set[str], block_nodes: set[str]):
        inferred, g = planning_graph(proto)
        self.proto = export_graph(g, inferred)
        self.eligible: list[str] = []
        self.kept = 0
        for n in g.nodes:
            ok = (n.op not in block and n.name not in block_nodes and n.domain in (None, "", "ai.onnx")
                  and not subgraphs_of(n) and _float_node(n))
            if ok:
                self.eligible.append(n.name)
            else:
                self.kept += 1
        self.clamped = 0

    def build(self, blocked: set[str]) -> onnx.ModelProto:
        g = gs.import_onnx(self.proto)
        namer = fresh_namer(g, "fp16")
        half = {n.name for n in g.nodes if n.name in set(self.eligible) - blocked}
        cast_cache: dict[tuple[str, int], gs.Variable] = {}
        const_cache: dict[str, gs.Constant] = {}
        self.clamped = 0

        def cast(t, to):
            key = (t.name, to)
            if key not in cast_cache:
                dt = np.float16 if to == onnx.TensorProto.FLOAT16 else np.float32
                v = gs.Variable(namer(t.name + ("_f16" if dt == np.float16 else "_f32")), dtype=dt, shape=t.shape)
                g.nodes.append(gs.Node("Cast", namer("Cast"), attrs={"to": to}, inputs=[t], outputs=[v]))
                cast_cache[key] = v
            return cast_cache[key]

        # tensors produced in fp16 (by a converted node): float outputs become fp16
        produced16: set[str] = set()
        nodes = list(g.nodes)
        for n in nodes:
            if n.name in half:
                for o in n.outputs:
                    if o.dtype == np.float32:
                        produced16.add(o.name)
        for n in nodes:
            keep = KEEP_F32_INPUTS.get(n.op, set())
            for i, t in enumerate(n.inputs):
                if not t.name:
                    continue
                if n.name in half and i not in keep:
                    if isinstance(t, gs.Constant):
                        if t.values.dtype == np.float32:
                            if t.name not in const_cache:
                                v16, c = to_fp16(t.values)
                                self.clamped += c
                                const_cache[t.name] = gs.Constant(namer(t.name + "_f16"), v16)
                            n.inputs[i] = const_cache[t.name]
                    elif t.dtype == np.float32 and t.name not in produced16:
                        n.inputs[i] = cast(t, onnx.TensorProto.FLOAT16)
                else:
                    if not isinstance(t, gs.Constant) and t.name in produced16:
                        n.inputs[i] = cast(t, onnx.TensorProto.FLOAT)
        # converted nodes' float outputs become float16 (subgraphs, kept float32, read a
        # float32 cast of them: _fix_subgraph_reads)
        for n in nodes:
            if n.name in half:
                for o in n.outputs:
                    if o.name in produced16:
                        o.dtype = np.float16
        # graph outputs keep float32
        for k, t in enumerate(list(g.outputs)):
            if t.name in produced16:
                new16 = gs.Variable(namer(t.name + "_f16"), dtype=np.float16, shape=t.shape)
                prod = t.inputs[0]
                prod.outputs[prod.outputs.index(t)] = new16
                for c in list(t.outputs):
                    for i, x in enumerate(c.inputs):
                        if x is t:
                            c.inputs[i] = new16
                t.dtype = np.float32
                g.nodes.append(gs.Node("Cast", namer("Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[new16], outputs=[t]))
        _fix_subgraph_reads(g, produced16, cast)
        g.cleanup(remove_unused_graph_inputs=False)
        g.toposort()
        return export_graph(g, self.proto)


def _fix_subgraph_reads(g, produced16, cast):
    """Subgraphs (kept fp32) read outer tensors by name: point them at an fp32 cast."""
    for n in g.nodes:
        for sub in subgraphs_of(n):
            for sg in iter_graphs(sub):
                for node in sg.nodes:
                    for i, t in enumerate(node.inputs):
                        if t.name in produced16 and not isinstance(t, gs.Constant):
                            outer = g.tensors().get(t.name)
                            if outer is not None:
                                node.inputs[i] = cast(outer, onnx.TensorProto.FLOAT)


def _float_node(n) -> bool:
    """A node computing in float32: some float32 input or output, all dtypes known."""
    ts = [t for t in list(n.inputs) + list(n.outputs) if t.name]
    if any(t.dtype is None for t in ts if not isinstance(t, gs.Constant)):
        return False
    return any(t.dtype == np.float32 for t in n.outputs)

