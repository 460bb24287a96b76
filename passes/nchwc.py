"""`ort-nchwc`: onnxruntime's blocked channel layout (NCHWc), written into the model.

onnxruntime's fastest CPU convolutions (MLAS) work on tensors whose channels are split
into blocks of B (8 with AVX2, 16 with AVX-512): [N, C/B, H, W, B]. At its highest
optimization level onnxruntime rewrites a graph into this layout when a session starts.
This pass does that rewrite ahead of time, so a model runs at that speed even where the
session's optimizations are off or limited — and the rewrite is checked by the verifier
like every other pass.

What is rewritten: 2-D Conv / com.microsoft FusedConv with constant weights — regular
convolutions, the first convolution of a network (fewer than B input channels, read
straight from NCHW) and depthwise convolutions — into com.microsoft.nchwc Conv with the
filter reordered (OIHWBiBo, or OIHWBo for NCHW input and depthwise), the activation and a
residual Add fused in. Channel counts that are not a multiple of B are padded: zero extra
filters, zero weights for padded input channels, ReorderOutput crops to the real count; max
and average pooling (also global) on blocked tensors; elementwise activations and
same-shape Add/Sub/Mul between blocked tensors stay in the blocked layout. ReorderInput
and ReorderOutput convert at the borders, once per tensor.

The result is hardware-specific, exactly like onnxruntime's own ENABLE_ALL offline output:
B is the block size of the machine that runs the pass (probed from onnxruntime), and it is
recorded in the model's metadata (`graphopt.nchwc_block`). Run the model on a CPU with the
same vector width. Only for `--target ort`; not part of the `fuse` group.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.runtime import options, session
from graphopt.ir import const_value, fresh_namer, observed_names, outer_names_used, subgraphs_of

log = logging.getLogger(__name__)

NCHWC = "com.microsoft.nchwc"
MS = "com.microsoft"
UNARY = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip", "HardSwish", "Elu", "Softplus"}
BINARY = {"Add", "Sub", "Mul", "Sum"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip"}


@functools.lru_cache(maxsize=1)
def probe_block_size() -> int:
    """The NCHWc block size onnxruntime uses on this CPU (0 if it does not use NCHWc),
    read off a probe convolution that onnxruntime itself rewrites."""
    import tempfile
    import os

    from onnx import TensorProto, helper, numpy_helper

    c = 64
    w = np.arange(c * c, dtype=np.float32).reshape(c, c, 1, 1) + 1.0
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 4])],
        [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe.onnx")
        try:  # onnxruntime's own threads (0), its rewrites on, the result saved
            session(m, so=options(0, optimize=True, optimized_path=path))
            out = onnx.load(path)
        except Exception as e:  # no saved model: treat as "no NCHWc here"
            log.debug("nchwc probe failed: %s", e)
            return 0
    convs = [n for n in out.graph.node if n.domain == NCHWC and n.op_type == "Conv"]
    if not convs:
        return 0
    packed = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}.get(convs[0].input[1])
    if packed is None:
        return 0
    flat = packed.reshape(-1)
    # OIHWBiBo for a 1x1 filter: w[o, i] sits at (o//B)*C*B + (i//B)*B*B + (i%B)*B + o%B;
    # so the value of w[1, 0] (= c + 1) sits at index 1 and w[0, 1] (= 2) at index B.
    for b in (4, 8, 16, 32, 64):
        if c % b == 0 and np.array_equal(flat, _reorder_oihwbibo(w, b).reshape(-1)):
            return b
    return 0


def _reorder_oihwbibo(w: np.ndarray, b: int) -> np.ndarray:
    """[O, I, kh, kw] -> [O/b, I/b, kh, kw, b (input), b (output)], flattened back to w's shape."""
    o, i, kh, kw = w.shape
    blocked = w.reshape(o // b, b, i // b, b, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(blocked).reshape(w.shape)


def _reorder_oihwbo(w: np.ndarray, b: int) -> np.ndarray:
    """[O, I, kh, kw] -> [O/b, I, kh, kw, b (output)], flattened back to w's shape."""
    o, i, kh, kw = w.shape
    blocked = w.reshape(o // b, b, i, kh, kw).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(blocked).reshape(w.shape)


class _Rewriter:
    def __init__(self, graph: gs.Graph, block: int):
        self.graph = graph
        self.b = block
        self.namer = fresh_namer(graph)
        # NCHW tensor name -> (its NCHWc twin, channels, NCHW shape or None)
        self.blocked: dict[str, tuple[gs.Variable, int, tuple | None]] = {}
        self.new_nodes: list[gs.Node] = []
        self.dead: set[int] = set()
        self.converted = {"conv": 0, "pool": 0, "elementwise": 0}
        self.protected = observed_names(graph)  # outputs and names nested subgraphs read

    # -- helpers
    def _var(self, like: gs.Tensor) -> gs.Variable:
        return gs.Variable(self.namer(f"{like.name}_nchwc"), dtype=like.dtype)

    def _to_blocked(self, t: gs.Tensor) -> gs.Variable | None:
        """The NCHWc twin of `t`, adding a ReorderInput if `t` is plain (4-D, C % B == 0)."""
        if t.name in self.blocked:
            return self.blocked[t.name][0]
        shape = t.shape
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] % 4:
            return None  # onnxruntime's ReorderInput pads channels to the block from multiples of 4
        twin = self._var(t)
        self.new_nodes.append(gs.Node("ReorderInput", name=self.namer("ReorderInput"), domain=NCHWC,
                                      attrs={"channels_last": 0}, inputs=[t], outputs=[twin]))
        self.blocked[t.name] = (twin, int(shape[1]), _static(shape))
        return twin

    def _shape(self, t: gs.Tensor) -> tuple | None:
        if t.name in self.blocked:
            return self.blocked[t.name][2]
        return _static(t.shape)

    def _kill(self, node: gs.Node) -> None:
        self.dead.add(id(node))

    # -- rewrites
    def _round(self, c: int) -> int:
        return -(-c // self.b) * self.b

    def _channels(self, t: gs.Tensor) -> int | None:
        if t.name in self.blocked:
            return self.blocked[t.name][1]
        shape = t.shape
        return int(shape[1]) if shape is not None and len(shape) == 4 and isinstance(shape[1], int) else None

    def conv(self, node: gs.Node) -> bool:
        """Conv -> nchwc Conv. Channel counts that are not a multiple of the block are
        padded: extra output filters are zero (their channels hold act(0) and are never
        read), extra input channels get zero weights, ReorderOutput crops to the real count."""
        fused = node.domain == MS and node.op == "FusedConv"
        if not (fused or (node.op == "Conv" and (node.domain or "") in ("", "ai.onnx"))):
            return False
        w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None or w.dtype != np.float32 or w.ndim != 4 or len(node.outputs) != 1:
            return False
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return False
        o, cpg = w.shape[:2]
        group = int(node.attrs.get("group", 1))
        x = node.inputs[0]
        cin = self._channels(x)
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        bv = const_value(bias) if bias is not None else None
        if bias is not None and bv is None:
            return False
        z = node.inputs[3] if fused and len(node.inputs) > 3 and node.inputs[3].name else None
        o_pad = self._round(o)
        attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        if group == 1 and cin == cpg and (x.name in self.blocked or (cpg >= self.b and cpg % 4 == 0)):
            xin = self._to_blocked(x)
            padded = np.zeros((o_pad, self._round(cpg)) + w.shape[2:], np.float32)
            padded[:o, :cpg] = w
            packed = _reorder_oihwbibo(padded, self.b)
        elif group == 1 and cin == cpg and cpg < self.b and x.name not in self.blocked:
            xin = x  # the first layer: reads NCHW directly
            padded = np.zeros((o_pad, cpg) + w.shape[2:], np.float32)
            padded[:o] = w
            packed = _reorder_oihwbo(padded, self.b)
        elif group == o == cin and cpg == 1 and (x.name in self.blocked or o % 4 == 0):
            xin = self._to_blocked(x)
            padded = np.zeros((o_pad, 1) + w.shape[2:], np.float32)
            padded[:o] = w
            packed = _reorder_oihwbo(padded, self.b)
            attrs["group"] = o_pad
        else:
            return False
        if xin is None:
            return False
        zin = None
        if z is not None:
            zin = self._to_blocked(z)
            if zin is None or self._channels(z) != o:
                return False
        if fused:
            attrs["activation"] = node.attrs["activation"]
            if node.attrs.get("activation_params"):
                attrs["activation_params"] = list(node.attrs["activation_params"])
        y = node.outputs[0]
        ins = [xin, gs.Constant(self.namer(f"{node.inputs[1].name}_nchwc"), packed)]
        if bias is not None:
            bp = np.zeros(o_pad, np.float32)
            bp[:o] = bv.reshape(-1)
            ins.append(gs.Constant(self.namer(f"{bias.name}_nchwc"), bp) if o_pad != o else bias)
        elif zin is not None:
            ins.append(gs.Variable.empty())
        if zin is not None:
            ins.append(zin)
        twin = self._var(y)
        self.new_nodes.append(gs.Node("Conv", name=self.namer(f"{node.name or 'Conv'}_nchwc"), domain=NCHWC,
                                      attrs=attrs, inputs=ins, outputs=[twin]))
        xshape = self._shape(x)
        self.blocked[y.name] = (twin, o, _window_out(xshape, o, w.shape[2:], attrs) if xshape else None)
        self._kill(node)
        self.converted["conv"] += 1
        return True

    def pool(self, node: gs.Node) -> bool:
        if node.op not in POOLS or (node.domain or "") not in ("", "ai.onnx") or node.inputs[0].name not in self.blocked:
            return False
        if len([t for t in node.outputs if t.name]) != 1:
            return False
        attrs = dict(node.attrs)
        if node.op == "MaxPool" and (attrs.get("storage_order", 0) or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            return False
        if node.op == "AveragePool" and attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return False
        if node.op in ("MaxPool", "AveragePool") and len(attrs.get("kernel_shape", [])) != 2:
            return False
        xin, c, xshape = self.blocked[node.inputs[0].name]
        y = node.outputs[0]
        twin = self._var(y)
        self.new_nodes.append(gs.Node(node.op, name=self.namer(f"{node.name or node.op}_nchwc"), domain=NCHWC,
                                      attrs=attrs, inputs=[xin], outputs=[twin]))
        if xshape is None:
            yshape = None
        elif node.op.startswith("Global"):
            yshape = (xshape[0], c, 1, 1)
        else:
            yshape = _window_out(xshape, c, attrs["kernel_shape"], attrs)
        self.blocked[y.name] = (twin, c, yshape)
        self._kill(node)
        self.converted["pool"] += 1
        return True

    def elementwise(self, node: gs.Node) -> bool:
        if (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
            return False
        if node.op in UNARY:
            if node.inputs[0].name not in self.blocked or any(
                    t.name and const_value(t) is None for t in node.inputs[1:]):
                return False  # Clip's min/max must be constants (scalars)
            if any(t.name and const_value(t).size != 1 for t in node.inputs[1:]):
                return False
            srcs = [self.blocked[node.inputs[0].name][0]] + list(node.inputs[1:])
        elif node.op in BINARY:
            if not node.inputs or not all(t.name in self.blocked for t in node.inputs):
                return False
            shapes = {self.blocked[t.name][2] for t in node.inputs}
            if len(shapes) != 1 or None in shapes:
                return False  # the same static shape: no broadcasting across the blocked layout
            srcs = [self.blocked[t.name][0] for t in node.inputs]
        else:
            return False
        _, c, shape = self.blocked[node.inputs[0].name]
        y = node.outputs[0]
        twin = self._var(y)
        self.new_nodes.append(gs.Node(node.op, name=self.namer(f"{node.name or node.op}_nchwc"),
                                      attrs=dict(node.attrs), inputs=srcs, outputs=[twin]))
        self.blocked[y.name] = (twin, c, shape)
        self._kill(node)
        self.converted["elementwise"] += 1
        return True

    def run(self) -> int:
        self.graph.toposort(recurse_subgraphs=False)
        order = list(self.graph.nodes)
        for node in order:
            self.conv(node) or self.pool(node) or self.elementwise(node)
        if not self.converted["conv"]:
            return 0
        # Tensors still read in NCHW (by unconverted nodes, subgraphs or as graph outputs)
        # get a ReorderOutput that produces them under their original name.
        needed: set[str] = set(self.protected)
        for node in order:
            if id(node) in self.dead:
                continue
            for t in node.inputs:
                needed.add(t.name)
            for sub in subgraphs_of(node):
                needed |= outer_names_used(sub)
        tensors = self.graph.tensors()
        for name, (twin, c, _) in self.blocked.items():
            if name not in needed or name not in tensors:
                continue
            orig = tensors[name]
            if not orig.inputs or id(orig.inputs[0]) not in self.dead:
                continue  # still produced by its own (unconverted) node
            orig.inputs.clear()
            self.new_nodes.append(gs.Node("ReorderOutput", name=self.namer("ReorderOutput"), domain=NCHWC,
                                          attrs={"channels_last": 0, "channels": c}, inputs=[twin], outputs=[orig]))
        for node in order:
            if id(node) in self.dead:
                node.inputs.clear()
                node.outputs.clear()
        self.graph.nodes = [n for n in order if id(n) not in self.dead] + self.new_nodes
        self.graph.toposort(recurse_subgraphs=False)
        return sum(self.converted.values())


@register_pass("ort-nchwc")
class OrtNchwc(Pass):
    """--target ort: onnxruntime's blocked NCHWc layout ahead of time (hardware-specific block size)."""

    contract = "float"
    options = {
        "block": Option(int, 0, "channel block size (0: probe this CPU's onnxruntime; 8 = AVX2, 16 = AVX-512)"),
    }

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if ctx.target != "ort":
            log.warning("ort-nchwc: only for --target ort (com.microsoft.nchwc ops run in onnxruntime alone); skipped")
            return PassResult(False, {"skipped": "target is not ort"})
        b = self.block or probe_block_size()
        if b <= 1:
            return PassResult(False, {"skipped": "onnxruntime uses no NCHWc layout on this CPU"})
        _annotate_shapes(model)
        rw = _Rewriter(model.graph, b)  # the main graph: where the convolutions are
        total = rw.run()
        stats = {"block": b, **rw.converted}
        if total:
            model.set_metadata("graphopt.nchwc_block", str(b))
        return PassResult(total > 0, stats)


def _static(shape) -> tuple | None:
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _window_out(xshape: tuple, channels: int, kernel, attrs: dict) -> tuple | None:
    """Output shape of a 2-D convolution / pooling window over an NCHW input (explicit pads)."""
    strides = attrs.get("strides") or [1, 1]
    dil = attrs.get("dilations") or [1, 1]
    pads = attrs.get("pads") or [0, 0, 0, 0]
    ceil = int(attrs.get("ceil_mode", 0))
    out = [xshape[0], channels]
    for i in range(2):
        span = xshape[2 + i] + pads[i] + pads[i + 2] - dil[i] * (int(kernel[i]) - 1) - 1
        if span < 0:
            return None
        out.append((-(-span // strides[i]) if ceil else span // strides[i]) + 1)
    return tuple(out)


def _annotate_shapes(model: Model) -> None:
    """Fill in tensor shapes (graphopt.analysis.shapes; the rewrite needs channel counts)."""
    proto = model.to_onnx()
    for node in proto.graph.node:  # onnx cannot infer FusedConv: it has Conv's shapes
        if node.domain == MS and node.op_type == "FusedConv":
            node.domain, node.op_type = "", "Conv"
            del node.input[3:]
            keep = [a for a in node.attribute if not a.name.startswith("activation")]
            del node.attribute[:]
            node.attribute.extend(keep)
    from graphopt.analysis.shapes import infer_shapes

    try:
        shapes = infer_shapes(proto).as_lists()
    except Exception as e:  # best effort
        log.debug("ort-nchwc: shape inference failed: %s", e)
        return
    for name, t in model.graph.tensors().items():
        if isinstance(t, gs.Variable) and t.shape is None and name in shapes:
            t.shape = shapes[name]
