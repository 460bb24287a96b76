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
        template = onnx.ModelProto()
        copy_fields(proto, template, skip=("graph",))
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
        node_meta = {}
        for node in iter_proto_nodes(proto.graph):
            if node.name and (node.doc_string or len(node.metadata_props)):
                node_meta[node.name] = (node.doc_string, list(node.metadata_props))
        init_names = {t.name for t in proto.graph.initializer}
        init_inputs = [i.name for i in proto.graph.input if i.name in init_names]
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


def replace_all_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Make every consumer of `old` (in this graph and subgraphs) read `new` instead.

    If `old` is a graph output, the producer of `new` is renamed so the output keeps
    its name (callers rely on output names).
    """
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    # Subgraphs refer to outer tensors by name through their own tensor objects.
    for g in iter_graphs(graph):
        if g is graph:
            continue
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if t.name == old.name and t is not new and not isinstance(t, gs.Constant):
                    if _produced_inside(g, t.name):
                        continue
                    node.inputs[i] = new
    if old in graph.outputs:
        idx = graph.outputs.index(old)
        name = old.name
        if isinstance(new, gs.Variable) and new not in graph.inputs and new not in graph.outputs:
            old.name = name + "__graphopt_old"
            new.name = name
            if new.dtype is None:
                new.dtype = old.dtype
            if new.shape is None:
                new.shape = old.shape
            graph.outputs[idx] = new
        else:
            # Keep the output name: route through an Identity.
            out = gs.Variable(name, dtype=old.dtype, shape=old.shape)
            old.name = name + "__graphopt_old"
            graph.nodes.append(gs.Node("Identity", inputs=[new], outputs=[out]))
            graph.outputs[idx] = out


def _produced_inside(g: gs.Graph, name: str) -> bool:
    if any(t.name == name for t in g.inputs):
        return True
    return any(t.name == name for n in g.nodes for t in n.outputs)


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
