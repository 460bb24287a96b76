"""Cleanup passes (group `clean`): remove what does not contribute, fold what is constant.

All of them are `exact`: the optimized model computes bit-identical outputs.

Decisions worth knowing:

* `noop` removes `x*1`, `x/1` (exact in IEEE arithmetic, NaN stays NaN) and `x-0`
  (x - (+0) == x for every x including -0.0), but NOT `x+0`: -0.0 + 0.0 == +0.0, so
  that rewrite would change the sign bit and is not bit-exact.
* `prune-initializers` drops initializers that the model also listed as graph inputs
  (the IR<4 style "overridable default"). This is what onnxruntime and onnx-simplifier
  recommend; it changes the model's input signature, so the count is reported and the
  model's ir_version is raised to 4 where it was lower.
* `fold-constants` evaluates with onnxruntime itself (one session for all candidate
  nodes of a graph), so folded values are the very numbers the runtime would compute.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import Model, Option, Pass, PassContext, PassResult, register_group, register_pass
from graphopt.ir import (const_value, is_tensor, iter_graphs, remove_dead_nodes, replace_all_uses,
                          sort_nodes, subgraphs_of, why_not_replace)
from graphopt.runtime import session

from ._cse import RANDOM_OPS, dedup_constants, drop_nodes, merge_identical_nodes

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------ dce


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove nodes whose outputs reach no graph output (subgraph reads count as uses)."""

    contract = "exact"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        removed, = _each_graph(model, remove_dead_nodes)
        # Dead nodes are detached, so their tensors no longer export as value_info.
        return PassResult(removed > 0, {"nodes_removed": removed})


def _each_graph(model: Model, *steps) -> list[int]:
    """Run the steps, in order, on each graph (the main graph and every subgraph, as
    listed before any change); the counts each step returned, summed per step."""
    counts = [0] * len(steps)
    for graph in list(iter_graphs(model.graph)):
        for i, step in enumerate(steps):
            counts[i] += step(graph)
    return counts


# ---------------------------------------------------------------- prune-initializers


@register_pass("prune-initializers")
class PruneInitializers(Pass):
    """Drop unused initializers and initializers also listed as graph inputs (IR<4 style)."""

    contract = "exact"
    options = {"keep_inputs": Option(bool, False, "keep initializers listed as graph inputs")}

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        dropped_inputs = 0
        if model.initializer_inputs and not self.keep_inputs:
            dropped_inputs = len(model.initializer_inputs)
            model.initializer_inputs = []
            if model.ir_version < 4:
                model.ir_version = 4
        return PassResult(dropped_inputs > 0,
                          {"initializer_inputs_dropped": dropped_inputs})


# ------------------------------------------------------------------------------ noop


def _static_shape(t: gs.Tensor):
    if isinstance(t, gs.Constant):
        return tuple(t.shape)
    s = t.shape
    if s is None or any(not isinstance(d, int) or d < 0 for d in s):
        return None
    return tuple(s)


def _same_type_and_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    sa, sb = _static_shape(a), _static_shape(b)
    return sa is not None and sa == sb and a.dtype is not None and np.dtype(a.dtype) == np.dtype(b.dtype) \
        if b.dtype is not None else False


def _scalar_all(t: gs.Tensor, value: float) -> bool:
    if isinstance(t, gs.Constant) and int(np.prod(t.shape, dtype=np.int64)) > 4096:
        return False  # do not load a large weight's values just to look at them
    v = const_value(t)
    if v is None or v.size == 0 or v.size > 4096:
        return False
    if v.dtype.kind not in "fiu":
        return False
    if value == 0.0 and v.dtype.kind == "f":
        # require +0.0 (x - (-0.0) would turn -0 into +0)
        return bool(np.all(v == 0) and not np.any(np.signbit(v)))
    return bool(np.all(v == value))


def _noop_source(node: gs.Node, graph: gs.Graph) -> gs.Tensor | None:
    """The tensor a no-op node passes through, or None if the node is not a no-op."""
    op = node.op
    if (node.domain or "") not in ("", "ai.onnx") or subgraphs_of(node):
        return None
    ins = [t for t in node.inputs]
    outs = node.outputs
    if not ins or not outs or not ins[0].name:
        return None
    x, y = ins[0], outs[0]
    if op == "Identity":
        return x
    if op == "Dropout":
        if len(outs) > 1 and outs[1].name and (outs[1].outputs or outs[1] in graph.outputs):
            return None
        if len(ins) >= 3 and ins[2].name:
            tm = const_value(ins[2])
            if tm is None or bool(np.any(tm)):
                return None
        if node.attrs.get("is_test", 1) == 0 and graph.opset is not None and graph.opset < 7:
            return None
        return x
    if len(outs) != 1:
        if op == "Split" and len(outs) == 1:
            return x
        return None
    if op == "Cast":
        to = node.attrs.get("to")
        if x.dtype is None or to is None:
            return None
        try:
            same = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype)) == to
        except Exception:
            return None
        return x if same else None
    if op in ("Concat", "Split", "Min", "Max", "Sum", "Mean") and len([t for t in ins if t.name]) == 1 \
            and (op != "Split" or len(ins) == 1 or not ins[1].name or const_value(ins[1]) is not None):
        return x
    if op == "Transpose":
        perm = node.attrs.get("perm")
        if perm is not None and list(perm) == list(range(len(perm))):
            return x
        shape = _static_shape(x)
        if perm is None and shape is not None and len(shape) <= 1:
            return x
        return None
    if op in ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Pad", "Slice", "Flatten"):
        # Only when the static shapes prove the output equals the input element by element.
        if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten") or op == "Expand":
            return x if _same_type_and_shape(x, y) else None
        if op == "Pad":
            pads = const_value(ins[1]) if len(ins) > 1 else np.array(node.attrs.get("pads", [1]))
            if pads is not None and pads.size and not np.any(pads):
                return x
            return None
        if op == "Slice":
            # Same shape with unit steps means everything is taken in order; a negative
            # step keeps the shape but reverses, so steps must be absent or all 1.
            steps = const_value(ins[4]) if len(ins) >= 5 and ins[4].name else np.ones(1)
            if len(ins) >= 3 and steps is not None and np.all(steps == 1) and _same_type_and_shape(x, y):
                return x
            return None
    if op in ("Mul", "Div", "Sub") and len(ins) == 2:
        unit = 0.0 if op == "Sub" else 1.0
        if _scalar_all(ins[1], unit) and _same_type_and_shape(x, y):
            return x
        if op == "Mul" and _scalar_all(ins[0], 1.0) and _same_type_and_shape(ins[1], y):
            return ins[1]
    return None


@register_pass("noop")
class RemoveNoOps(Pass):
    """Remove nodes that pass a tensor through unchanged (Identity, inference Dropout, ...)."""

    contract = "exact"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        removed, = _each_graph(model, _remove_noops)
        return PassResult(removed > 0, {"nodes_removed": removed})


def _remove_noops(graph: gs.Graph) -> int:
    removed = 0
    for node in list(graph.nodes):
        src = _noop_source(node, graph)
        if src is None:
            continue
        y = node.outputs[0]
        reason = why_not_replace(y, src, graph)
        if reason is not None:
            log.debug("noop: keeping %s '%s': %s", node.op, node.name, reason)
            continue
        node.inputs.clear()  # detach first: `src` may take over y's name below
        node.outputs.clear()
        graph.nodes.remove(node)
        replace_all_uses(y, src, graph)
        removed += 1
    return removed


# ---------------------------------------------------------------------- fold-constants


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant (one onnxruntime session per graph)."""

    contract = "exact"
    options = {
        "max_size": Option(int, 1 << 20, "largest folded constant in bytes"),
        "max_growth": Option(float, 2.0, "never fold when output bytes exceed inputs' bytes by this factor (beyond 1 KiB)"),
    }

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        shapes, folded = _each_graph(model, _fold_shapes, lambda graph: self._fold(model, graph))
        return PassResult(folded + shapes > 0, {"nodes_folded": folded, "shapes_folded": shapes})

    def _fold(self, model: Model, graph: gs.Graph) -> int:
        const_names: dict[str, gs.Constant] = {}
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant):
                const_names[t.name] = t
        derived: set[str] = set()  # outputs of candidate nodes
        cands: list[gs.Node] = []
        sort_nodes(graph)
        for node in graph.nodes:
            if (node.domain or "") not in ("", "ai.onnx") or node.op in RANDOM_OPS or subgraphs_of(node):
                continue
            ins = [t for t in node.inputs if t.name]
            if not all(isinstance(t, gs.Constant) or t.name in derived for t in ins):
                continue
            if any(isinstance(t, gs.Constant) and t.dtype is None for t in ins):
                continue
            cands.append(node)
            derived.update(t.name for t in node.outputs if t.name)
        if not cands:
            return 0
        values = _evaluate(model, cands, graph)
        if values is None:
            return 0
        folded = 0
        for node in cands:
            outs = [t for t in node.outputs if t.name]
            if not outs or not all(t.name in values for t in outs):
                continue
            # Only tensors become constants: a sequence, optional or map stays computed
            # (decided by the value's type, and the runtime must agree it is an array).
            if not all(is_tensor(t, graph.opset) and isinstance(values[t.name], np.ndarray) for t in outs):
                continue
            if _narrows_float(node, [values[t.name] for t in outs], values):
                continue
            in_bytes = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
                           for t in node.inputs if isinstance(t, gs.Constant) and t.shape is not None)
            out_bytes = sum(values[t.name].nbytes for t in outs)
            if out_bytes > self.max_size or (out_bytes > 1024 and out_bytes > self.max_growth * max(in_bytes, 1)):
                continue
            for t in outs:
                v = values[t.name]
                t.to_constant(v)
            node.outputs.clear()
            node.inputs.clear()
            folded += 1
        graph.nodes = [n for n in graph.nodes if n.outputs]
        return folded


def _narrows_float(node: gs.Node, outs: list, values: dict) -> bool:
    """A float32/64 -> float16 conversion (Cast, CastLike) fed by a computed value.
    onnxruntime's CPU provider runs float16 ops in float32 and drops the Cast pair it
    inserts around them, so at run time the rounding to float16 does not happen; a
    folded constant would carry it and change the model's outputs (seen on onnx's
    attention_*_fp16_expanded tests). Such a node is left to run."""
    if not any(np.asarray(v).dtype == np.float16 for v in outs):
        return False
    for t in node.inputs:
        dt = t.values.dtype if isinstance(t, gs.Constant) else (
            np.asarray(values[t.name]).dtype if isinstance(values.get(t.name), np.ndarray) else t.dtype)
        try:
            if t.name and np.dtype(dt).kind == "f" and np.dtype(dt).itemsize > 2:
                return True
        except TypeError:
            continue
    return False


def _fold_shapes(graph: gs.Graph) -> int:
    folded = []
    for node in list(graph.nodes):
        if node.op == "Shape" and (node.domain or "") in ("", "ai.onnx") and node.inputs:
            x = node.inputs[0]
            shape = _static_shape(x)
            if shape is None:
                continue
            start = node.attrs.get("start", 0)
            end = node.attrs.get("end", None)
            val = np.array(shape[start:end] if end is not None else shape[start:], dtype=np.int64)
            node.outputs[0].to_constant(val)
            folded.append(node)
    return drop_nodes(graph, folded)


def _evaluate(model: Model, nodes: list[gs.Node], graph: gs.Graph) -> dict[str, np.ndarray] | None:
    """Run `nodes` (a closed, constant-fed set) in one onnxruntime session."""
    consts: dict[str, gs.Constant] = {}
    for node in nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name:
                consts[t.name] = t
    outs: list[gs.Variable] = [t for node in nodes for t in node.outputs if t.name]
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    pnodes = [OnnxExporter.export_node(n) for n in nodes]
    inits = [OnnxExporter.export_tensor_proto(c) for c in consts.values()]
    outputs = [onnx.helper.make_value_info(t.name, onnx.TypeProto()) for t in outs]
    pg = onnx.helper.make_graph(pnodes, "fold", [], outputs, initializer=inits)
    opsets = [onnx.helper.make_opsetid("", model.opset("") or 17)]
    pm = onnx.helper.make_model(pg, opset_imports=opsets, ir_version=max(model.ir_version, 4))
    try:
        sess = session(pm, threads=1)  # graph optimizations off, as the nodes are written
        res = sess.run([t.name for t in outs], {})
    except Exception as e:
        log.debug("constant folding batch failed (%s); folding node by node", e)
        if len(nodes) == 1:
            return None
        values = {}
        for node in nodes:
            if all(isinstance(t, gs.Constant) or not t.name for t in node.inputs):
                v = _evaluate(model, [node], graph)
                if v:
                    values.update(v)
        return values
    # A sequence comes back as a list, an empty optional as None: never turned into arrays.
    return {t.name: r for t, r in zip(outs, res)}


# ------------------------------------------------------------------------------- cse


@register_pass("cse")
class CommonSubexpressions(Pass):
    """Merge identical nodes (same op, attributes, inputs) and identical initializers."""

    contract = "exact"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        consts, nodes = _each_graph(model, dedup_constants, merge_identical_nodes)
        return PassResult(consts + nodes > 0, {"nodes_merged": nodes, "initializers_merged": consts})


register_group("clean", ["noop", "fold-constants", "cse", "dce", "prune-initializers"],
               "remove dead and no-op nodes, fold constants, merge duplicates",
               fixed_point=True, replace=True)
