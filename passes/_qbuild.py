"""Building quantized models (pass `quant`): the plan made once, then a model for any set
of nodes kept in float.

_Builder plans on the float model (shape inference, node names, the candidate nodes per
mode) and builds:
- static (QDQ): QuantizeLinear/DequantizeLinear around each candidate's activations, with
  the calibrated ranges (a following Relu/Clip folded into the output range), int8
  symmetric weights (per output channel when configured) and int32 biases at s_x * s_w;
- dynamic: DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul(scale)
  [-> Add(bias)] (_integer_chain), and int8 embedding rows gathered then dequantized.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.ir import export_graph, fresh_namer, outer_names_used, subgraphs_of

from . import _calibrate
from ._lossy import planning_graph
from ._qhardswish import integer_hardswish

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
ACT_OPS = ("Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize")
DEFAULT_OPS = WEIGHT_OPS + ACT_OPS

_NP = {"uint8": np.uint8, "int8": np.int8}


class Builder:
    """Plans once, then builds quantized models for any set of nodes kept in float."""

    def __init__(self, proto, mode, op_types, exclude, cfg):
        self.mode = mode
        self.cfg = cfg
        self.ranges: dict[str, tuple[float, float]] = {}
        _, g = planning_graph(proto)
        self.candidates: dict[str, gs.Node] = {}
        used_by_sub = set()
        for node in g.nodes:
            for sub in subgraphs_of(node):
                used_by_sub |= outer_names_used(sub)
        self.used_by_sub = used_by_sub
        for node in g.nodes:
            if node.name in exclude or node.op in exclude or node.op not in op_types:
                continue
            if node.domain not in (None, "", "ai.onnx"):
                continue
            if self._eligible(node):
                self.candidates[node.name] = node
        # proto with node names assigned, for consistent rebuilds
        self.proto = export_graph(g, proto)
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
            integer_hardswish(g, namer)  # issue 16: HardSwish between Q/DQ as Clip + QLinearMul
        g.cleanup(remove_unused_graph_inputs=False)
        g.toposort()
        return export_graph(g, self.proto)

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
