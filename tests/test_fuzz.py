"""Fuzz every built-in pass and pass group over random valid graphs, with verification.

The CI budget is GRAPHOPT_FUZZ_EXAMPLES graphs per pass or group (default 25). Locally:

    GRAPHOPT_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py

exact/float passes must never fail verification on a valid model (a failure is a bug in
the pass, and the reproducer folder is kept under the pytest tmp dir). Lossy passes run
with on_fail="revert": whatever the pipeline returns must be within the pass's budget
(re-checked independently) or be the unchanged input.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings

import graphopt
from graphopt import GraphoptError, Model, VerificationError
from graphopt import pipeline as _pipeline
from graphopt.testing.fuzz import onnx_models
from graphopt.verify import Contract, compare
from graphopt.verify.runner import Runner

EXAMPLES = int(os.environ.get("GRAPHOPT_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck), print_blob=True)


def _pass_classes(spec: str) -> list[type]:
    groups = _pipeline.groups()
    if spec in groups:
        out = []
        for member in groups[spec].members:
            out.extend(_pass_classes(member.split("(")[0]))
        return out
    return [_pipeline.list_passes()[spec]]


def _specs() -> list[str]:
    return sorted(_pipeline.list_passes()) + sorted(_pipeline.groups())


def _samples(model: onnx.ModelProto, n: int = 4) -> list[dict]:
    """Real-looking inputs for passes that want samples (calibration, pruning)."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else 2 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    return [{inp.name: rng.standard_normal(dims).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("spec", _specs())
def test_fuzz_pass(spec, tmp_path):
    classes = _pass_classes(spec)
    lossy = any(c.contract == "lossy" for c in classes)
    stats = {"models": 0, "verified": 0}

    @FUZZ_SETTINGS
    @given(onnx_models())
    def check(model):
        ctx = graphopt.PassContext(samples=_samples(model), seed=0)
        try:
            out, report = graphopt.optimize(
                model, spec, ctx=ctx, return_report=True,
                verify_options={"examples": 4, "repro_dir": str(tmp_path / "repro"),
                                "on_fail": "revert" if lossy else "abort", "shrink_seconds": 5})
        except VerificationError as e:
            pytest.fail(f"fuzzing found a bug in '{spec}': {e}")
        except GraphoptError as e:
            pytest.fail(f"'{spec}' refused a valid fuzzed model: {e}")
        stats["models"] += 1
        for r in report.records:
            v = r.extra.get("verify", {})
            stats["verified"] += v.get("status") in ("ok", "failed")
            assert v.get("status") != "skipped", f"{r.name}: verification skipped: {v}"
        onnx.checker.check_model(out)
        if lossy:
            # independent re-check of the whole pipeline under the loosest budget it claims
            budget = {}
            for c in classes:
                for k, val in (c.budget or {}).items():
                    budget[k] = max(budget.get(k, val), val) if k == "rel_l2" else min(budget.get(k, val), val)
            res = compare(model, out, Contract("lossy", budget=budget or None), examples=4, seed=7,
                          samples=ctx.samples)
            # several lossy passes in a row may each spend their budget: allow the sum
            assert res.ok or res.worst.measure == "rel_l2" and res.worst.error <= budget.get("rel_l2", 0.05) * len(classes), res.summary

    check()
    assert stats["models"] >= min(EXAMPLES, 10)
    print(f"{spec}: {stats['models']} models, {stats['verified']} verified pass runs")


def test_fuzzer_makes_valid_varied_models():
    seen_ops: set[str] = set()
    opsets: set[int] = set()

    @settings(max_examples=150, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(onnx_models())
    def check(model):
        onnx.checker.check_model(model, full_check=True)
        seen_ops.update(n.op_type for n in model.graph.node)
        opsets.add(model.opset_import[0].version)
        Runner(model).run(_samples(model, 1)[0])

    check()
    assert {"Conv", "BatchNormalization", "Gemm", "If", "Split", "Concat", "Pad", "Slice"} <= seen_ops
    assert len(opsets) >= 4


def test_fuzz_catches_a_broken_pass(tmp_path):
    """The fuzz harness itself can fail: a pass that drops every Conv bias is caught."""
    from graphopt import Pass, PassResult, register_pass


    @register_pass("test-fuzz-drop-bias")
    class DropBias(Pass):
        """deliberately wrong"""

        contract = "float"

        def run(self, model: Model, ctx):
            changed = False
            for n in model.graph.nodes:
                if n.op == "Conv" and len(n.inputs) == 3:
                    del n.inputs[2]
                    changed = True
            return PassResult(changed)

    caught = []
    try:
        @settings(max_examples=40, database=None, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(onnx_models())
        def check(model):
            try:
                graphopt.optimize(model, "test-fuzz-drop-bias",
                                  verify_options={"examples": 4, "repro_dir": str(tmp_path)})
            except VerificationError as e:
                caught.append(str(e))

        check()
    finally:
        _pipeline._PASSES.pop("test-fuzz-drop-bias", None)
    assert caught and all("test-fuzz-drop-bias" in m for m in caught)
