"""Every light-zoo model and shipped model survives the `clean` group with the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from conftest import MODELS, run_ort, zoo_models

SHIPPED = sorted(MODELS.glob("*.onnx"))


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 8, shape).astype(dtype)
    return feeds


def _check(path):
    model = onnx.load(str(path))
    opt = graphopt.optimize(model, "clean", verify=False)
    onnx.checker.check_model(opt)
    assert len(opt.graph.node) <= len(model.graph.node)
    assert [o.name for o in opt.graph.output] == [o.name for o in model.graph.output]
    feeds = _feeds(model)
    ref = run_ort(model, feeds)
    got = run_ort(opt, feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and r.dtype == g.dtype
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1.0)
        assert float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)), initial=0.0)) <= 1e-5 * scale


@pytest.mark.parametrize("path", zoo_models(), ids=lambda p: p.stem)
def test_zoo_clean(path):
    _check(path)


@pytest.mark.skipif(not SHIPPED, reason="models/ holds no .onnx files yet")
@pytest.mark.parametrize("path", SHIPPED or [None], ids=lambda p: p.stem if p else "none")
def test_shipped_clean(path):
    _check(path)
