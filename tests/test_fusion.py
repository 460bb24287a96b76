"""Fusion passes: each rewrite fires on its pattern, refuses its near-misses, and keeps
the model equivalent in onnxruntime (float tolerance) and valid for onnx.checker."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from conftest import check_equiv, zoo_models

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def W(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32) if np.asarray(arr).dtype.kind == "f" else np.asarray(arr), name)


def make(nodes, inputs, outputs, inits=(), opset=17, extra_domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset), *extra_domains]
    m = helper.make_model(g, opset_imports=ops, ir_version=8)
    if any(not o.type.tensor_type.HasField("shape") for o in m.graph.output):
        inferred = onnx.shape_inference.infer_shapes(m)
        for o, io in zip(m.graph.output, inferred.graph.output):
            o.CopyFrom(io)
    onnx.checker.check_model(m)
    return m


def vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def opt(model, spec, **ctx):
    return graphopt.optimize(model, spec, verify=False, **ctx)


def ops(model):
    return [n.op_type for n in model.graph.node]


def feeds_for(model):
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = RNG.standard_normal(shape).astype(np.float32)
    return out


# -- fold-bn -------------------------------------------------------------------------------


def bn_inits(c, p="bn"):
    return [W(f"{p}_s", RNG.uniform(0.5, 1.5, c)), W(f"{p}_b", RNG.normal(0, 0.1, c)),
            W(f"{p}_m", RNG.normal(0, 0.1, c)), W(f"{p}_v", RNG.uniform(0.5, 1.5, c))]


def bn_node(x, y, p="bn"):
    return helper.make_node("BatchNormalization", [x, f"{p}_s", f"{p}_b", f"{p}_m", f"{p}_v"], [y], epsilon=1e-3)


@pytest.mark.parametrize("group,bias", [(1, False), (1, True), (4, False), (4, True)])
def test_fold_bn_conv(group, bias):
    ins = ["x", "w"] + (["b"] if bias else [])
    inits = [W("w", RNG.standard_normal((8, 8 // group, 3, 3)))] + ([W("b", RNG.standard_normal(8))] if bias else [])
    m = make([helper.make_node("Conv", ins, ["c"], group=group, pads=[1, 1, 1, 1]), bn_node("c", "y")],
             [vi("x", [1, 8, 6, 6])], [vi("y", None)], inits + bn_inits(8))
    out = opt(m, "fold-bn")
    assert ops(out) == ["Conv"]
    check_equiv(m, out, feeds_for(m))


@pytest.mark.parametrize("group", [1, 2])
def test_fold_bn_conv_transpose(group):
    m = make([helper.make_node("ConvTranspose", ["x", "w"], ["c"], group=group, strides=[2, 2]), bn_node("c", "y")],
             [vi("x", [1, 4, 5, 5])], [vi("y", None)],
             [W("w", RNG.standard_normal((4, 6 // group, 3, 3)))] + bn_inits(6))
    out = opt(m, "fold-bn")
    assert ops(out) == ["ConvTranspose"]
    check_equiv(m, out, feeds_for(m))


@pytest.mark.parametrize("kind", ["gemm", "gemm_transb", "matmul"])
def test_fold_bn_linear(kind):
    if kind == "matmul":
        n0 = helper.make_node("MatMul", ["x", "w"], ["c"])
        inits = [W("w", RNG.standard_normal((5, 6)))]
    else:
        tb = kind == "gemm_transb"
        n0 = helper.make_node("Gemm", ["x", "w", "b"], ["c"], transB=int(tb), beta=0.5)
        inits = [W("w", RNG.standard_normal((6, 5) if tb else (5, 6))), W("b", RNG.standard_normal(6))]
    m = make([n0, bn_node("c", "y")], [vi("x", [3, 5])], [vi("y", None)], inits + bn_inits(6))
    out = opt(m, "fold-bn")
    assert ops(out) == ["Gemm"]
    check_equiv(m, out, feeds_for(m))


def test_fold_bn_refuses_shared_and_nonconst():
    inits = [W("w", RNG.standard_normal((8, 8, 1, 1)))] + bn_inits(8)
    # the Conv output is also a graph output: must not fold
    m = make([helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y")],
             [vi("x", [1, 8, 4, 4])], [vi("y", None), vi("c", None)], inits)
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))
    # BN scale is a graph input
    m = make([helper.make_node("Conv", ["x", "w"], ["c"]),
              helper.make_node("BatchNormalization", ["c", "s", "bn_b", "bn_m", "bn_v"], ["y"])],
             [vi("x", [1, 8, 4, 4]), vi("s", [8])], [vi("y", None)], inits)
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))


@pytest.mark.parametrize("group,bias,kernel", [(1, True, 3), (2, False, 3), (4, True, 1), (1, False, 1)])
def test_fold_bn_into_following_conv(group, bias, kernel):
    """BN -> Conv without padding: the BN's scale and shift go into the Conv (pre-activation
    blocks, a BN on the network input)."""
    ins = ["c", "w"] + (["b"] if bias else [])
    pads = [0, 0, 0, 0]
    inits = [W("w", RNG.standard_normal((8, 8 // group, kernel, kernel)))] + ([W("b", RNG.standard_normal(8))] if bias else [])
    m = make([bn_node("x", "c"), helper.make_node("Conv", ins, ["y"], group=group, pads=pads, strides=[2, 2])],
             [vi("x", [2, 8, 7, 7])], [vi("y", None)], inits + bn_inits(8))
    out = opt(m, "fold-bn")
    assert ops(out) == ["Conv"]
    check_equiv(m, out, feeds_for(m))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_bn_into_following_gemm(trans_b):
    inits = [W("w", RNG.standard_normal((6, 5) if trans_b else (5, 6))), W("b", RNG.standard_normal(6))]
    m = make([bn_node("x", "c"), helper.make_node("Gemm", ["c", "w", "b"], ["y"], transB=trans_b, alpha=0.7, beta=0.5)],
             [vi("x", [3, 5])], [vi("y", None)], inits + bn_inits(5))
    out = opt(m, "fold-bn")
    assert ops(out) == ["Gemm"]
    check_equiv(m, out, feeds_for(m))


def test_fold_bn_into_following_conv_refusals():
    inits = [W("w", RNG.standard_normal((8, 8, 3, 3)))] + bn_inits(8)
    # zero padding would see 0 where the BN'd input has the shift t: not exact
    m = make([bn_node("x", "c"), helper.make_node("Conv", ["c", "w"], ["y"], pads=[1, 1, 1, 1])],
             [vi("x", [1, 8, 5, 5])], [vi("y", None)], inits)
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))
    m = make([bn_node("x", "c"), helper.make_node("Conv", ["c", "w"], ["y"], auto_pad="SAME_UPPER")],
             [vi("x", [1, 8, 5, 5])], [vi("y", None)], inits)
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))
    m = make([bn_node("x", "c"), helper.make_node("Conv", ["c", "w1"], ["y"], pads=[1, 1, 1, 1])],
             [vi("x", [1, 8, 5, 5])], [vi("y", None)], [W("w1", RNG.standard_normal((8, 8, 1, 1)))] + bn_inits(8))
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))  # a padded 1x1 Conv reads the padding too
    # ... but SAME on a 1x1 kernel pads nothing
    m = make([bn_node("x", "c"), helper.make_node("Conv", ["c", "w1"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
             [vi("x", [1, 8, 5, 5])], [vi("y", None)], [W("w1", RNG.standard_normal((8, 8, 1, 1)))] + bn_inits(8))
    out = opt(m, "fold-bn")
    assert ops(out) == ["Conv"]
    check_equiv(m, out, feeds_for(m))
    # the BN output has a second reader
    m = make([bn_node("x", "c"), helper.make_node("Conv", ["c", "w"], ["y"]), helper.make_node("Relu", ["c"], ["z"])],
             [vi("x", [1, 8, 5, 5])], [vi("y", None), vi("z", None)], inits)
    assert "BatchNormalization" in ops(opt(m, "fold-bn"))


# -- fold-affine -----------------------------------------------------------------------------


@pytest.mark.parametrize("op,shape", [("Mul", (1, 8, 1, 1)), ("Add", (8, 1, 1)), ("Mul", ()), ("Add", (1,))])
def test_fold_affine_conv(op, shape):
    m = make([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node(op, ["k", "c"], ["y"])],
             [vi("x", [1, 4, 5, 5])], [vi("y", None)],
             [W("w", RNG.standard_normal((8, 4, 3, 3))), W("b", RNG.standard_normal(8)), W("k", RNG.uniform(0.5, 2, shape))])
    out = opt(m, "fold-affine")
    assert ops(out) == ["Conv"]
    check_equiv(m, out, feeds_for(m))


def test_fold_affine_refuses_spatial_broadcast():
    # varies along a spatial axis: not per-channel
    m = make([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])],
             [vi("x", [1, 4, 5, 5])], [vi("y", None)],
             [W("w", RNG.standard_normal((8, 4, 3, 3))), W("k", RNG.uniform(0.5, 2, (1, 1, 3, 1)))])
    assert ops(opt(m, "fold-affine")) == ["Conv", "Mul"]


# -- fuse-gemm -------------------------------------------------------------------------------------


def test_fuse_gemm_and_refusals():
    m = make([helper.make_node("MatMul", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])],
             [vi("x", [3, 5])], [vi("y", None)], [W("w", RNG.standard_normal((5, 6))), W("b", RNG.standard_normal(6))])
    out = opt(m, "fuse-gemm")
    assert ops(out) == ["Gemm"]
    check_equiv(m, out, feeds_for(m))
    # 3-D activation: Gemm cannot take it
    m3 = make([helper.make_node("MatMul", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])],
              [vi("x", [2, 3, 5])], [vi("y", None)], [W("w", RNG.standard_normal((5, 6))), W("b", RNG.standard_normal(6))])
    assert ops(opt(m3, "fuse-gemm")) == ["MatMul", "Add"]
    # bias that broadcasts over rows: (3, 1) is not a per-column bias
    mb = make([helper.make_node("MatMul", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])],
              [vi("x", [3, 5])], [vi("y", None)], [W("w", RNG.standard_normal((5, 6))), W("b", RNG.standard_normal((3, 1)))])
    assert ops(opt(mb, "fuse-gemm")) == ["MatMul", "Add"]


# -- activations ------------------------------------------------------------------------------------


def hardswish_model(alpha=1 / 6, opset=14, share=False):
    outs = [vi("y", None)] + ([vi("h", None)] if share else [])
    return make([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=alpha, beta=0.5),
                 helper.make_node("Mul", ["x", "h"], ["y"])], [vi("x", [2, 16])], outs, opset=opset)


def test_fuse_hardswish():
    m = hardswish_model()
    out = opt(m, "fuse-hardswish")
    assert ops(out) == ["HardSwish"]
    check_equiv(m, out, {"x": RNG.uniform(-5, 5, (2, 16)).astype(np.float32)})
    assert "HardSwish" not in ops(opt(hardswish_model(alpha=0.2), "fuse-hardswish"))
    assert "HardSwish" not in ops(opt(hardswish_model(opset=13), "fuse-hardswish"))
    assert "HardSwish" not in ops(opt(hardswish_model(share=True), "fuse-hardswish"))


def test_hardswish_opset_upgrade():
    m = hardswish_model(opset=13)
    out = opt(m, "upgrade-opset,fuse-hardswish", allow_opset_upgrade=True)
    assert ops(out) == ["HardSwish"] and out.opset_import[0].version >= 14
    check_equiv(m, out, {"x": RNG.uniform(-5, 5, (2, 16)).astype(np.float32)})
    # without permission nothing changes
    assert ops(opt(m, "upgrade-opset,fuse-hardswish")) == ["HardSigmoid", "Mul"]


def relu6_hardswish_model(spelling="paddle", opset=14, three=3.0, share=False):
    """x * Clip(x + 3, 0, 6) / 6 as exporters spell it; constants are Constant nodes (as in
    Paddle's export); below opset 11 the Clip bounds are attributes."""
    def k(name, v):
        return helper.make_node("Constant", [], [name], value=W(name, np.array(v)))

    clip = (helper.make_node("Clip", ["a"], ["r"], min=0.0, max=6.0) if opset < 11
            else helper.make_node("Clip", ["a", "lo", "hi"], ["r"]))
    nodes = [k("three", three), k("lo", 0.0), k("hi", 6.0), k("six", 6.0), k("sixth", 1 / 6),
             helper.make_node("Add", ["three", "x"] if spelling == "sixth_after" else ["x", "three"], ["a"]), clip]
    nodes += {
        "paddle": [helper.make_node("Mul", ["x", "r"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
        "div_on_clip": [helper.make_node("Div", ["r", "six"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])],
        "sixth_after": [helper.make_node("Mul", ["r", "x"], ["m"]), helper.make_node("Mul", ["sixth", "m"], ["y"])],
        "sixth_on_clip": [helper.make_node("Mul", ["r", "sixth"], ["m"]), helper.make_node("Mul", ["m", "x"], ["y"])],
    }[spelling]
    outs = [vi("y", None)] + ([vi("r", None)] if share else [])
    return make(nodes, [vi("x", [2, 16])], outs, opset=opset)


@pytest.mark.parametrize("spelling", ["paddle", "div_on_clip", "sixth_after", "sixth_on_clip"])
def test_fuse_hardswish_clip_spellings(spelling):
    m = relu6_hardswish_model(spelling)
    out, report = graphopt.optimize(m, "fuse-hardswish", verify=False, return_report=True)
    assert ops(out) == ["HardSwish"] and report.records[-1].stats == {"fused": 1, "refused": 0}
    check_equiv(m, out, {"x": np.linspace(-5, 5, 32, dtype=np.float32).reshape(2, 16)})
    # opset 13 has no HardSwish: refused with the reason, nothing changed
    old = relu6_hardswish_model(spelling, opset=13)
    out, report = graphopt.optimize(old, "fuse-hardswish", verify=False, return_report=True)
    assert ops(out) == ops(old) and report.records[-1].stats["reasons"] == {"needs opset >= 14": 1}


def test_hardswish_clip_attributes_opset_upgrade():
    """Clip with min/max attributes (opset 10): upgrade-opset converts because that
    HardSwish is there; a Relu6 (Clip 0..6) next to an Add is no reason to upgrade."""
    m = relu6_hardswish_model("paddle", opset=10)
    out = opt(m, "upgrade-opset,fuse-hardswish", allow_opset_upgrade=True)
    assert ops(out) == ["HardSwish"] and out.opset_import[0].version == 14
    check_equiv(m, out, {"x": np.linspace(-5, 5, 32, dtype=np.float32).reshape(2, 16)})
    relu6 = make([helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["y"])],
                 [vi("x", [2, 16])], [vi("y", None)], [W("lo", np.array(0.0)), W("hi", np.array(6.0))], opset=11)
    assert opt(relu6, "upgrade-opset", allow_opset_upgrade=True).opset_import[0].version == 11


def test_ppocr_cls_hardswish_fused_and_verified(tmp_path, capsys):
    """The real PP-OCR text-direction classifier (Paddle export, opset 11): every
    Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6) becomes one HardSwish, and the verifier passes."""
    import json

    from _export_helpers import ppocr_cls
    from graphopt.cli import main as cli_main

    path = ppocr_cls()
    if path is None:
        pytest.skip("pip install rapidocr-onnxruntime")
    src = onnx.load(path)
    prod = {o: n for n in src.graph.node for o in n.output}

    def op_of(name):
        return prod[name].op_type if name in prod else None

    spelled = sum(1 for n in src.graph.node if n.op_type == "Div" and op_of(n.input[0]) == "Mul"
                  and any(op_of(i) == "Clip" and op_of(prod[i].input[0]) == "Add" for i in prod[n.input[0]].input))
    assert spelled == 18
    out = tmp_path / "cls.onnx"
    assert cli_main([str(path), "-p", "clean,fuse", "--allow-opset-upgrade", "-o", str(out), "--json"]) == 0
    first = next(p for p in json.loads(capsys.readouterr().out)["passes"] if p["name"] == "fuse-hardswish")
    assert first["stats"] == {"fused": spelled, "refused": 0} and first["verify"]["status"] == "ok"
    fused = onnx.load(out)
    assert sum(n.op_type == "HardSwish" for n in fused.graph.node) == spelled
    assert fused.opset_import[0].version == 14


def gelu_model(variant, opset=20, c=math.sqrt(2)):
    k = lambda name, v: helper.make_node("Constant", [], [name], value=W(name, np.array(v)))  # noqa: E731
    nodes = [k("c2", c), k("one", 1.0), k("half", 0.5)]
    if variant == "mul_inv":
        nodes += [k("inv", 1 / c), helper.make_node("Mul", ["x", "inv"], ["d"])]
    else:
        nodes.append(helper.make_node("Div", ["x", "c2"], ["d"]))
    nodes += [helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["s"])]
    if variant in ("a", "mul_inv"):  # (x*s)*0.5
        nodes += [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Mul", ["t", "half"], ["y"])]
    elif variant == "b":  # (s*0.5)*x
        nodes += [helper.make_node("Mul", ["s", "half"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])]
    else:  # (x*0.5)*s
        nodes += [helper.make_node("Mul", ["x", "half"], ["t"]), helper.make_node("Mul", ["t", "s"], ["y"])]
    return make(nodes, [vi("x", [2, 32])], [vi("y", None)], opset=opset)


@pytest.mark.parametrize("variant", ["a", "b", "c", "mul_inv"])
def test_fuse_gelu(variant):
    m = gelu_model(variant)
    out = opt(m, "fuse-gelu")
    assert [o for o in ops(out) if o != "Constant"] == ["Gelu"]
    check_equiv(m, out, {"x": RNG.normal(0, 3, (2, 32)).astype(np.float32)})


def test_fuse_gelu_targets_and_refusals():
    m = gelu_model("a", opset=17)
    assert "Gelu" not in ops(opt(m, "fuse-gelu"))  # opset too low, portable
    assert "Gelu" not in ops(opt(m, "fuse-gelu", target="tvm"))
    out = opt(m, "fuse-gelu", target="ort")  # contrib Gelu runs in ORT at any opset
    g = [n for n in out.graph.node if n.op_type == "Gelu"]
    assert len(g) == 1 and g[0].domain == "com.microsoft"
    check_equiv(m, out, {"x": RNG.normal(0, 3, (2, 32)).astype(np.float32)})
    assert "Gelu" not in ops(opt(gelu_model("a", c=2.0), "fuse-gelu"))  # wrong constant


def layernorm_model(opset=17, eps=1e-5, axes2=(-1,), gamma=True, shape=(2, 3, 16)):
    c = shape[-1]
    inits = [W("two", np.array(2.0)), W("eps", np.array(eps)), W("g", RNG.uniform(0.5, 1.5, c)), W("bt", RNG.normal(0, 0.1, c))]

    def rmean(x, y, axes):
        if opset >= 18:
            inits.append(W(y + "_axes", np.array(axes, np.int64)))
            return helper.make_node("ReduceMean", [x, y + "_axes"], [y])
        return helper.make_node("ReduceMean", [x], [y], axes=list(axes))
    nodes = [rmean("x", "m", (-1,)), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["p"]), rmean("p", "v", axes2),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n" if gamma else "y"])]
    if gamma:
        nodes += [helper.make_node("Mul", ["n", "g"], ["ng"]), helper.make_node("Add", ["ng", "bt"], ["y"])]
    return make(nodes, [vi("x", list(shape))], [vi("y", None)], inits, opset=opset)


@pytest.mark.parametrize("opset,gamma", [(17, True), (18, True), (17, False)])
def test_fuse_layernorm(opset, gamma):
    m = layernorm_model(opset=opset, gamma=gamma)
    out = opt(m, "fuse-layernorm")
    assert ops(out) == ["LayerNormalization"]
    check_equiv(m, out, feeds_for(m))


def test_fuse_layernorm_refusals():
    assert "LayerNormalization" not in ops(opt(layernorm_model(opset=16), "fuse-layernorm"))
    assert "LayerNormalization" not in ops(opt(layernorm_model(axes2=(-2,)), "fuse-layernorm"))


# -- clip ---------------------------------------------------------------------------------------------


def clip(x, y, lo, hi, p):
    return [helper.make_node("Constant", [], [p + "lo"], value=W(p + "lo", np.array(lo))),
            helper.make_node("Constant", [], [p + "hi"], value=W(p + "hi", np.array(hi))),
            helper.make_node("Clip", [x, p + "lo", p + "hi"], [y])]


@pytest.mark.parametrize("chain,expect", [
    ("relu_clip", "Clip"), ("clip_relu", "Clip"), ("relu_relu", "Relu"), ("clip_clip", "Clip")])
def test_fuse_clip(chain, expect):
    if chain == "relu_clip":
        nodes = [helper.make_node("Relu", ["x"], ["a"])] + clip("a", "y", 0.0, 6.0, "c")
    elif chain == "clip_relu":
        nodes = clip("x", "a", -1.0, 6.0, "c") + [helper.make_node("Relu", ["a"], ["y"])]
    elif chain == "relu_relu":
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    else:
        nodes = clip("x", "a", -2.0, 6.0, "c") + clip("a", "y", -1.0, 8.0, "d")
    m = make(nodes, [vi("x", [4, 8])], [vi("y", None)])
    out = opt(m, "fuse-clip")
    assert [o for o in ops(out) if o != "Constant"] == [expect]
    check_equiv(m, out, {"x": RNG.uniform(-10, 10, (4, 8)).astype(np.float32)}, rtol=0)


def test_fuse_clip_refuses_disjoint_and_shared():
    m = make(clip("x", "a", 0.0, 1.0, "c") + clip("a", "y", 2.0, 3.0, "d"), [vi("x", [4])], [vi("y", None)])
    assert ops(opt(m, "fuse-clip")).count("Clip") == 2
    m = make([helper.make_node("Relu", ["x"], ["a"])] + clip("a", "y", 0.0, 6.0, "c"), [vi("x", [4])],
             [vi("y", None), vi("a", None)])
    assert "Relu" in ops(opt(m, "fuse-clip"))


# -- ort activation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "Clip"])
def test_fuse_ort_activation_conv(act):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if act == "Clip":
        nodes += clip("c", "y", 0.0, 6.0, "k")
    else:
        nodes.append(helper.make_node(act, ["c"], ["y"]))
    m = make(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", None)],
             [W("w", RNG.standard_normal((4, 3, 3, 3))), W("b", RNG.standard_normal(4))])
    out = opt(m, "fuse-ort-activation", target="ort")
    assert [o for o in ops(out) if o != "Constant"] == ["FusedConv"]
    check_equiv(m, out, feeds_for(m))
    assert "FusedConv" not in ops(opt(m, "fuse-ort-activation"))  # portable target


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "Sigmoid"])
def test_fuse_ort_activation_gemm(act):
    m = make([helper.make_node("Gemm", ["x", "w", "b"], ["c"], transB=1), helper.make_node(act, ["c"], ["y"])],
             [vi("x", [3, 5])], [vi("y", None)], [W("w", RNG.standard_normal((6, 5))), W("b", RNG.standard_normal(6))])
    out = opt(m, "fuse-ort-activation", target="ort")
    assert ops(out) == ["FusedGemm"]
    check_equiv(m, out, feeds_for(m))


# -- transformer contrib fusions (--target ort) -------------------------------------------


def test_fuse_bias_gelu():
    m = make([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
              helper.make_node("Gelu", ["hb"], ["y"])],
             [vi("x", [2, 5, 8])], [vi("y", None)], [W("w", RNG.standard_normal((8, 16))), W("b", RNG.standard_normal(16))],
             opset=20)
    out = graphopt.optimize(m, "fuse-bias-gelu", target="ort")  # verified (float contract)
    assert ops(out) == ["MatMul", "BiasGelu"]
    check_equiv(m, out, feeds_for(m))
    assert ops(opt(m, "fuse-bias-gelu", target="onnx")) == ops(m)  # standard ops only
    tanh = make([helper.make_node("Add", ["x", "b"], ["hb"]), helper.make_node("Gelu", ["hb"], ["y"], approximate="tanh")],
                [vi("x", [2, 8])], [vi("y", None)], [W("b", RNG.standard_normal(8))], opset=20)
    assert ops(opt(tanh, "fuse-bias-gelu", target="ort")) == ["Add", "Gelu"]


def _post_ln_block(with_bias=True, share_sum=False, skip_shape=(2, 5, 8)):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    inits = [W("w", RNG.standard_normal((8, 8))), W("g", RNG.uniform(0.5, 1.5, 8)), W("be", RNG.standard_normal(8))]
    last = "h"
    if with_bias:
        nodes.append(helper.make_node("Add", ["h", "b"], ["hb"]))
        inits.append(W("b", RNG.standard_normal(8)))
        last = "hb"
    nodes += [helper.make_node("Add", [last, "r"], ["s"]),
              helper.make_node("LayerNormalization", ["s", "g", "be"], ["y"], axis=-1, epsilon=1e-5)]
    outputs = [vi("y", None)]
    if share_sum:
        nodes.append(helper.make_node("Relu", ["s"], ["z"]))
        outputs.append(vi("z", None))
    return make(nodes, [vi("x", [2, 5, 8]), vi("r", list(skip_shape))], outputs, inits)


@pytest.mark.parametrize("with_bias,share_sum", [(True, False), (False, False), (True, True)])
def test_fuse_skip_layernorm(with_bias, share_sum):
    m = _post_ln_block(with_bias, share_sum)
    out = graphopt.optimize(m, "fuse-skip-layernorm", target="ort")  # verified (float contract)
    assert ops(out).count("SkipLayerNormalization") == 1 and "LayerNormalization" not in ops(out)
    sln = [n for n in out.graph.node if n.op_type == "SkipLayerNormalization"][0]
    assert len(sln.input) == (5 if with_bias else 4)
    assert (len(sln.output) == 4 and sln.output[3] == "s") if share_sum else len(sln.output) == 1
    check_equiv(m, out, feeds_for(m))


def test_fuse_skip_layernorm_refusals():
    # the residual is broadcast (a different shape): not the same-shape pattern
    m = _post_ln_block(skip_shape=(1, 5, 8))
    assert "SkipLayerNormalization" not in ops(opt(m, "fuse-skip-layernorm", target="ort"))
    # a portable target never gets contrib ops
    assert "SkipLayerNormalization" not in ops(opt(_post_ln_block(), "fuse-skip-layernorm", target="onnx"))
    # LayerNormalization's mean output is read
    m = _post_ln_block()
    ln = [n for n in m.graph.node if n.op_type == "LayerNormalization"][0]
    ln.output.append("mean")
    m.graph.output.append(vi("mean", None))
    assert "SkipLayerNormalization" not in ops(opt(m, "fuse-skip-layernorm", target="ort"))


# -- layout ---------------------------------------------------------------------------------------------------


def test_merge_transpose():
    m = make([helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["a"], ["b"], perm=[0, 3, 1, 2]),
              helper.make_node("Relu", ["b"], ["y"])], [vi("x", [1, 2, 3, 4])], [vi("y", None)])
    out = opt(m, "merge-transpose")
    assert ops(out) == ["Relu"]
    check_equiv(m, out, feeds_for(m), rtol=0)
    m = make([helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 1, 3])], [vi("x", [1, 2, 3, 4])], [vi("y", None)])
    out = opt(m, "merge-transpose")
    assert ops(out) == ["Transpose"] and out.graph.output[0].name == "y"
    check_equiv(m, out, feeds_for(m), rtol=0)


def test_merge_reshape_and_squeeze():
    i64 = lambda n, v: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    m = make([helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["a", "s2"], ["y"])],
             [vi("x", [2, 3, 4])], [vi("y", None)], [i64("s1", [6, 4]), i64("s2", [4, -1])])
    out = opt(m, "merge-reshape")
    assert ops(out) == ["Reshape"]
    check_equiv(m, out, feeds_for(m), rtol=0)
    # second shape copies a dim of the intermediate (0): must not merge
    m0 = make([helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["a", "s2"], ["y"])],
              [vi("x", [2, 3, 4])], [vi("y", None)], [i64("s1", [6, 4]), i64("s2", [0, 2, 2])])
    assert ops(opt(m0, "merge-reshape")) == ["Reshape", "Reshape"]
    mu = make([helper.make_node("Unsqueeze", ["x", "ax"], ["a"]), helper.make_node("Squeeze", ["a", "ax"], ["b"]),
               helper.make_node("Relu", ["b"], ["y"])], [vi("x", [2, 3])], [vi("y", None)], [i64("ax", [1])])
    out = opt(mu, "merge-reshape")
    assert ops(out) == ["Relu"]
    check_equiv(mu, out, feeds_for(mu), rtol=0)
    mv = make([helper.make_node("Unsqueeze", ["x", "ax"], ["a"]), helper.make_node("Squeeze", ["a", "ax2"], ["y"])],
              [vi("x", [1, 3])], [vi("y", None)], [i64("ax", [1]), i64("ax2", [0])])
    assert len(ops(opt(mv, "merge-reshape"))) == 2


@pytest.mark.parametrize("op,cip,ok", [("Conv", 0, True), ("AveragePool", 0, True), ("AveragePool", 1, True),
                                       ("MaxPool", 0, False)])
def test_fold_pad(op, cip, ok):
    i64 = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")
    attrs = dict(kernel_shape=[5, 5], pads=[1, 1, 1, 1]) if op != "Conv" else dict(pads=[1, 0, 0, 1])
    if op == "AveragePool":
        attrs["count_include_pad"] = cip
    ins = ["p", "w"] if op == "Conv" else ["p"]
    inits = [i64] + ([W("w", RNG.standard_normal((2, 3, 3, 3)))] if op == "Conv" else [])
    m = make([helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node(op, ins, ["y"], **attrs)],
             [vi("x", [1, 3, 7, 7])], [vi("y", None)], inits)
    out = opt(m, "fold-pad")
    expect_ok = ok and not (op == "AveragePool" and cip == 0)  # existing pads excluded from the count
    assert ("Pad" not in ops(out)) == expect_ok
    check_equiv(m, out, feeds_for(m))
    if op == "AveragePool" and cip:  # pads reaching the kernel size: pools refuse them
        next(a for a in m.graph.node[1].attribute if a.name == "kernel_shape").ints[:] = [3, 3]
        assert "Pad" in ops(opt(m, "fold-pad"))


# -- whole group on real-ish models ------------------------------------------------------------------------


def test_fuse_group_on_archs():
    archs = pytest.importorskip("graphopt.testing.archs")
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    for m in (archs.resnet50(image=32, width=0.25, blocks=(1, 1, 1, 1)),
              archs.mobilenet_v2(image=32, width=0.25, max_repeats=1)):
        for target in ("onnx", "ort"):
            out = opt(m, "clean,fuse", target=target)
            assert "BatchNormalization" not in ops(out)
            assert len(out.graph.node) < len(m.graph.node)
            check_equiv(m, out, {"input": x})
    bert = archs.bert(layers=1, hidden=64, heads=2, intermediate=128, vocab=100, max_position=16)
    feeds = {"input_ids": RNG.integers(0, 100, (2, 8)), "attention_mask": np.ones((2, 8), np.int64)}
    out = opt(bert, "clean,fuse")
    assert ops(out).count("LayerNormalization") == 3
    check_equiv(bert, out, feeds)
    out = opt(bert, "clean,fuse", target="ort")
    assert "BiasGelu" in ops(out)
    check_equiv(bert, out, feeds)
    # with static shapes the residual Adds are provably same-shape: SkipLayerNormalization
    static = archs.bert(layers=1, hidden=64, heads=2, intermediate=128, vocab=100, max_position=16, batch=2, seq=8)
    out = opt(static, "clean,fuse", target="ort")
    assert ops(out).count("SkipLayerNormalization") == 2 and "BiasGelu" in ops(out)
    check_equiv(static, out, feeds)


def test_fuse_group_verified_on_digits():
    from conftest import MODELS
    p = MODELS / "digits_cnn.onnx"
    if not p.exists():
        pytest.skip("models/digits_cnn.onnx not generated")
    m = onnx.load(p)
    out = graphopt.optimize(m, "clean,fuse")  # with the verification instrument on
    assert "BatchNormalization" not in ops(out)
    x = np.load(MODELS / "digits_test.npz")["input"][:16].astype(np.float32)
    check_equiv(m, out, {"input": x})


def test_fuse_group_on_zoo():
    shrunk = 0
    for path in zoo_models():
        m = onnx.load(path)
        out = graphopt.optimize(m, "fuse", target="ort")  # verification instrument on
        onnx.checker.check_model(out)
        shrunk += len(out.graph.node) < len(m.graph.node)
    assert shrunk >= 3


def test_fuse_ort_conv_add_relu():
    """Conv + residual Add + Relu -> FusedConv with the Z input; a broadcast residual is refused."""
    def model(zshape):
        return make([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Add", ["c", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                    [vi("x", [1, 3, 6, 6]), vi("z", zshape)], [vi("y", None)],
                    [W("w", RNG.standard_normal((4, 3, 3, 3))), W("b", RNG.standard_normal(4))])
    m = model([1, 4, 6, 6])
    out = opt(m, "fuse-ort-activation", target="ort")
    assert ops(out) == ["FusedConv"] and len(out.graph.node[0].input) == 4
    check_equiv(m, out, feeds_for(m))
    mb = model([1, 4, 1, 6])
    assert ops(opt(mb, "fuse-ort-activation", target="ort")) == ["Conv", "Add", "Relu"]


def test_folding_weights_held_by_constant_nodes_leaves_no_unread_constant():
    """PaddleOCR exports keep every weight in a Constant node; a fold that replaces the
    weight must not leave the old Constant node (and its bytes) in the model."""
    rng = np.random.default_rng(0)
    consts = [helper.make_node("Constant", [], [name], value=W(name, v)) for name, v in (
        ("w", rng.standard_normal((4, 3, 3, 3))), ("b", rng.standard_normal(4)),
        ("scale", rng.uniform(0.5, 1.5, 4)), ("shift", rng.standard_normal(4)),
        ("mean", rng.standard_normal(4)), ("var", rng.uniform(0.5, 1.5, 4)))]
    m = make(consts + [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["y"])],
             [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])])
    out = opt(m, "fold-bn")
    assert [n.op_type for n in out.graph.node if n.op_type != "Constant"] == ["Conv"]
    read = {i for n in out.graph.node for i in n.input}
    assert all(o in read for n in out.graph.node for o in n.output if n.op_type == "Constant"), \
        [n.output for n in out.graph.node]
    check_equiv(m, out, {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)})
