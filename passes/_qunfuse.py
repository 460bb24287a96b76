"""Undoing onnxruntime's fusions before quantization (quant's first step with prefuse).

`fuse --target ort` emits com.microsoft FusedConv / FusedGemm (a convolution or Gemm with
its activation). Quantization works on standard ops, where a Relu/Clip after a quantized
op folds into the Q range, so quant splits them back on its working copy; onnxruntime
fuses whatever stays float again when it loads the model.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import Model
from graphopt.ir import fresh_namer

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
