"""What the lossy passes (quant, fp16) share: their inputs, their model runs, their
error measure and the search for the nodes to keep in float.

    feeds(proto, ctx, n)             the samples as arrays, or n seeded random inputs
    outputs(proto, feeds)            the model's outputs for each feed (onnxruntime)
    rel_l2 / output_error            the verifier's relative L2 error, worst over outputs
    trial(budget, ref, evals, build) err(skip): a candidate's use of the budget (inf if it fails)
    bisect_block(names, err, ...)    the nodes to keep in float so the budget holds
    planning_graph(proto)            the graph a pass plans on: shapes, constants, node names
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import PassContext, runtime
from graphopt.ir import fresh_namer, observed_names, replace_all_uses
from graphopt.verify.contracts import rel_l2 as _contract_rel_l2

from ._budget import excess

log = logging.getLogger(__name__)


def feeds(proto: onnx.ModelProto, ctx: PassContext, n: int) -> tuple[list[dict], bool]:
    """(feed dicts, generated): ctx.samples as numpy arrays, or `n` inputs drawn with the
    run's seed, input shapes and ranges (generated=True) when there are no samples."""
    if ctx.samples:
        return [{k: np.asarray(v) for k, v in s.items()} for s in ctx.samples], False
    return runtime.random_inputs(proto, n, seed=ctx.seed, shapes=ctx.input_shapes,
                                 ranges=ctx.input_ranges), True


def outputs(proto: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    """All outputs of `proto` for each feed: onnxruntime with its graph optimizations on,
    two intra-op threads (as the pass's error checks have always run)."""
    return runtime.run(runtime.session(proto, threads=2, optimize=True, log_level=3), feeds)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a-b|| / ||a|| as the verifier measures it (graphopt.verify.contracts.rel_l2)."""
    return _contract_rel_l2(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())


def output_error(ref: list[list], got: list[list]) -> float:
    """Worst relative L2 error over samples and float outputs."""
    worst = 0.0
    for ra, rb in zip(ref, got):
        for a, b in zip(ra, rb):
            if np.issubdtype(np.asarray(a).dtype, np.floating):
                worst = max(worst, rel_l2(a, b))
    return worst


def trial(budget: dict[str, float], ref: list[list], evals: list[dict], build, what: str):
    """err(skip) for bisect_block: the budget use (see _budget.excess; 1.0 = at the budget)
    of the model build(skip) on `evals` against the reference outputs `ref`. A candidate
    onnxruntime rejects or fails to run counts as failing (inf)."""
    def err(skip) -> float:
        try:
            return excess(budget, ref, outputs(build(set(skip)), evals))
        except Exception as e:  # noqa: BLE001 - any failure of a candidate fails the trial
            log.debug("%s trial failed: %s", what, e)
            return float("inf")
    return err


def bisect_block(names: list[str], err, budget: float, max_trials: int = 64) -> set[str]:
    """Nodes to keep unconverted so the budget holds. A group of nodes is tested by
    converting only that group; a failing group is split in two and each half tested,
    down to single nodes: O(k log n) model runs for k culprits among n nodes. After
    max_trials runs, the groups not yet tested are kept unconverted (conservative)."""
    allset = set(names)
    blocked: set[str] = set()
    stack = [list(names)]
    trials = 0
    while stack:
        group = stack.pop()
        if trials >= max_trials:
            blocked.update(group)
            continue
        trials += 1
        if err(allset - set(group)) <= budget:
            continue
        if len(group) == 1:
            blocked.add(group[0])
            continue
        mid = len(group) // 2
        stack.extend([group[mid:], group[:mid]])
    if err(blocked) > budget:  # the errors of the accepted groups add up: block all
        blocked = allset
    return blocked


def planning_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, gs.Graph]:
    """(`proto` after onnx shape inference, its gs graph with Constant nodes inlined and
    every node named): what quant and fp16 plan on; the names identify nodes across the
    models they rebuild."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = gs.import_onnx(inferred)
    inline_constants(g)
    namer = fresh_namer(g, "node")
    for n in g.nodes:
        if not n.name:
            n.name = namer(n.op)
    return inferred, g


def inline_constants(g: gs.Graph) -> int:
    """Turn Constant nodes holding a tensor into initializers (exact; exporters such as
    Paddle's emit all weights this way). Outputs read by subgraphs or graph outputs stay."""
    protected = observed_names(g)
    n = 0
    for node in list(g.nodes):
        if node.op != "Constant" or not isinstance(node.attrs.get("value"), gs.Constant):
            continue
        out = node.outputs[0]
        if out.name in protected:
            continue
        replace_all_uses(out, gs.Constant(out.name, node.attrs["value"].values), g)
        node.outputs = []
        n += 1
    g.cleanup(remove_unused_graph_inputs=False)
    return n

