"""A small ONNX -> torch interpreter for fine-tuning (pass `distill`).

`TorchGraph(proto)` runs an ONNX graph node by node with torch functions, so autograd
gives the gradients of the graph's own weights. Weights are keyed by their ONNX tensor
name (initializer or Constant-node output), which is how the trained values are written
back: the graph that trains is the graph that ships, nothing is converted.

Trainable: the float weights and biases of Conv, Gemm and MatMul (and ConvTranspose is
not supported). A weight stored as integers behind a DequantizeLinear (a `quant` output)
is trained as its dequantized float value and fake-quantized in the forward pass
(straight-through gradient); it is written back re-quantized with its own scale and zero
point. Activations' QuantizeLinear/DequantizeLinear pairs are fake-quant with a
straight-through gradient. BatchNormalization runs in inference mode (running
statistics, never updated). An op without a rule here is refused with its name: the
pass never trains a different graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt import GraphoptError

import torch

from .ops import _QRANGE, OPS, _ste_round

_TRAINABLE_SLOTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1)}


class _QWeight:
    """An integer weight behind DequantizeLinear, trained as float (fake-quant)."""

    def __init__(self, name, q, scale, zp, axis, qtype):
        self.name, self.scale, self.zp, self.axis, self.qtype = name, scale, zp, axis, qtype
        self.lo, self.hi = _QRANGE[qtype]
        self.q_dtype = q.numpy().dtype

    def _bshape(self, ndim):
        if self.scale.ndim == 0:
            return self.scale, self.zp
        shape = [1] * ndim
        shape[self.axis % ndim] = -1
        return self.scale.reshape(shape), self.zp.reshape(shape)

    def fake(self, w):
        s, z = self._bshape(w.ndim)
        q = torch.clamp(_ste_round(w / s) + z, self.lo, self.hi)
        return (q - z) * s

    def quantize(self, w: np.ndarray) -> np.ndarray:
        s, z = self._bshape(w.ndim)
        s, z = s.detach().double().numpy(), z.detach().double().numpy()
        return np.clip(np.round(w.astype(np.float64) / s) + z, self.lo, self.hi).astype(self.q_dtype)


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class TorchGraph(torch.nn.Module):
    """The ONNX graph as a torch module; `params` are the trainable weights by name."""

    def __init__(self, proto: onnx.ModelProto, extra_outputs=(), trainable: bool = True):
        super().__init__()
        g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                raise GraphoptError(f"distill: no training rule for op '{node.domain}.{node.op_type}' "
                                    f"(node '{node.name}')")
            if node.op_type not in OPS:
                raise GraphoptError(f"distill: no training rule for op '{node.op_type}' (node '{node.name}')")
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise GraphoptError(f"distill: op '{node.op_type}' with a subgraph is not supported (node '{node.name}')")
        self.nodes = list(g.node)
        self.inputs = [i.name for i in g.input]
        self.outputs = [o.name for o in g.output] + [n for n in extra_outputs if n not in {o.name for o in g.output}]
        self.consts: dict[str, torch.Tensor] = {}
        for t in g.initializer:
            self.consts[t.name] = torch.from_numpy(np.array(numpy_helper.to_array(t)))
        self.inputs = [n for n in self.inputs if n not in self.consts]
        for node in g.node:
            if node.op_type == "Constant":
                a = _attrs(node)
                if "value" in a:
                    self.consts[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))
                else:
                    key = next(iter(a))
                    self.consts[node.output[0]] = torch.tensor(a[key])
        self.params = torch.nn.ParameterDict()
        self.keys: dict[str, str] = {}    # onnx name -> ParameterDict key
        self.qweights: dict[str, _QWeight] = {}
        self.dq_of: dict[str, str] = {}   # DequantizeLinear output -> weight name
        if trainable:
            self._find_trainable(g)

    def _find_trainable(self, g):
        producer = {o: n for n in g.node for o in n.output}
        for node in g.node:
            for slot in _TRAINABLE_SLOTS.get(node.op_type, ()):
                if slot >= len(node.input) or not node.input[slot]:
                    continue
                name = node.input[slot]
                if name in self.consts and self.consts[name].is_floating_point():
                    self._add_param(name, self.consts[name])
                    continue
                dq = producer.get(name)
                if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.consts:
                    q = self.consts[dq.input[0]]
                    scale = self.consts.get(dq.input[1])
                    zp = self.consts.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
                    qtype = next((t.data_type for t in g.initializer if t.name == dq.input[0]), None)
                    if scale is None or qtype not in _QRANGE or dq.input[0] in self.qweights:
                        continue
                    zp_f = (zp.double() if zp is not None else torch.zeros_like(scale)).float()
                    qw = _QWeight(dq.input[0], q, scale.float(), zp_f, _attrs(dq).get("axis", 1), qtype)
                    s, z = qw._bshape(q.dim())
                    self.qweights[dq.input[0]] = qw
                    self.dq_of[dq.output[0]] = dq.input[0]
                    self._add_param(dq.input[0], (q.float() - z) * s)

    def _add_param(self, name, value):
        if name in self.keys:
            return
        key = f"p{len(self.keys)}"
        self.keys[name] = key
        self.params[key] = torch.nn.Parameter(value.detach().clone().float())

    def trained(self) -> dict[str, np.ndarray]:
        """The trained weights by ONNX name, in the dtype they are stored in."""
        out = {}
        for name, key in self.keys.items():
            w = self.params[key].detach().numpy()
            if name in self.qweights:
                out[name] = self.qweights[name].quantize(w)
            else:
                out[name] = w.astype(self.consts[name].numpy().dtype)
        return out

    def forward(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        env = dict(self.consts)
        for name, key in self.keys.items():
            if name not in self.qweights:
                env[name] = self.params[key]
        env.update(feeds)
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            if node.op_type == "DequantizeLinear" and node.output[0] in self.dq_of:
                name = self.dq_of[node.output[0]]
                env[node.output[0]] = self.qweights[name].fake(self.params[self.keys[name]])
                continue
            args = [env[i] if i else None for i in node.input]
            outs = OPS[node.op_type](self, node, args, _attrs(node))
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = v
        return [env[n] for n in self.outputs]


