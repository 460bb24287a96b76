"""The model under optimization: a gs graph plus the untouched rest of the ModelProto,
and the exports that put the two back together."""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from .._proto import copy_fields
from ..errors import GraphoptError
from .graph import constant_nbytes, iter_constants, iter_nodes, iter_proto_nodes, toposort

log = logging.getLogger(__name__)


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
