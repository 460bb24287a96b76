"""Tensor shapes of a model with its symbolic dimensions bound.

`infer_shapes(model, input_shapes) -> ShapeInfo` returns every tensor's shape (graph inputs, weights,
intermediate values, also inside If/Loop/Scan bodies) after onnx shape inference, with the
graph inputs' symbolic dims bound first. Shape inference runs on a skeleton of the model:
large weights are replaced by typed graph inputs, so it never copies the weights and works
for models over 2 GB and with unloaded external data.

When onnx's inference leaves dims unknown (common for transformer exports whose Reshape
targets are computed at run time), onnxruntime's symbolic shape inference is tried too.

`static_shapes(model, input_shapes) -> dict[str, list]` is onnx's inference alone, for
rewrites that must trust only what it proves (channel pruning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx

from .._proto import copy_fields
from ..errors import GraphoptError

log = logging.getLogger(__name__)

# A dim is an int when known, a str when symbolic, None when unknown.
Dim = "int | str | None"
Shape = tuple

_SMALL = 4096  # initializers up to this many elements stay as values (for data propagation)


@dataclass
class ShapeInfo:
    """Shapes and element types of the tensors of a model (by tensor name)."""

    shapes: dict[str, tuple] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    bound: dict[str, tuple] = field(default_factory=dict)  # the graph inputs' bound shapes
    dims: dict[str, int] = field(default_factory=dict)  # symbolic dim name -> value

    def shape(self, name: str) -> tuple | None:
        return self.shapes.get(name)

    def as_lists(self) -> dict[str, list]:
        """Tensor name -> dims as a list, for the tensors whose rank is known."""
        return {k: list(v) for k, v in self.shapes.items() if v is not None}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the main graph (not initializers listed as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims_of(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # exporters write -1 for "any"
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and d.dim_param != "?":
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def input_signature(model: onnx.ModelProto) -> dict[str, tuple | None]:
    """Graph input name -> declared shape (ints, symbolic names or None)."""
    return {vi.name: _dims_of(vi) for vi in graph_inputs(model)}


def resolve_input_shapes(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    batch: int | None = None,
) -> tuple[dict[str, tuple], dict[str, int]]:
    """Concrete shapes of the graph inputs, from explicit shapes, named dims and a batch size.

    `input_shapes` gives whole shapes by input name; `dims` binds symbolic dim names
    (e.g. {"seq": 128}); `batch` binds the leading dim of every input whose leading dim is
    symbolic or unknown. A symbolic name bound by one input's shape binds it everywhere.
    Returns (input name -> shape, where dims may still be symbolic/None if unbound,
    dim name -> value). Raises GraphoptError on conflicts and unknown input names.
    """
    sig = input_signature(model)
    input_shapes = dict(input_shapes or {})
    for name in input_shapes:
        if name not in sig:
            raise GraphoptError(
                f"--input-shape names '{name}', which is not an input of the model "
                f"(inputs: {', '.join(sig) or 'none'})"
            )
    named: dict[str, int] = dict(dims or {})
    # First pass: learn symbolic names from explicit shapes.
    for name, given in input_shapes.items():
        declared = sig[name]
        given = tuple(int(d) for d in given)
        if declared is not None and len(declared) != len(given):
            raise GraphoptError(
                f"input '{name}' has rank {len(declared)} {_fmt(declared)}, "
                f"but the given shape {_fmt(given)} has rank {len(given)}"
            )
        for i, (d, g) in enumerate(zip(declared or (), given)):
            if isinstance(d, int) and d != g:
                raise GraphoptError(
                    f"input '{name}' has fixed dim {i} = {d}, but the given shape says {g}"
                )
            if isinstance(d, str):
                if d in named and named[d] != g:
                    raise GraphoptError(
                        f"dim '{d}' is bound to {named[d]} and to {g} (input '{name}')"
                    )
                named[d] = g
    out: dict[str, tuple] = {}
    for name, declared in sig.items():
        if name in input_shapes:
            out[name] = tuple(int(d) for d in input_shapes[name])
            continue
        if declared is None:
            out[name] = None  # type: ignore[assignment]
            continue
        shape = []
        for i, d in enumerate(declared):
            if isinstance(d, str) and d in named:
                shape.append(named[d])
            elif i == 0 and batch is not None and not isinstance(d, int):
                shape.append(batch)
                if isinstance(d, str):
                    named[d] = batch
            else:
                shape.append(d)
        out[name] = tuple(shape)
    # Second pass: a batch given late may bind names used by earlier inputs.
    for name, shape in out.items():
        if shape is not None:
            out[name] = tuple(named.get(d, d) if isinstance(d, str) else d for d in shape)
    return out, named


def _fmt(shape: Sequence) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def skeleton(model: onnx.ModelProto, bound: Mapping[str, tuple] | None = None) -> onnx.ModelProto:
    """A copy of the model for shape inference and the checker: the data of big weights is
    left out (they become typed graph inputs); `bound` pins input shapes. Cheap to serialize."""
    bound = bound or {}
    sk = onnx.ModelProto()
    copy_fields(model, sk, skip=("graph",))
    src, g = model.graph, sk.graph
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    inits = {t.name for t in src.initializer}
    for vi in src.input:
        if vi.name in inits:
            continue  # re-added below from the initializer itself
        new = g.input.add()
        new.CopyFrom(vi)
        shape = bound.get(vi.name)
        if shape is not None and new.type.HasField("tensor_type"):
            tshape = new.type.tensor_type.shape
            tshape.ClearField("dim")
            for d in shape:
                dim = tshape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
    for t in src.initializer:
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        external = t.data_location == onnx.TensorProto.EXTERNAL
        if n <= _SMALL and not external:
            g.initializer.append(t)
            if sk.ir_version < 4:  # before IR 4 an initializer must also be a graph input
                g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                  list(t.dims)))
        else:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return sk


def _walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk_graphs(sub)


def _collect(model: onnx.ModelProto, info: ShapeInfo, *, overwrite: bool) -> None:
    for graph in _walk_graphs(model.graph):
        for t in graph.initializer:
            info.shapes.setdefault(t.name, tuple(int(d) for d in t.dims))
            info.dtypes.setdefault(t.name, t.data_type)
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                info.dtypes.setdefault(vi.name, vi.type.tensor_type.elem_type)
            dims = _dims_of(vi)
            if dims is None:
                continue
            old = info.shapes.get(vi.name)
            if old is None or (overwrite and _unknowns(dims) < _unknowns(old)):
                info.shapes[vi.name] = dims
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        info.shapes.setdefault(node.output[0], tuple(int(d) for d in a.t.dims))
                        info.dtypes.setdefault(node.output[0], a.t.data_type)


def _unknowns(shape: tuple) -> int:
    return sum(1 for d in shape if not isinstance(d, int))


def infer_shapes(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    batch: int | None = None,
) -> ShapeInfo:
    """Every tensor's shape after binding the inputs (see `resolve_input_shapes`)."""
    bound, named = resolve_input_shapes(model, input_shapes, dims=dims, batch=batch)
    sk = skeleton(model, bound)
    info = ShapeInfo(bound=dict(bound), dims=named)
    inferred = onnx_inferred(sk)
    inferred = sk if inferred is None else inferred
    _collect(inferred, info, overwrite=False)
    if _has_unknown_values(inferred, info):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            # Driven step by step rather than through its infer_shapes(), which saves a
            # file into the current directory when some shapes stay unknown.
            sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
            sym._preprocess(sk)
            while sym.run_:
                sym._infer_impl()
            sym._update_output_from_vi()
            _collect(sym.out_mp_, info, overwrite=True)
        except Exception as e:  # best effort: it fails on ops it does not know
            log.info("onnxruntime symbolic shape inference failed: %s", e)
    return info


def static_shapes(model: onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, list]:
    """Tensor name -> dims (an int, a symbolic name, or None when unknown) of the main
    graph's tensors and initializers, as onnx shape inference alone proves them (no
    onnxruntime fallback, no run): for rewrites that may only trust proven shapes.
    `input_shapes` (name -> dims) pins the positive int dims given for graph inputs of
    the same rank; unlike `infer_shapes` nothing is checked or required."""
    sk = skeleton(model)
    for vi in sk.graph.input:
        dims = (input_shapes or {}).get(vi.name)
        if dims is not None and len(dims) == len(vi.type.tensor_type.shape.dim):
            for d, v in zip(vi.type.tensor_type.shape.dim, dims):
                if isinstance(v, int) and v > 0:
                    d.dim_value = v
    inferred = onnx_inferred(sk)
    inferred = model if inferred is None else inferred
    shapes: dict[str, list] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in tt.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def onnx_inferred(sk: onnx.ModelProto, *, data_prop: bool = True) -> onnx.ModelProto | None:
    """`sk` (a `skeleton`) with the value_info onnx shape inference adds; None if it fails."""
    try:
        return onnx.shape_inference.infer_shapes(sk, check_type=False, strict_mode=False,
                                                 data_prop=data_prop)
    except Exception as e:  # onnx raises InferenceError and friends on broken models
        log.info("onnx shape inference failed (%s); using declared shapes only", e)
        return None


def _has_unknown_values(model: onnx.ModelProto, info: ShapeInfo) -> bool:
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            s = info.shapes.get(name)
            if s is None or _unknowns(s):
                return True
    return False


def unknown_tensors(model: onnx.ModelProto, info: ShapeInfo) -> list[str]:
    """Outputs of main-graph nodes whose shape is not fully known."""
    out = []
    for node in model.graph.node:
        for name in node.output:
            s = info.shapes.get(name)
            if name and (s is None or _unknowns(s)):
                out.append(name)
    return out


def shapes_from_run(model: onnx.ModelProto, info: ShapeInfo, names: Sequence[str],
                    *, seed: int = 0) -> dict[str, tuple]:
    """Fill in shapes of `names` by running the model once in onnxruntime on random inputs
    of the bound shapes (for data-dependent shapes: what this input produced). Returns the
    shapes found; tensors of non-tensor type or that onnxruntime cannot expose are left out.
    """
    from ..runtime import random_inputs, session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    added = []
    for name in names:
        if name in existing:
            continue
        dtype = info.dtypes.get(name, 0)
        if not dtype:
            continue
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype, None))
        added.append(name)
    if not added:
        return {}
    try:
        sess = session(probe, threads=1, optimize=True, log_level=3)
        feeds = random_inputs(sess, seed=seed, shapes={k: v for k, v in info.bound.items() if v is not None},
                              normal=True)[0]
        outs = sess.run(added, feeds)
    except Exception as e:  # a best-effort probe: report nothing rather than fail
        log.info("could not run the model to find shapes: %s", e)
        return {}
    found = {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(added, outs)}
    info.shapes.update(found)
    return found
