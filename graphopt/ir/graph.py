"""Graph helpers passes share: walking graphs and subgraphs, reading constants,
checking and sorting structure, removing dead nodes, fresh names."""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import GraphoptError


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


# -- structure ----------------------------------------------------------------------


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
