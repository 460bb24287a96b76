"""Error budgets of lossy passes: the metrics (rel_l2, cosine, top1), `--budget` for a
whole run, a pass's own budget options winning over it, and bad budgets refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphopt import GraphoptError, PassContext, PassManager
from graphopt.ir import Model
from graphopt.passes._budget import excess
# --- quant/fp16 (issue 14, helper F1): sessions from graphopt.runtime
from graphopt.runtime import session
# --- end quant/fp16
from graphopt.pipeline import get_pass

from conftest import MODELS


def test_excess_per_metric():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32)
    b = a.copy()
    b[1] = [0.0, 0.0, 2.0]  # second row: argmax moves, half the energy misplaced
    ref, got = [[a]], [[b]]
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert excess({"rel_l2": 1.0}, ref, got) == pytest.approx(rel)
    cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert excess({"cosine": 0.5}, ref, got) == pytest.approx((1 - cos) / 0.5)
    assert excess({"top1": 0.5}, ref, got) == pytest.approx(1.0)  # 1 of 2 rows agree
    assert excess({"top1": 0.9}, ref, got) > 1.0
    assert excess({"rel_l2": 0.1, "top1": 0.0}, ref, got) == pytest.approx(rel / 0.1)
    assert excess({"rel_l2": 0.1}, ref, ref) == 0.0
    nan = a.copy()
    nan[0, 0] = np.nan
    assert excess({"rel_l2": 0.1}, ref, [[nan]]) == float("inf")
    # integer outputs are not judged by lossy metrics
    assert excess({"rel_l2": 0.0}, [[np.array([1, 2])]], [[np.array([3, 4])]]) == 0.0


def _digits():
    m = onnx.load(str(MODELS / "digits_cnn.onnx"))
    test = np.load(MODELS / "digits_test.npz")
    calib = np.load(MODELS / "digits_calib.npz")["input"]
    return m, test["input"], test["label"], [{"input": calib[i:i + 8]} for i in range(0, len(calib), 8)]


def test_run_budget_reaches_quant_and_its_own_option_wins():
    m, x, _, calib = _digits()
    ctx = PassContext(samples=calib, budget={"top1": 1.0})
    p = get_pass("quant")(measure=False)
    model = Model.from_onnx(m)
    res = PassManager([p], ctx).run(model).records[0]  # (F1) the manager resolves the declared budget
    assert p.budget == {"top1": 1.0}
    assert res.stats["budget"] == "top1 >= 1"
    if res.changed:  # whatever was quantized keeps every evaluation sample's argmax
        q = model.to_onnx()
        evals = np.concatenate([s["input"] for s in calib[:16]])
        a = session(m, optimize=True).run(None, {"input": evals})[0]
        b = session(q, optimize=True).run(None, {"input": evals})[0]
        assert (a.argmax(1) == b.argmax(1)).all()
    own = get_pass("quant")(measure=False, accuracy=False, max_rel_l2=0.2)
    PassManager([own], ctx).run(Model.from_onnx(m))
    assert own.budget == {"rel_l2": 0.2}
    default = get_pass("quant")(measure=False, accuracy=False)
    PassManager([default], PassContext(samples=calib)).run(Model.from_onnx(m))
    assert default.budget == {"rel_l2": 0.1}


def test_bad_budgets_are_refused():
    with pytest.raises(GraphoptError, match="unknown budget metric 'psnr'"):
        PassContext(budget={"psnr": 30.0})
    with pytest.raises(GraphoptError, match="out of range"):
        PassContext(budget={"cosine": 1.5})


def test_cli_budget_flag(tmp_path):
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "graphopt.cli", str(MODELS / "digits_cnn.onnx"), "-p", "clean",
                        "--budget", "psnr=3", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "bad --budget 'psnr=3'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_lossy_passes_report_per_layer_error():
    """quant / fp16 report each layer's relative error (the report plots it)."""
    m, _, _, calib = _digits()
    layers = {n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")}
    for spec in ("quant(measure=false)", "fp16"):
        p = get_pass(spec.split("(")[0])(**({"measure": False} if spec.startswith("quant") else {}))
        res = p.run(Model.from_onnx(m), PassContext(samples=calib))
        errs = res.stats["per_layer_error"]
        assert set(errs) == layers, spec
        assert all(0 < e < 0.1 for e in errs.values()), (spec, errs)
