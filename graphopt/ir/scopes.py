"""Scopes and value kinds: what a rewrite may remove, rename or replace."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import outer_names_used, subgraphs_of
from .valuetypes import _KIND_OF_FIELD, copy_value_type, value_type

#
# Every rewrite that drops a node or redirects a value asks here first. The rules:
#  * a graph output of a subgraph (If/Loop/Scan body) stays produced by a node of that
#    subgraph (onnxruntime refuses an outer-scope value or a graph input returned
#    directly), and every graph's output names are kept;
#  * a value a nested subgraph reads by name is alive and observable: its name is kept;
#  * redirecting a value updates nested subgraphs that read it by name, except below a
#    scope that defines the same name (shadowing);
#  * sequences, optionals and maps are never replaced by tensors (nor folded into them).

_NON_TENSOR_PREFIXES = (("seq(", "sequence"), ("optional(", "optional"), ("map(", "map"),
                        ("sparse_tensor(", "sparse_tensor"), ("tensor(", "tensor"))


def _kind_of_type_str(type_str: str) -> str | None:
    for prefix, kind in _NON_TENSOR_PREFIXES:
        if type_str.startswith(prefix):
            return kind
    return None


def _schema(node: gs.Node, opset: int | None):
    try:
        domain = node.domain or ""
        if domain == "ai.onnx":
            domain = ""
        if opset is None or domain != "":
            return onnx.defs.get_schema(node.op, domain)
        return onnx.defs.get_schema(node.op, opset, domain)
    except Exception:  # unknown op, model-local function, custom domain
        return None


def value_kind(t: gs.Tensor, opset: int | None = None, _depth: int = 0) -> str | None:
    """What kind of value `t` is: 'tensor', 'sequence', 'optional', 'map', 'sparse_tensor'
    or 'opaque'; None when nothing tells. Decided by the value's own type (its ValueInfo
    as imported) or else by its producer's schema (output type constraint; for a
    polymorphic output, the input bound to the same type parameter; for If, the branch
    output)."""
    if isinstance(t, gs.Constant):
        return "tensor"
    tp = value_type(t)
    if tp is not None:
        return _KIND_OF_FIELD.get(tp.WhichOneof("value"))
    gs_type = getattr(t, "type", "tensor_type")
    if gs_type not in (None, "tensor_type"):
        return _KIND_OF_FIELD.get(gs_type)
    if t.dtype is not None and isinstance(t.dtype, (np.dtype, type)):
        return "tensor"  # typed as a tensor by a ValueInfo or by the pass that made it
    if _depth > 64 or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    idx = next((i for i, o in enumerate(node.outputs) if o is t), None)
    if idx is None:
        return None
    if node.op == "If" and (node.domain or "") in ("", "ai.onnx"):
        branch = node.attrs.get("then_branch")
        if isinstance(branch, gs.Graph) and idx < len(branch.outputs):
            return value_kind(branch.outputs[idx], opset, _depth + 1)
        return None
    if node.op == "Loop" and (node.domain or "") in ("", "ai.onnx"):
        body = node.attrs.get("body")  # body outputs: cond, carried..., scan outputs...
        if isinstance(body, gs.Graph) and idx + 1 < len(body.outputs):
            kind = value_kind(body.outputs[idx + 1], opset, _depth + 1)
            n_carried = max(len(node.inputs) - 2, 0)
            return kind if idx < n_carried or kind != "tensor" else "tensor"
        return None
    schema = _schema(node, opset)
    if schema is None or not schema.outputs:
        return None
    formal = schema.outputs[min(idx, len(schema.outputs) - 1)]
    allowed = [formal.type_str]
    for c in schema.type_constraints:
        if c.type_param_str == formal.type_str:
            allowed = list(c.allowed_type_strs)
            break
    kinds = {_kind_of_type_str(a) for a in allowed}
    if len(kinds) == 1:
        return kinds.pop()
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    if formal.option == variadic:
        return None  # which input binds which output is op-specific
    for i, fin in enumerate(schema.inputs):
        if fin.type_str == formal.type_str and fin.option != variadic \
                and i < len(node.inputs) and node.inputs[i].name:
            return value_kind(node.inputs[i], opset, _depth + 1)
    return None


def is_tensor(t: gs.Tensor, opset: int | None = None) -> bool:
    """True only when `t` is known to be a tensor (not a sequence, optional or map)."""
    return value_kind(t, opset) == "tensor"


def produced_in(graph: gs.Graph, t: gs.Tensor) -> bool:
    """`t` is the output of a node of `graph` itself (not an input, constant or outer value)."""
    if isinstance(t, gs.Constant) or len(t.inputs) != 1:
        return False
    node = t.inputs[0]
    return any(n is node for n in graph.nodes)


def observed_names(graph: gs.Graph) -> set[str]:
    """Names of `graph` whose values must stay observable under their name: the graph's
    outputs and every name a nested subgraph reads from this graph or above."""
    names = {t.name for t in graph.outputs}
    for node in graph.nodes:
        for sub in subgraphs_of(node):
            names |= outer_names_used(sub)
    return names


def why_not_replace(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> str | None:
    """None when every use of `old` may read `new` instead without adding a node, else
    the reason. `old` is a value of `graph`; uses in nested subgraphs are included."""
    if old is new:
        return None
    ko, kn = value_kind(old, graph.opset), value_kind(new, graph.opset)
    if ko is not None and kn is not None and ko != kn:
        return f"'{old.name}' is a {ko}, '{new.name}' a {kn}"
    if any(o is old for o in graph.outputs) and not can_take_name(new, graph):
        return (f"'{old.name}' is an output of its graph and '{new.name}' cannot take its name "
                f"(not produced by a node of that graph, or itself an input/output)")
    return None


def can_take_name(new: gs.Tensor, graph: gs.Graph) -> bool:
    """`new` may be renamed to a graph output's name: it is produced by a node of this
    very graph and is neither one of its inputs nor already one of its outputs."""
    return (isinstance(new, gs.Variable) and produced_in(graph, new)
            and not any(t is new for t in graph.inputs) and not any(t is new for t in graph.outputs))


def _defines(g: gs.Graph, name: str) -> bool:
    if any(t.name == name for t in g.inputs):
        return True
    return any(t.name == name for n in g.nodes for t in n.outputs)


def _redirect_nested(graph: gs.Graph, name: str, new: gs.Tensor, keep: gs.Tensor | None = None) -> None:
    """In the subgraphs nested in `graph`, make reads of outer `name` read `new` (by
    object), stopping below any subgraph that defines `name` itself (shadowing). Reads
    of the object `keep` (the value being renamed in place) are left as they are."""
    for node in graph.nodes:
        for sub in subgraphs_of(node):
            if _defines(sub, name):
                continue
            for inner in sub.nodes:
                for i, t in enumerate(inner.inputs):
                    if t.name == name and t is not new and t is not keep and not isinstance(t, gs.Constant):
                        inner.inputs[i] = new
            for i, t in enumerate(sub.outputs):  # (a subgraph output that is an outer value)
                if t.name == name and t is not new and t is not keep and not isinstance(t, gs.Constant):
                    sub.outputs[i] = new
            _redirect_nested(sub, name, new, keep)


def rename_value(t: gs.Tensor, name: str, graph: gs.Graph) -> None:
    """Rename a value of `graph` and the by-name reads of it in nested subgraphs."""
    old_name = t.name
    t.name = name
    _redirect_nested(graph, old_name, t)


def replace_all_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Make every consumer of `old` (in this graph and, by name unless shadowed, in its
    nested subgraphs) read `new` instead.

    If `old` is an output of `graph`, the output keeps its name and stays produced by a
    node of `graph`: `new` takes over the name when `can_take_name`, else an Identity
    from `new` produces it. Call `why_not_replace` first when the point is to remove a
    node (the Identity fallback would put one back).
    """
    if old is new:
        return
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    _redirect_nested(graph, old.name, new)
    if any(o is old for o in graph.outputs):
        idx = next(i for i, o in enumerate(graph.outputs) if o is old)
        name = old.name
        old.name = name + "__graphopt_old"
        if can_take_name(new, graph):
            rename_value(new, name, graph)
            copy_value_type(old, new)
            graph.outputs[idx] = new
        else:
            out = gs.Variable(name, dtype=old.dtype, shape=old.shape)
            copy_value_type(old, out)
            graph.nodes.append(gs.Node("Identity", inputs=[new], outputs=[out]))
            graph.outputs[idx] = out
