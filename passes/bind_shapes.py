"""Static shapes (group `static-shapes`): bind the graph inputs' shapes and fold shape arithmetic.

Compilers that want static shapes (TVM's Relax ONNX importer: "Reshape requires the input
new shape to be Shape") fail on models whose Reshape/Expand/Resize targets are computed at
run time from `Shape` ops. Given concrete input shapes (`--input-shape`, i.e.
PassContext.input_shapes), `bind-shapes` writes them into the graph inputs and annotates
every tensor with its inferred shape (onnx shape inference, then onnxruntime's symbolic
inference); `fold-constants` can then evaluate the `Shape` ops and everything computed
from them. The group repeats the two (plus `dce`) to a fixed point, because a folded
Reshape target often makes further shapes known.

`bind-shapes` is `exact` for inputs of the bound shapes: it changes no computation, but
the model accepts only those shapes afterwards (the verifier draws exactly those).
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from graphopt import Model, Pass, PassContext, PassResult, register_group, register_pass
from graphopt.ir import value_kind

log = logging.getLogger(__name__)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


@register_pass("bind-shapes")
class BindShapes(Pass):
    """Fix the graph inputs to the given --input-shape and annotate every tensor's static shape."""

    contract = "exact"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from graphopt.analysis.shapes import infer_shapes, resolve_input_shapes

        if not ctx.input_shapes:
            return PassResult(False, {"note": "no --input-shape given: nothing to bind"})
        proto = model.to_onnx()
        bound, _ = resolve_input_shapes(proto, ctx.input_shapes)
        inputs_bound = 0
        for t in model.graph.inputs:
            shape = bound.get(t.name)
            if _static(shape) and (t.shape is None or list(t.shape) != list(shape)):
                t.shape = list(shape)
                inputs_bound += 1
        info = infer_shapes(proto, ctx.input_shapes)
        annotated = 0
        graph_inputs = {t.name for t in model.graph.inputs}
        for name, t in model.graph.tensors().items():
            if not isinstance(t, gs.Variable) or name in graph_inputs or value_kind(t) not in (None, "tensor"):
                continue  # (a sequence, optional or map keeps its own type)
            shape = info.shapes.get(name)
            if not _static(shape):
                continue
            if t.shape is not None and _static(t.shape) and list(t.shape) == list(shape):
                continue
            t.shape = list(shape)
            if t.dtype is None and name in info.dtypes:
                import onnx

                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(info.dtypes[name])
            annotated += 1
        return PassResult(inputs_bound + annotated > 0,
                          {"inputs_bound": inputs_bound, "tensors_annotated": annotated})


register_group("static-shapes", ["bind-shapes", "fold-constants", "dce"],
               "bind input shapes and fold shape computations to constants", fixed_point=True)
