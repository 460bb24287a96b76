"""graphopt.tvm_profile (issue 18): per-kernel profiles of a compiled Relax module and of
onnxruntime, on the shipped digits CNN (6 Conv nodes). Structure only, no timing claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm", reason="pip install 'graphopt[tvm]'")

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits():
    from graphopt import codegen

    model = onnx.load(DIGITS)
    shapes = codegen.static_input_shapes(model, {"input": (2, 1, 8, 8)})
    opt, _ = codegen.front_end(model, codegen.DEFAULT_SPEC, shapes, verify=False)
    ex, _ = codegen.build(codegen.import_onnx(opt, shapes), codegen.resolve_target("host"))
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    return model, ex, feeds


def test_tvm_kernels_are_the_vm_calls(digits):
    from graphopt import tvm_profile

    model, ex, feeds = digits
    total, kernels = tvm_profile.tvm_kernel_times(ex, [feeds["input"]], runs=3, warmup=1)
    names = [k.name for k in kernels]
    assert len(names) == len(set(names)) and total > 0
    convs = [k for k in kernels if k.name.startswith("conv2d")]
    # each Conv node is one call of a conv2d TIR function per run
    assert sum(k.calls for k in convs) == sum(n.op_type == "Conv" for n in model.graph.node) == 6
    assert all(k.ms >= 0 for k in kernels)
    assert any(k.name.startswith("vm.builtin") for k in kernels)   # the VM's own calls are shown too
    assert [k.ms for k in kernels] == sorted((k.ms for k in kernels), reverse=True)


def test_ort_kernels_by_operator_type(digits):
    from graphopt import tvm_profile

    model, _, feeds = digits
    total, ops = tvm_profile.ort_kernel_times(model, feeds, runs=3, warmup=1)
    by_name = {k.name: k for k in ops}
    assert total > 0 and by_name["Conv"].calls == 6   # per run, warm-up runs left out
    assert {"Gemm", "GlobalAveragePool"} <= set(by_name)
