"""Hints after a pipeline: fusions the model still has the pattern for, but that did not
fire because of the model's opset or the target, with the option that enables them.

    fusion_hints(model, ctx)   # -> ["2 GELU (Erf) ... --allow-opset-upgrade", ...]

The hints look at what is left in the optimized model (op types, the single-consumer
chains the fusions match, and the default-domain opset), not inside the fusion passes:
when the pattern's ops are still there, the fusion did not happen. The opset each fusion
needs is the `emits` its rule in passes/fusion/ declares (HardSwish 14, LayerNormalization 17, Gelu 20).
"""

from __future__ import annotations

from collections import Counter

import onnx

ORT_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}


def _nodes(model) -> tuple[list[tuple[str, list[str], list[str]]], int]:
    """(op, inputs, outputs) of the main graph's nodes, and the default-domain opset, for a
    ModelProto or a graphopt Model."""
    if isinstance(model, onnx.ModelProto):
        nodes = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node
                 if n.domain in ("", "ai.onnx")]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        return nodes, opset
    nodes = [(n.op, [t.name for t in n.inputs], [t.name for t in n.outputs])
             for n in model.graph.nodes if n.domain in ("", "ai.onnx", None)]
    return nodes, model.opset() or 0


def fusion_hints(model, ctx=None, ran: set[str] | None = None) -> list[str]:
    """One line per fusion that an option would enable. `ctx` gives the target and whether
    an opset upgrade was allowed; `ran` the names of the passes that ran (None: all)."""
    if model is None:
        return []
    target = getattr(ctx, "target", "onnx") if ctx is not None else "onnx"
    upgrade = getattr(ctx, "allow_opset_upgrade", False) if ctx is not None else False
    nodes, opset = _nodes(model)
    ops = Counter(op for op, _, _ in nodes)
    consumers: Counter = Counter(t for _, ins, _ in nodes for t in ins)
    by_input: dict[str, str] = {}
    for op, ins, _ in nodes:
        for t in ins:
            by_input.setdefault(t, op)

    def did(name: str) -> bool:
        return ran is None or name in ran

    hints = []

    def opset_hint(what: str, need: int, extra: str = "") -> None:
        if upgrade:
            hints.append(f"{what} needs opset {need}; the model is opset {opset} and the upgrade to "
                         f"{need} did not happen (see the log's warning){extra}")
        else:
            hints.append(f"{what} needs opset {need}; the model is opset {opset}: add "
                         f"--allow-opset-upgrade to let graphopt convert it{extra}")

    producer: dict[str, tuple[str, list[str]]] = {}
    for op, ins, outs in nodes:
        for t in outs:
            producer[t] = (op, ins)

    def made_by(t: str, op: str) -> list[str] | None:
        """The inputs of the node of type `op` producing `t`, else None."""
        p = producer.get(t)
        return p[1] if p and p[0] == op else None

    def is_layernorm_div(ins: list[str]) -> bool:
        # (x - mean) / Sqrt(ReduceMean(...) + eps): the exporters' LayerNorm
        sq = made_by(ins[1], "Sqrt") if len(ins) == 2 else None
        add = made_by(sq[0], "Add") if sq else None
        return bool(add) and any(made_by(t, "ReduceMean") is not None for t in add)

    def is_hardswish_mul(ins: list[str]) -> bool:
        if len(ins) != 2:
            return False
        return any((made_by(b, "HardSigmoid") or [None])[0] == a for a, b in (ins, ins[::-1]))

    if did("fuse-layernorm") and opset < 17:
        n = sum(1 for op, ins, _ in nodes if op == "Div" and is_layernorm_div(ins))
        if n:
            opset_hint(f"{n} LayerNorm subgraph(s) (ReduceMean/Sqrt) left unfused: LayerNormalization", 17)
    if did("fuse-gelu") and ops["Erf"] and target != "ort" and opset < 20:
        opset_hint(f"{ops['Erf']} GELU subgraph(s) (Erf form) left unfused: Gelu", 20,
                   "; or --target ort for onnxruntime's com.microsoft Gelu")
    if did("fuse-hardswish") and opset < 14:
        n = sum(1 for op, ins, _ in nodes if op == "Mul" and is_hardswish_mul(ins))
        if n:
            opset_hint(f"{n} x*HardSigmoid(x) left unfused: HardSwish", 14)
    if target != "ort":
        pairs = sum(1 for op, _, outs in nodes if op in ("Conv", "Gemm") and outs
                    and consumers[outs[0]] == 1 and by_input.get(outs[0]) in ORT_ACTIVATIONS)
        if did("fuse-ort-activation") and pairs:
            hints.append(f"{pairs} Conv/Gemm + activation pair(s) fuse into onnxruntime's FusedConv/"
                         "FusedGemm only for onnxruntime: add --target ort (the model then needs "
                         "onnxruntime to run)")
        skip = sum(1 for op, _, outs in nodes if op == "Add" and outs
                   and by_input.get(outs[0]) == "LayerNormalization")
        if did("fuse-skip-layernorm") and skip:
            hints.append(f"{skip} Add + LayerNormalization pair(s) fuse into SkipLayerNormalization "
                         "only for onnxruntime: add --target ort")
    return hints
