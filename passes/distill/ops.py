"""The op rules of the ONNX -> torch interpreter (interp.py): one function per ONNX op,
(graph, node, inputs, attributes) -> output(s), written with torch functions so that
autograd differentiates them. Integer tensors (shapes, indices) stay int64 tensors.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt import GraphoptError

import torch
import torch.nn.functional as F

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}
_QRANGE = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
           onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535),
           onnx.TensorProto.INT32: (-2**31, 2**31 - 1)}  # int32: biases at s_x * s_w


def _ste_round(x):
    return x + (torch.round(x) - x).detach()



def _ints(t):
    return [int(v) for v in t.reshape(-1).tolist()]




def _pads_for(x, kernel, strides, dil, attrs):
    nd = len(kernel)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
        return pads
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(attrs.get("pads", [0] * (2 * nd)))


def _torch_pad(pads):
    nd = len(pads) // 2
    out = []
    for i in reversed(range(nd)):  # F.pad: last dim first
        out += [pads[i], pads[i + nd]]
    return out


def _conv(g, node, a, at):
    x, w, b = a[0], a[1], a[2] if len(a) > 2 else None
    nd = w.dim() - 2
    k = list(w.shape[2:])
    strides = list(at.get("strides", [1] * nd))
    dil = list(at.get("dilations", [1] * nd))
    pads = _pads_for(x, k, strides, dil, at)
    if any(pads):
        x = F.pad(x, _torch_pad(pads))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, strides, 0, dil, at.get("group", 1))


def _pool(g, node, a, at):
    x = a[0]
    k = list(at["kernel_shape"])
    nd = len(k)
    strides = list(at.get("strides", [1] * nd))
    dil = list(at.get("dilations", [1] * nd))
    pads = _pads_for(x, k, strides, dil, at)
    ceil = bool(at.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        if any(pads):
            x = F.pad(x, _torch_pad(pads), value=-math.inf)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, k, strides, 0, dil, ceil_mode=ceil)
    include = bool(at.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    sym = all(pads[i] == pads[i + nd] for i in range(nd)) and all(pads[i] <= k[i] // 2 for i in range(nd))
    if sym:
        return fn(x, k, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)
    if include or not any(pads):
        return fn(F.pad(x, _torch_pad(pads)), k, strides, 0, ceil_mode=ceil, count_include_pad=True)
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    num = fn(F.pad(x, _torch_pad(pads)), k, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return num / fn(ones, k, strides, 0, ceil_mode=ceil, count_include_pad=True)


def _gemm(g, node, a, at):
    x, w = a[0], a[1]
    if at.get("transA", 0):
        x = x.transpose(0, 1)
    if at.get("transB", 0):
        w = w.transpose(0, 1)
    y = at.get("alpha", 1.0) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + at.get("beta", 1.0) * a[2]
    return y


def _bn(g, node, a, at):
    x, scale, bias, mean, var = a[:5]
    return F.batch_norm(x, mean.float(), var.float(), scale, bias, False, 0.0, at.get("epsilon", 1e-5))


def _clip(g, node, a, at):
    lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(a[0], lo, hi)


def _softmax(fn):
    def rule(g, node, a, at):
        x = a[0]
        axis = at.get("axis", -1 if g.opset >= 13 else 1)
        if g.opset >= 13:
            return fn(x, dim=axis)
        axis %= x.dim()
        shape = x.shape
        return fn(x.reshape(int(np.prod(shape[:axis])), -1), dim=1).reshape(shape)
    return rule


def _axes(g, node, a, at, idx=1):
    if len(a) > idx and a[idx] is not None:
        return _ints(a[idx])
    v = at.get("axes")
    return None if v is None else [int(i) for i in v]


def _reduce(fn):
    def rule(g, node, a, at):
        x = a[0]
        axes = _axes(g, node, a, at)
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [i % x.dim() for i in axes], bool(at.get("keepdims", 1)))
    return rule


def _reshape(g, node, a, at):
    x, shape = a[0], _ints(a[1])
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(g, node, a, at):
    axes = _axes(g, node, a, at)
    x = a[0]
    if axes is None:
        return x.squeeze()
    for ax in sorted((i % x.dim() for i in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(g, node, a, at):
    x = a[0]
    axes = _axes(g, node, a, at)
    rank = x.dim() + len(axes)
    for ax in sorted(i % rank for i in axes):
        x = x.unsqueeze(ax)
    return x


def _split(g, node, a, at):
    x = a[0]
    axis = at.get("axis", 0) % x.dim()
    sizes = _ints(a[1]) if len(a) > 1 and a[1] is not None else at.get("split")
    if sizes is None:
        n = len(node.output)
        size = -(-x.shape[axis] // n)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(n)]
    return list(torch.split(x, list(sizes), dim=axis))


def _slice(g, node, a, at):
    x = a[0]
    if len(a) > 1:
        starts, ends = _ints(a[1]), _ints(a[2])
        axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
        steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(at["starts"]), list(at["ends"])
        axes = list(at.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[ax] = slice(s, e, st)
        else:  # negative step: flip, then slice forward
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < -1 or (e < 0 and e > -n - 1 and e != -1) else e))
            flips.append(ax)
            index[ax] = slice(n - 1 - s, n - 1 - e, -st)
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


def _pad(g, node, a, at):
    x = a[0]
    pads = _ints(a[1]) if len(a) > 1 and a[1] is not None else list(at.get("pads"))
    value = float(a[2]) if len(a) > 2 and a[2] is not None else float(at.get("value", 0.0))
    if len(a) > 3 and a[3] is not None:
        raise GraphoptError(f"distill: Pad with axes is not supported (node '{node.name}')")
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = x.dim()
    lead = pads[:n], pads[n:]
    flat = []
    for i in reversed(range(n)):
        flat += [lead[0][i], lead[1][i]]
    while len(flat) > 2 and flat[-1] == 0 and flat[-2] == 0:
        flat = flat[:-2]
    if mode == "constant":
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _resize(g, node, a, at):
    x = a[0]
    mode = at.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = at.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    scales = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else None
    if node.op_type == "Upsample":
        scales = a[1]
    if sizes is not None:
        size = _ints(sizes)[2:]
    else:
        size = [int(math.floor(x.shape[2 + i] * float(s))) for i, s in enumerate(scales.reshape(-1).tolist()[2:])]
    if mode == "nearest" and ctm in ("asymmetric", "half_pixel", "tf_half_pixel_for_nn"):
        return F.interpolate(x, size=size, mode="nearest" if ctm == "asymmetric" else "nearest-exact")
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners") and x.dim() == 4:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=ctm == "align_corners")
    raise GraphoptError(f"distill: no training rule for Resize mode={mode} "
                        f"coordinate_transformation_mode={ctm} (node '{node.name}')")


def _quantize(g, node, a, at):
    x, scale = a[0], a[1].float()
    zp = a[2] if len(a) > 2 and a[2] is not None else None
    lo, hi = (0, 255) if zp is None or zp.dtype == torch.uint8 else _QRANGE[onnx.TensorProto.INT8]
    zf = zp.float() if zp is not None else torch.zeros(())
    if scale.dim() and x.dim() > 1:
        shape = [1] * x.dim()
        shape[at.get("axis", 1) % x.dim()] = -1
        scale, zf = scale.reshape(shape), zf.reshape(shape)
    return torch.clamp(_ste_round(x / scale) + zf, lo, hi)   # integer values, held as float


def _dequantize(g, node, a, at):
    q, scale = a[0].float(), a[1].float()
    zp = a[2].float() if len(a) > 2 and a[2] is not None else torch.zeros(())
    if scale.dim() and q.dim() > 1:
        shape = [1] * q.dim()
        shape[at.get("axis", 1) % q.dim()] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def _layernorm(g, node, a, at):
    x = a[0]
    axis = at.get("axis", -1) % x.dim()
    shape = list(x.shape[axis:])
    return F.layer_norm(x, shape, a[1], a[2] if len(a) > 2 else None, at.get("epsilon", 1e-5))


def _cast(g, node, a, at):
    return a[0].to(_DTYPES[at["to"]])


def _flatten(g, node, a, at):
    x = a[0]
    axis = at.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _gather(g, node, a, at):
    x, idx = a[0], a[1].long()
    axis = at.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def _shape(g, node, a, at):
    shape = list(a[0].shape)
    start, end = at.get("start", 0), at.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64)


def _const_of_shape(g, node, a, at):
    v = at.get("value")
    fill = torch.from_numpy(np.array(numpy_helper.to_array(v))).reshape(-1)[0] if v is not None else torch.tensor(0.0)
    return torch.full(_ints(a[0]), fill.item(), dtype=fill.dtype)


def _binary(fn):
    return lambda g, node, a, at: fn(a[0], a[1])


def _variadic(fn):
    def rule(g, node, a, at):
        out = a[0]
        for v in a[1:]:
            out = fn(out, v)
        return out
    return rule


OPS = {
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "Gemm": _gemm,
    "MatMul": _binary(torch.matmul), "BatchNormalization": _bn,
    "Relu": lambda g, n, a, at: F.relu(a[0]),
    "LeakyRelu": lambda g, n, a, at: F.leaky_relu(a[0], at.get("alpha", 0.01)),
    "Sigmoid": lambda g, n, a, at: torch.sigmoid(a[0]),
    "Tanh": lambda g, n, a, at: torch.tanh(a[0]),
    "HardSigmoid": lambda g, n, a, at: torch.clamp(at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0, 1),
    "HardSwish": lambda g, n, a, at: F.hardswish(a[0]),
    "Elu": lambda g, n, a, at: F.elu(a[0], at.get("alpha", 1.0)),
    "Softplus": lambda g, n, a, at: F.softplus(a[0]),
    "Gelu": lambda g, n, a, at: F.gelu(a[0], approximate="tanh" if at.get("approximate", b"none") in (b"tanh", "tanh") else "none"),
    "Erf": lambda g, n, a, at: torch.erf(a[0]),
    "Exp": lambda g, n, a, at: torch.exp(a[0]),
    "Log": lambda g, n, a, at: torch.log(a[0]),
    "Sqrt": lambda g, n, a, at: torch.sqrt(a[0]),
    "Abs": lambda g, n, a, at: torch.abs(a[0]),
    "Neg": lambda g, n, a, at: -a[0],
    "Reciprocal": lambda g, n, a, at: 1.0 / a[0],
    "Identity": lambda g, n, a, at: a[0],
    "Dropout": lambda g, n, a, at: a[0],
    "Mish": lambda g, n, a, at: F.mish(a[0]),
    "Clip": _clip, "Cast": _cast,
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(torch.div), "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "GlobalAveragePool": lambda g, n, a, at: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda g, n, a, at: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "ReduceMean": _reduce(lambda x, ax, k: x.mean(dim=ax, keepdim=k)),
    "ReduceSum": _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)),
    "ReduceMax": _reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k)),
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": lambda g, n, a, at: a[0].permute(list(at["perm"]) if "perm" in at else list(reversed(range(a[0].dim())))),
    "Concat": lambda g, n, a, at: torch.cat([v for v in a if v is not None], dim=at["axis"]),
    "Split": _split, "Slice": _slice, "Gather": _gather, "Shape": _shape, "Pad": _pad,
    "ConstantOfShape": _const_of_shape, "Constant": None, "Resize": _resize, "Upsample": _resize,
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "LayerNormalization": _layernorm,
    "Expand": lambda g, n, a, at: a[0] * torch.ones(_ints(a[1]), dtype=a[0].dtype),
}
