"""onnx's backend conformance models through `clean,fuse` and `clean,fuse --target ort`.

Every case of onnx's node tests (with the *_expanded function bodies), `simple`,
`pytorch-converted`, `pytorch-operator` and the `light` zoo that onnxruntime runs right
as given is optimized through the public API with verification on, then the written
model must load in onnxruntime and reproduce onnx's expected outputs (onnx's own
tolerances). The cases are split into chunks by a hash of their name so CI runs all of
them in pieces; each chunk asserts no crash, no wrong output and no written model that
onnxruntime rejects, and reports its counts (refusals and not-runnable cases listed).

Cost: verification is as a user gets it, except with CONFORMANCE_VERIFY_EXAMPLES drawn
inputs per check instead of the default (the suite's own comparison against onnx's
expected outputs is the end-to-end check here).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as oh

from graphopt.testing import conformance

N_CHUNKS = 8
CONFORMANCE_VERIFY_EXAMPLES = 2
TOOLS = {
    "clean,fuse": conformance.graphopt_tool("clean,fuse", "onnx", CONFORMANCE_VERIFY_EXAMPLES),
    "clean,fuse --target ort": conformance.graphopt_tool("clean,fuse", "ort", CONFORMANCE_VERIFY_EXAMPLES),
}

_CASES: list | None = None


def _cases():
    global _CASES
    if _CASES is None:
        _CASES = conformance.collect()
    return _CASES


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("chunk", range(N_CHUNKS))
def test_conformance_chunk(chunk, record_property):
    cases = [c for c in _cases() if conformance.chunk_of(c, N_CHUNKS) == chunk]
    assert cases, "empty chunk"
    summary = conformance.run_suite(cases, TOOLS)  # each case in its own temp folder, removed after
    counts = summary.counts()
    record_property("conformance_counts", json.dumps(counts))
    print(f"\nconformance chunk {chunk}/{N_CHUNKS}: {len(cases)} models\n{summary.describe()}")
    out_dir = os.environ.get("GRAPHOPT_CONFORMANCE_OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"chunk{chunk}.json"), "w") as f:
            json.dump([o.__dict__ for o in summary.outcomes], f)
    # every case is accounted for: one outcome per tool, nothing dropped
    assert len(summary.outcomes) == len(cases) * len(TOOLS)
    # a refusal is one line naming the problem
    for o in summary.of("refused"):
        assert o.reason and "\n" not in o.reason, o
    bugs = summary.bugs()
    assert not bugs, "\n".join(f"{o.status} {o.case} [{o.tool}]: {o.reason} {o.where}" for o in bugs)
    # most runnable models are optimized (refusals stay the exception)
    runnable = len(summary.outcomes) - counts["not-runnable"]
    assert counts["ok"] >= 0.9 * runnable, summary.describe()


# -- the harness itself can tell each outcome apart --------------------------------------


def _small_cases():
    names = {"test_add", "test_relu", "test_sequence_model1"}
    return [c for c in _cases() if c.name in names]


def _identity_tool(src, dst):
    onnx.save(onnx.load(src), dst)


def _wrong_tool(src, dst):
    m = onnx.load(src)
    y = m.graph.output[0].name
    for n in m.graph.node:  # y -> y + 1 (keeps every type; changes every value)
        for i, o in enumerate(n.output):
            if o == y:
                n.output[i] = y + "_pre"
    one = oh.make_tensor("one_c", m.graph.output[0].type.tensor_type.elem_type or TensorProto.FLOAT, [], [1])
    m.graph.initializer.append(one)
    m.graph.node.append(oh.make_node("Add", [y + "_pre", "one_c"], [y]))
    onnx.save(m, dst)


def _rejected_tool(src, dst):
    m = onnx.load(src)
    m.graph.node[0].input[0] = "nowhere"
    onnx.save(m, dst)


def _crash_tool(src, dst):
    raise KeyError("boom")


def _refuse_tool(src, dst):
    raise conformance.Refused("cannot: a reason")


def test_harness_classifies_each_outcome():
    cases = [c for c in _cases() if c.name in ("test_add", "test_relu")]
    assert len(cases) == 2
    tools = {"same": _identity_tool, "wrong": _wrong_tool, "rejected": _rejected_tool,
             "crash": _crash_tool, "refuse": _refuse_tool}
    s = conformance.run_suite(cases, tools)
    by_tool = {}
    for o in s.outcomes:
        by_tool.setdefault(o.tool, set()).add(o.status)
    assert by_tool == {"same": {"ok"}, "wrong": {"wrong-output"}, "rejected": {"rejected-after"},
                       "crash": {"crash"}, "refuse": {"refused"}}
    crash = next(o for o in s.outcomes if o.status == "crash")
    assert crash.reason == "KeyError: 'boom'" and "test_conformance.py" in crash.where


def test_not_runnable_cases_are_counted_with_a_reason():
    """A case onnxruntime cannot run (a training op) is reported, not dropped."""
    case = next(c for c in _cases() if c.name == "test_adagrad")
    o = conformance.run_case(case, _identity_tool, "same")
    assert o.status == "not-runnable" and "onnxruntime" in o.reason


def test_collect_covers_every_kind_and_sequences_compare():
    kinds = {c.kind for c in _cases()}
    assert kinds == set(conformance.KINDS)
    assert len(_cases()) > 1500
    with pytest.raises(AssertionError):
        conformance._check_outputs([[np.zeros(2, np.float32)]], [[np.ones(2, np.float32)]], 1e-3, 1e-7)
    with pytest.raises(AssertionError):
        conformance._check_outputs([None], [np.zeros(1)], 1e-3, 1e-7)
    conformance._check_outputs([[np.zeros(2, np.float32)], None], [[np.zeros(2, np.float32)], None], 1e-3, 1e-7)
