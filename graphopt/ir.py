"""The graph IR: onnx-graphsurgeon graphs, wrapped with what passes must not lose.

`Model` holds a `gs.Graph` for the passes to rewrite and, beside it, everything of the
original ModelProto that passes do not own (ir_version, opset imports of every domain,
model-local functions, metadata, doc strings, training info). `Model.to_onnx()` puts
the two back together.

The small helpers here are shared by passes: walking subgraphs, reading constants,
rewiring consumers, counting.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from ._proto import copy_fields
from .errors import GraphoptError

log = logging.getLogger(__name__)

# gs is chatty at WARNING level about things we handle ourselves.
from onnx_graphsurgeon.logger import G_LOGGER as _GS_LOGGER  # noqa: E402

_GS_LOGGER.severity = _GS_LOGGER.ERROR

_KEEP_NODE_FIELDS = ("doc_string", "metadata_props")


# -- value types that onnx-graphsurgeon does not keep ---------------------------------
#
# gs models every value as a tensor with a numpy dtype and a `type` string. For a
# sequence of sequences, an optional, a map or an opaque value it keeps no usable element
# type, and exporting an optional raises UnboundLocalError. The importer below remembers
# the exact TypeProto of every value whose ValueInfo is not a plain tensor (on the gs
# Variable, as `_graphopt_type`), and the exporter writes it back. Both are installed on
# gs's importer/exporter classes once, when this module is imported, so every path that
# exports through gs (Model.to_onnx, subgraph attributes, fold-constants' sessions) keeps
# the types.

_TYPE_ATTR = "_graphopt_type"
_KIND_OF_FIELD = {"tensor_type": "tensor", "sequence_type": "sequence", "optional_type": "optional",
                  "map_type": "map", "sparse_tensor_type": "sparse_tensor", "opaque_type": "opaque"}


def _import_tensor_keeping_type(onnx_tensor):
    tensor = _GS_IMPORT_TENSOR(onnx_tensor)
    if isinstance(onnx_tensor, onnx.ValueInfoProto) and onnx_tensor.type.ByteSize() > 0:
        field = onnx_tensor.type.WhichOneof("value")
        if field is not None and field != "tensor_type":
            tp = onnx.TypeProto()
            tp.CopyFrom(onnx_tensor.type)
            setattr(tensor, _TYPE_ATTR, tp)
    return tensor


def _export_value_info_keeping_type(tensor, do_type_check: bool) -> onnx.ValueInfoProto:
    tp = getattr(tensor, _TYPE_ATTR, None)
    if tp is not None and not isinstance(tensor, gs.Constant):
        vi = onnx.ValueInfoProto()
        vi.name = tensor.name
        vi.type.CopyFrom(tp)
        return vi
    kind = getattr(tensor, "type", "tensor_type")
    if isinstance(tensor, gs.Constant) or kind in ("tensor_type", "sequence_type", "sparse_tensor_type"):
        try:
            return _GS_EXPORT_VALUE_INFO(tensor, do_type_check)
        except (UnboundLocalError, TypeError, ValueError):
            pass
    # An optional, a map or an opaque value whose exact type is unknown here: an untyped
    # ValueInfo (onnx's type inference fills it in) rather than a wrong tensor type.
    return onnx.helper.make_empty_tensor_value_info(tensor.name)


def value_type(t: gs.Tensor) -> onnx.TypeProto | None:
    """The exact ONNX type of a non-tensor value as imported (None for tensors/unknown)."""
    return getattr(t, _TYPE_ATTR, None)


def copy_value_type(src: gs.Tensor, dst: gs.Tensor) -> None:
    """Give `dst` the value type of `src` (dtype, shape, and a non-tensor type)."""
    if isinstance(dst, gs.Constant):
        return
    if dst.dtype is None:
        dst.dtype = src.dtype
    if dst.shape is None:
        dst.shape = src.shape
    if not isinstance(src, gs.Constant):
        dst.type = getattr(src, "type", "tensor_type")
        tp = value_type(src)
        if tp is not None:
            setattr(dst, _TYPE_ATTR, tp)


_KEPT_ATTR_TYPES = {onnx.AttributeProto.TYPE_PROTO: "tp", onnx.AttributeProto.TYPE_PROTOS: "type_protos"}


def _import_attributes_keeping_types(onnx_attributes, *args, **kwargs):
    """gs drops TYPE_PROTO attributes (e.g. Optional's `type`), which changes what the
    node means; keep them as TypeProto values (onnx.helper.make_attribute writes them)."""
    attrs = _GS_IMPORT_ATTRIBUTES(onnx_attributes, *args, **kwargs)
    for attr in onnx_attributes:
        field = _KEPT_ATTR_TYPES.get(attr.type)
        if field is None or attr.name in attrs or attr.ref_attr_name:
            continue
        if field == "tp":
            tp = onnx.TypeProto()
            tp.CopyFrom(attr.tp)
            attrs[attr.name] = tp
        else:
            attrs[attr.name] = [onnx.TypeProto.FromString(t.SerializeToString()) for t in attr.type_protos]
    return attrs


from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter as _OnnxExporter  # noqa: E402

_GS_IMPORT_ATTRIBUTES = OnnxImporter.import_attributes

_GS_IMPORT_TENSOR = OnnxImporter.import_tensor
_GS_EXPORT_VALUE_INFO = _OnnxExporter.export_value_info_proto
if not getattr(OnnxImporter, "_graphopt_patched", False):
    OnnxImporter.import_tensor = staticmethod(_import_tensor_keeping_type)
    _OnnxExporter.export_value_info_proto = staticmethod(_export_value_info_keeping_type)
    OnnxImporter.import_attributes = staticmethod(_import_attributes_keeping_types)
    OnnxImporter._graphopt_patched = True


class Model:
    """A model under optimization: a gs graph plus the untouched rest of the ModelProto."""

    def __init__(
        self, graph: gs.Graph, template: onnx.ModelProto, node_meta: dict | None = None,
        initializer_inputs: list[str] | None = None,
    ):
        self.graph = graph
        self._template = template
        self._node_meta = node_meta or {}
        # Initializers that the original model also listed as graph inputs (required
        # before IR 4, an overridable default after). gs imports them as constants only;
        # they are listed as inputs again on export unless a pass clears this list.
        self.initializer_inputs: list[str] = initializer_inputs or []

    # -- conversion -------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto) -> "Model":
        opset = None
        domains = []
        for imp in proto.opset_import:
            domains.append(onnx.helper.make_opsetid(imp.domain, imp.version))
            if imp.domain in ("", "ai.onnx"):
                opset = imp.version
        try:
            graph = OnnxImporter.import_graph(
                proto.graph,
                opset=opset,
                import_domains=domains,
                producer_name=proto.producer_name,
                producer_version=proto.producer_version,
                functions=[],
                ir_version=proto.ir_version,
            )
        except Exception as e:  # gs raises assorted exceptions on malformed graphs
            raise GraphoptError(f"cannot import graph: {e}") from e
        return cls.around(graph, proto)

    @classmethod
    def around(cls, graph: gs.Graph, like: onnx.ModelProto) -> "Model":
        """`graph` with everything of `like` but its graph: IR version, opset imports,
        functions, metadata, producer, doc strings, training info, the doc strings and
        metadata of its nodes (by name), and which initializers it lists as inputs."""
        template = onnx.ModelProto()
        copy_fields(like, template, skip=("graph",))
        node_meta = {}
        for node in iter_proto_nodes(like.graph):
            if node.name and (node.doc_string or len(node.metadata_props)):
                node_meta[node.name] = (node.doc_string, list(node.metadata_props))
        init_names = {t.name for t in like.graph.initializer}
        init_inputs = [i.name for i in like.graph.input if i.name in init_names]
        return cls(graph, template, node_meta, init_inputs)

    def to_onnx(self) -> onnx.ModelProto:
        toposort(self.graph)
        model = onnx.ModelProto()
        model.CopyFrom(self._template)
        del model.opset_import[:]
        model.opset_import.extend(self._opset_imports())
        export_graph_into(self.graph, model.graph)
        if self.initializer_inputs:
            self._export_initializer_inputs(model.graph)
        if model.ir_version < 4:
            # Before IR 4 every initializer must also be a graph input; a folded constant
            # is not one. IR 4 allows that and changes nothing else (prune-initializers
            # raises the version the same way).
            listed = {i.name for i in model.graph.input}
            if any(t.name not in listed for t in model.graph.initializer):
                log.info("ir_version %d -> 4: the model now has initializers that are not graph inputs",
                         model.ir_version)
                model.ir_version = 4
        if self._node_meta:
            for node in iter_proto_nodes(model.graph):
                meta = self._node_meta.get(node.name)
                if meta:
                    node.doc_string = meta[0]
                    node.metadata_props.extend(meta[1])
        return model

    def _export_initializer_inputs(self, graph: onnx.GraphProto) -> None:
        by_name = {t.name: t for t in graph.initializer}
        listed = {i.name for i in graph.input}
        for name in self.initializer_inputs:
            t = by_name.get(name)
            if t is not None and name not in listed:
                graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))

    def _opset_imports(self) -> list[onnx.OperatorSetIdProto]:
        versions: dict[str, int] = {}
        for imp in self._template.opset_import:
            versions[imp.domain] = imp.version
        for imp in self.graph.import_domains or []:
            versions[imp.domain] = imp.version
        default = "ai.onnx" if "ai.onnx" in versions and "" not in versions else ""
        if self.graph.opset is not None:
            versions[default] = self.graph.opset
        function_domains = {f.domain for f in self._template.functions}
        for node in iter_nodes(self.graph):
            if node.domain and node.domain not in versions and node.domain not in function_domains:
                versions[node.domain] = 1
        return [onnx.helper.make_opsetid(d, v) for d, v in versions.items()]

    def copy(self) -> "Model":
        return Model.from_onnx(self.to_onnx())

    def replace_with(self, other: "Model") -> None:
        """Take over another model's contents (used to revert or to swap in a converted model)."""
        self.graph = other.graph
        self._template = other._template
        self._node_meta = other._node_meta
        self.initializer_inputs = other.initializer_inputs

    def set_metadata(self, key: str, value: str) -> None:
        """Set one metadata_props entry of the model (kept on export)."""
        for prop in self._template.metadata_props:
            if prop.key == key:
                prop.value = value
                return
        self._template.metadata_props.add(key=key, value=value)

    # -- facts --------------------------------------------------------------------------
    @property
    def template(self) -> onnx.ModelProto:
        """The non-graph part of the model (read-only by convention)."""
        return self._template

    def opset(self, domain: str = "") -> int | None:
        if domain in ("", "ai.onnx"):
            return self.graph.opset
        for imp in self.graph.import_domains or []:
            if imp.domain == domain:
                return imp.version
        return None

    def set_opset(self, version: int) -> None:
        self.graph.opset = version
        for imp in self.graph.import_domains or []:
            if imp.domain in ("", "ai.onnx"):
                imp.version = version

    @property
    def ir_version(self) -> int:
        return self._template.ir_version

    @ir_version.setter
    def ir_version(self, value: int) -> None:
        self._template.ir_version = value
        self.graph.ir_version = value

    @property
    def function_ids(self) -> set[tuple[str, str]]:
        return {(f.domain, f.name) for f in self._template.functions}

    def node_count(self) -> int:
        return sum(1 for _ in iter_nodes(self.graph))

    def weight_bytes(self) -> int:
        return sum(constant_nbytes(t) for t in iter_constants(self.graph))


def export_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph rewritten from `like` (e.g. `gs.import_onnx(like)`) as a ModelProto
    that keeps the rest of `like` (see `Model.around`), opset imports of custom domains
    its nodes use added. Before IR 4 every initializer must also be a graph input: all
    are listed, so the IR version is kept (`Model.to_onnx` raises it to 4 instead)."""
    model = Model.around(graph, like)
    if like.ir_version < 4:
        model.initializer_inputs = [name for name, t in graph.tensors().items()
                                    if isinstance(t, gs.Constant) and not _is_sparse(t)]
    out = model.to_onnx()
    if {(i.domain, i.version) for i in out.opset_import} == {(i.domain, i.version) for i in like.opset_import}:
        del out.opset_import[:]  # like's own entries, byte for byte (quant's timing cache keys on bytes)
        out.opset_import.extend(like.opset_import)
    return out


def _is_sparse(t: gs.Constant) -> bool:
    from onnx_graphsurgeon.ir.tensor import SparseValues

    return isinstance(t._values, SparseValues)


def export_graph_into(graph: gs.Graph, out: onnx.GraphProto) -> None:
    """Write a gs graph into an (empty) GraphProto, copying each weight only once.

    Like gs.export_onnx, but without building an intermediate ModelProto (which would
    copy every initializer twice more: expensive on models of hundreds of MB).
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.ir.tensor import SparseValues

    out.name = graph.name or "graph"
    if graph.doc_string:
        out.doc_string = graph.doc_string
    out.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    out.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    out.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    tensors = graph.tensors()
    for t in tensors.values():
        if not isinstance(t, gs.Constant):
            continue
        if isinstance(t._values, SparseValues):
            out.sparse_initializer.add().CopyFrom(OnnxExporter.export_sparse_tensor_proto(t))
        else:
            out.initializer.add().CopyFrom(OnnxExporter.export_tensor_proto(t))
    io_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    out.value_info.extend(
        OnnxExporter.export_value_info_proto(t, False)
        for name, t in tensors.items()
        if name not in io_names
        and isinstance(t, gs.Variable)
        and (t.dtype is not None or t.shape is not None)
    )


# -- walking --------------------------------------------------------------------------


def iter_proto_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a GraphProto and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_proto_nodes(attr.g)
            for g in attr.graphs:
                yield from iter_proto_nodes(g)


def subgraphs_of(node: gs.Node) -> list[gs.Graph]:
    out = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, gs.Graph))
    return out


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and all its subgraphs, outermost first."""
    yield graph
    for node in graph.nodes:
        for sub in subgraphs_of(node):
            yield from iter_graphs(sub)


def iter_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for g in iter_graphs(graph):
        yield from g.nodes


def iter_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every constant the graph and its subgraphs use (node inputs, graph outputs), once."""
    seen = set()
    for g in iter_graphs(graph):
        for tensors in [g.outputs, g.inputs] + [n.inputs for n in g.nodes]:
            for t in tensors:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    yield t


def constant_nbytes(t: gs.Constant) -> int:
    values = t._values
    return int(values.nbytes) if hasattr(values, "nbytes") else 0


def outer_names_used(graph: gs.Graph) -> set[str]:
    """Names a subgraph reads from enclosing scopes (inputs of its nodes not produced inside)."""
    produced = {t.name for t in graph.inputs}
    for node in graph.nodes:
        produced.update(t.name for t in node.outputs)
    used = set()
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and t.name not in produced and not isinstance(t, gs.Constant):
                used.add(t.name)
        for sub in subgraphs_of(node):
            used |= outer_names_used(sub) - produced
    return used


# -- constants ------------------------------------------------------------------------


def is_const(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant)


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant-node output), else None."""
    if isinstance(t, gs.Constant):
        return t.values
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        node = t.inputs[0]
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return value.values
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in node.attrs:
                return np.array(node.attrs[key], dtype=dtype)
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in node.attrs:
                return np.array(node.attrs[key], dtype=dtype)
    return None


# -- rewiring -------------------------------------------------------------------------


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


# -- scopes and value kinds: what a rewrite may remove, rename or replace ----------------
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


def count_by_op(graph: gs.Graph) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for node in iter_nodes(graph):
        counts[node.op] += 1
    return dict(counts)


def check_acyclic(graph: gs.Graph) -> None:
    """Raise GraphoptError if the graph (or a subgraph) has a cycle or an undefined input."""
    for g in iter_graphs(graph):
        producers = {}
        for node in g.nodes:
            for t in node.outputs:
                producers[t.name] = node
        state: dict[int, int] = {}
        for start in g.nodes:
            if id(start) in state:
                continue
            stack = [(start, iter(start.inputs))]
            state[id(start)] = 1
            while stack:
                node, it = stack[-1]
                advanced = False
                for t in it:
                    prod = producers.get(t.name)
                    if prod is None:
                        continue
                    s = state.get(id(prod))
                    if s == 1:
                        raise GraphoptError(
                            f"invalid graph: cycle through node '{prod.name or prod.op}' (tensor '{t.name}')"
                        )
                    if s is None:
                        state[id(prod)] = 1
                        stack.append((prod, iter(prod.inputs)))
                        advanced = True
                        break
                if not advanced:
                    state[id(node)] = 2
                    stack.pop()


def validate_structure(graph: onnx.GraphProto, outer: frozenset = frozenset()) -> None:
    """Every node input is defined before use (graph inputs, initializers, earlier node
    outputs, enclosing scopes); a graph whose nodes are merely out of order is accepted
    if it has no cycle. Raises GraphoptError naming the first problem."""
    defined = set(outer) | {""}
    defined.update(i.name for i in graph.input)
    defined.update(t.name for t in graph.initializer)
    defined.update(t.values.name for t in graph.sparse_initializer)
    all_outputs = {o for n in graph.node for o in n.output}
    out_of_order = False
    for node in graph.node:
        for name in node.input:
            if name not in defined:
                if name not in all_outputs:
                    raise GraphoptError(
                        f"invalid graph: node '{node.name or node.op_type}' reads '{name}', which nothing defines"
                    )
                out_of_order = True
        for attr in node.attribute:
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subs:
                validate_structure(sub, frozenset(defined | all_outputs))
        defined.update(node.output)
    if out_of_order:
        _check_proto_acyclic(graph)


def _check_proto_acyclic(graph: onnx.GraphProto) -> None:
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    indeg = [0] * len(graph.node)
    users: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(graph.node):
        for name in set(n.input):
            if name in producer:
                indeg[i] += 1
                users[producer[name]].append(i)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in users[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if seen != len(graph.node):
        stuck = next(graph.node[i] for i, d in enumerate(indeg) if d > 0)
        raise GraphoptError(f"invalid graph: cycle through node '{stuck.name or stuck.op_type}'")


def toposort(graph: gs.Graph) -> None:
    """Sort the graph and every subgraph; GraphoptError on a cycle."""
    for g in list(iter_graphs(graph)):
        sort_nodes(g)


def remove_dead_nodes(graph: gs.Graph) -> int:
    """Remove the nodes of one graph (not its subgraphs) whose outputs reach no graph
    output; a subgraph's reads of outer tensors count as uses. Returns how many."""
    live_names = {t.name for t in graph.outputs}
    live_nodes: set[int] = set()
    try:
        sort_nodes(graph)  # reverse topological order below
    except GraphoptError:  # pragma: no cover - cyclic graphs are rejected elsewhere
        pass
    for node in reversed(graph.nodes):
        if any(t.name in live_names for t in node.outputs):
            live_nodes.add(id(node))
            live_names.update(t.name for t in node.inputs)
            for sub in subgraphs_of(node):
                live_names |= outer_names_used(sub)
    before = len(graph.nodes)
    for n in graph.nodes:
        if id(n) not in live_nodes:
            n.inputs.clear()  # detach so gs does not export dead tensors as value_info
            n.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) in live_nodes]
    return before - len(graph.nodes)


def sort_nodes(graph: gs.Graph) -> None:
    """Topologically sort one graph's nodes in place (not its subgraphs), keeping the
    current order wherever it is already valid. A node holding subgraphs depends on the
    producers of the outer tensors those subgraphs read. Inputs produced nowhere in this
    graph (graph inputs, constants, enclosing scopes) are available from the start.
    Raises GraphoptError on a cycle. Linear-time apart from the heap; gs's own toposort
    is several times slower on models of a thousand nodes."""
    import heapq

    nodes = graph.nodes
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for t in node.outputs:
            if t.name:
                producer[t.name] = i
    indeg = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = set()
        for t in node.inputs:
            j = producer.get(t.name) if t.name and not isinstance(t, gs.Constant) else None
            if j is not None:
                deps.add(j)
        for sub in subgraphs_of(node):
            for name in outer_names_used(sub):
                j = producer.get(name)
                if j is not None:
                    deps.add(j)
        for j in deps:
            users[j].append(i)
        indeg[i] = len(deps)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users[i]:
            indeg[k] -= 1
            if indeg[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, d in enumerate(indeg) if d > 0)
        raise GraphoptError(f"invalid graph: cycle through node '{stuck.name or stuck.op}'")
    if order != list(range(len(nodes))):
        graph.nodes = [nodes[i] for i in order]


def all_names(graph: gs.Graph) -> set[str]:
    names = set()
    for g in iter_graphs(graph):
        names |= set(g.tensors().keys())
    return names


def fresh_namer(graph: gs.Graph, prefix: str = "graphopt"):
    """Return a function making tensor/node names that do not clash with the graph's."""
    taken = all_names(graph) | {n.name for n in iter_nodes(graph) if n.name}
    counter = [0]

    def make(base: str = prefix) -> str:
        while True:
            counter[0] += 1
            name = f"{base}_{counter[0]}"
            if name not in taken:
                taken.add(name)
                return name

    return make


def ensure_iterable(x) -> Iterable:
    return x if isinstance(x, (list, tuple)) else [x]
