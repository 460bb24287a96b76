"""All the weights a model stores, counted the same way before and after a pipeline.

`graphopt.ir.Model.weight_bytes` counts the constant tensors the graph's nodes read
(initializers); weights held in Constant nodes (`value` / `sparse_value` attributes, as
exported by PaddlePaddle and some PyTorch exporters) were missing from it, so a model
whose weights all sit in Constant nodes showed "0 B" before `fold-constants` turned them
into initializers (PP-OCRv4 rec: "0 B -> 5.8 MB weights"). `weight_bytes` here counts
both, in every subgraph; `graphopt.instruments.counts.WeightCount` puts these numbers into
the pipeline's Report and its PassRecords (place it last, after verification, so a
reverted pass is counted as reverted).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import Model, constant_nbytes, iter_constants, iter_graphs

_VALUE_ATTRS = ("value", "sparse_value", "value_float", "value_floats", "value_int", "value_ints")


def _attr_bytes(value) -> int:
    if isinstance(value, gs.Constant):
        return constant_nbytes(value)
    if isinstance(value, float):
        return 4
    if isinstance(value, int):
        return 8
    if isinstance(value, (list, tuple)):
        return sum(_attr_bytes(v) for v in value if isinstance(v, (int, float)))
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, sparse values
    if nbytes is not None:
        return int(nbytes)
    values = getattr(value, "values", None)
    return int(np.asarray(values).nbytes) if values is not None else 0


def constant_node_bytes(graph: gs.Graph) -> int:
    """Bytes of the tensors held by Constant nodes in `graph` and its subgraphs."""
    total = 0
    for g in iter_graphs(graph):
        for node in g.nodes:
            if node.op == "Constant" and node.domain in ("", "ai.onnx", None):
                total += sum(_attr_bytes(node.attrs[a]) for a in _VALUE_ATTRS if a in node.attrs)
    return total


def weight_bytes(model: Model | gs.Graph) -> int:
    """Initializers and Constant-node tensors of the model, every subgraph included."""
    graph = model.graph if isinstance(model, Model) else model
    return sum(constant_nbytes(t) for t in iter_constants(graph)) + constant_node_bytes(graph)
