"""The README's code is real: the custom-pass example runs as written and its quick-start
commands are the ones CI runs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt import pipeline

from conftest import REPO, run_ort

README = (REPO / "README.md").read_text()


def _block_after(marker: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    assert m, f"README has no python block after {marker}"
    return m.group(1)


@pytest.fixture
def fresh_drop_op():
    saved = pipeline._PASSES.pop("drop-op", None)
    yield
    pipeline._PASSES.pop("drop-op", None)
    if saved is not None:
        pipeline._PASSES["drop-op"] = saved


def test_readme_custom_pass_runs_verified(fresh_drop_op):
    namespace: dict = {}
    exec(compile(_block_after("<!-- custom-pass -->"), "README.md", "exec"), namespace)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Identity", ["b"], ["c"]), helper.make_node("Neg", ["c"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    out, report = graphopt.optimize(m, "drop-op,clean", return_report=True)
    assert [n.op_type for n in out.graph.node] == ["Relu", "Neg"]
    rec = report.records[0]
    assert rec.name == "drop-op" and rec.changed and rec.stats == {"removed": 2}
    assert rec.extra["verify"]["status"] == "ok"
    feed = {"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(m, feed)[0], run_ort(out, feed)[0])


def test_readme_quick_start_matches_ci():
    ci = (REPO / ".ci" / "run").read_text()
    quick = re.search(r"## Quick start\s*```bash\n(.*?)```", README, re.S).group(1).splitlines()
    install_and_run, tests = quick[0], quick[1]
    assert "pip install ." in install_and_run and "graphopt models/" in install_and_run
    assert "pip install \".[test,tvm]\"" in tests and "\".[test,tvm]\"" in ci
    model = re.search(r"graphopt (models/\S+\.onnx) -p (\S+)", install_and_run)
    assert (REPO / model.group(1)).exists()
    assert f"graphopt {model.group(1)} -p {model.group(2)}" in ci
    assert tests.endswith("pytest -q") and "\npytest -q" in ci
