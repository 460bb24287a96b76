"""An example custom pass: drop pass-through nodes of a given op type.

Use it from the command line with ``--plugin`` (the folder holding this file must be
importable, e.g. on PYTHONPATH):

    PYTHONPATH=examples graphopt model.onnx --plugin custom_pass -p "drop-op(op=Dropout),clean"

or from Python:

    import custom_pass, graphopt
    optimized = graphopt.optimize("model.onnx", "drop-op(op=Identity)")
"""

from __future__ import annotations

import logging

from graphopt import Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.ir import iter_graphs, replace_all_uses

log = logging.getLogger(__name__)


@register_pass("drop-op")
class DropOp(Pass):
    """Remove pass-through nodes of one op type (default Identity), rewiring their consumers."""

    contract = "exact"
    options = {"op": Option(str, "Identity", "op type to remove: Identity, or Dropout in inference")}

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        removed = 0
        for graph in list(iter_graphs(model.graph)):
            for node in list(graph.nodes):
                if node.op != self.op or (node.domain or "") not in ("", "ai.onnx") or not node.inputs:
                    continue
                if self.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
                    continue  # someone reads the mask
                src, out = node.inputs[0], node.outputs[0]
                if out in graph.outputs and (src in graph.inputs or src in graph.outputs
                                             or not src.inputs):
                    continue  # the output name must survive and cannot be moved onto src
                replace_all_uses(out, src, graph)
                node.outputs.clear()
                node.inputs.clear()
                graph.nodes.remove(node)
                removed += 1
        log.debug("drop-op: removed %d %s node(s)", removed, self.op)
        return PassResult(removed > 0, {"removed": removed})
