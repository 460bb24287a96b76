"""The graph IR: onnx-graphsurgeon graphs, wrapped with what passes must not lose.

`Model` holds a `gs.Graph` for the passes to rewrite and, beside it, everything of the
original ModelProto that passes do not own (ir_version, opset imports of every domain,
model-local functions, metadata, doc strings, training info). `Model.to_onnx()` puts
the two back together; `export_graph(graph, like)` does the same for a graph imported
from a ModelProto.

The package: `valuetypes` (value types gs does not keep; importing it patches gs's
importer/exporter), `model` (Model and the exports), `graph` (walking, constants,
structure checks, sorting, dead nodes, fresh names), `scopes` (value kinds and the
rules for removing, renaming or replacing a value across subgraph scopes).
"""

from . import valuetypes  # noqa: F401  (first: installs the gs patches)
from .graph import (const_value, constant_nbytes, fresh_namer, iter_constants, iter_graphs, iter_nodes,
                    iter_proto_nodes, outer_names_used, remove_dead_nodes, sort_nodes, subgraphs_of, toposort,
                    validate_structure)
from .model import Model, export_graph, export_graph_into
from .scopes import is_tensor, observed_names, replace_all_uses, value_kind, why_not_replace

__all__ = ["Model", "const_value", "constant_nbytes", "export_graph", "export_graph_into", "fresh_namer",
           "is_tensor", "iter_constants", "iter_graphs", "iter_nodes", "iter_proto_nodes", "observed_names",
           "outer_names_used", "remove_dead_nodes", "replace_all_uses", "sort_nodes", "subgraphs_of", "toposort",
           "validate_structure", "value_kind", "why_not_replace"]
