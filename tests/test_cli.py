"""The `graphopt` command: outputs, listing, flags, exit codes, and bad input
(one line on stderr, exit 2, nothing written, input unchanged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import pipeline
from graphopt.cli import main

REPO = Path(__file__).resolve().parent.parent


def graphopt_exe() -> str:
    exe = shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")
    assert Path(exe).exists(), "the graphopt console script is not installed"
    return exe


def good_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu"),
             helper.make_node("Neg", ["x"], ["dead"], name="dead")]
    g = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "m.onnx"
    onnx.save(good_model(), p)
    return p


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------ subprocess: the real command


def test_command_default_output_and_table(model_file):
    r = subprocess.run([graphopt_exe(), str(model_file), "-p", "clean", "--no-verify"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = model_file.with_name("m.opt.onnx")
    n_after = len(onnx.load(out).graph.node)
    assert out.exists() and n_after <= 2
    assert "dce" in r.stdout and f"3 → {n_after} nodes" in r.stdout and f"wrote {out}" in r.stdout
    assert " ms" in r.stdout  # per-pass time column


def test_command_bad_input_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    before = snapshot(tmp_path)
    r = subprocess.run([graphopt_exe(), str(bad), "-p", "clean"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("graphopt: error:")
    assert "Traceback" not in r.stderr
    assert snapshot(tmp_path) == before


def test_command_passes_lists_everything():
    r = subprocess.run([graphopt_exe(), "passes"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    # Only the built-in passes: other tests register throwaway passes in this process.
    builtin = {n: c for n, c in pipeline.list_passes().items() if c.__module__.startswith("graphopt.passes")}
    assert len(builtin) >= 10
    for name, cls in builtin.items():
        assert name in r.stdout and cls.summary()[:30] in r.stdout.replace("\n      ", " ")
        for key in cls.options:
            assert f"{key}:" in r.stdout
    for name in pipeline.groups():
        assert name in r.stdout


# ------------------------------------------------------------------ in-process


def test_output_json_and_quiet(model_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main([str(model_file), "-p", "dce", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output"] == str(out) and data["summary"]["nodes_before"] == 3 \
        and data["summary"]["nodes_after"] == 2
    assert data["schema"].startswith("graphopt.run/") and data["passes"][0]["name"] == "dce"
    assert main([str(model_file), "-p", "clean", "-o", str(out), "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""


def test_passes_json(capsys):
    assert main(["passes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["passes"]) == set(pipeline.list_passes())
    assert set(data["groups"]) == set(pipeline.groups())
    assert data["groups"]["clean"]["fixed_point"] is True
    for info in data["passes"].values():
        assert info["contract"] in ("exact", "float", "lossy") and info["description"]


def test_dump_after(model_file, tmp_path, capsys):
    dump = tmp_path / "dump"
    assert main([str(model_file), "-p", "dce", "-v", "--dump-after", "dce",
                 "--dump-dir", str(dump)]) == 0
    files = sorted(dump.iterdir())
    assert [f.name for f in files] == ["001-dce.onnx"]
    assert len(onnx.load(files[0]).graph.node) == 2
    assert "dumped model after dce" in capsys.readouterr().err  # -v shows INFO logs


def test_verbose_logs_and_debug_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert main([str(missing), "-p", "clean"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(graphopt.GraphoptError, match="no such file"):
        main([str(missing), "-p", "clean", "--debug"])


def test_usage_error_exit_2(capsys):
    assert main(["--no-such-flag"]) == 2
    assert main([]) == 2


def test_verification_failure_exit_1(model_file, tmp_path, capsys):
    @graphopt.register_pass("t-cli-wrong")
    class Wrong(graphopt.Pass):
        """Claims exactness but turns Relu into Neg."""

        contract = "exact"

        def run(self, model, ctx):
            for n in model.graph.nodes:
                if n.op == "Relu":
                    n.op = "Neg"
                    return True
            return False

    try:
        out = tmp_path / "o.onnx"
        before = snapshot(tmp_path)
        code = main([str(model_file), "-p", "t-cli-wrong", "-o", str(out),
                     "--repro-dir", str(tmp_path / "repro")])
        assert code == 1
        err = capsys.readouterr().err
        assert "t-cli-wrong" in err
        assert not out.exists()
        assert {k: v for k, v in snapshot(tmp_path).items()} == before
    finally:
        pipeline._PASSES.pop("t-cli-wrong", None)


# ------------------------------------------------------------------ bad input


def _cyclic() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Identity", ["a"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "cyc", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _undefined() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "undef", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _external(tmp_path: Path, location: str) -> bytes:
    m = good_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    return m.SerializeToString()


def _setup(kind: str, d: Path) -> tuple[list[str], str]:
    """Files for one bad-input case; returns the argv and a fragment of the message."""
    m = d / "m.onnx"
    good = good_model().SerializeToString()
    if kind == "truncated":
        m.write_bytes(good[: len(good) // 2])
        return [str(m), "-p", "clean"], "not a valid ONNX model"
    if kind == "not-onnx":
        m.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
        return [str(m), "-p", "clean"], "m.onnx"
    if kind == "empty":
        m.write_bytes(b"")
        return [str(m), "-p", "clean"], "empty file"
    if kind == "missing":
        return [str(d / "nope.onnx"), "-p", "clean"], "no such file"
    if kind == "directory":
        (d / "dir.onnx").mkdir()
        return [str(d / "dir.onnx"), "-p", "clean"], "is a directory"
    if kind == "cyclic":
        m.write_bytes(_cyclic().SerializeToString())
        return [str(m), "-p", "clean"], "cycle"
    if kind == "undefined":
        m.write_bytes(_undefined().SerializeToString())
        return [str(m), "-p", "clean"], "ghost"
    m.write_bytes(good)
    if kind == "unknown-pass":
        return [str(m), "-p", "clena"], "unknown pass 'clena'"
    if kind == "bad-option":
        return [str(m), "-p", "dce(bogus=1)"], "no option 'bogus'"
    if kind == "bad-option-value":
        return [str(m), "--plugin", "custom_pass", "-p", "drop-op(op=[a,b)"], "invalid pipeline spec"
    if kind == "empty-spec":
        return [str(m), "-p", ""], "empty pipeline spec"
    if kind == "dotdot":
        (d.parent / "secret.bin").write_bytes(b"\0" * 64)
        m.write_bytes(_external(d, "../secret.bin"))
        return [str(m), "-p", "clean"], "escapes the model's folder"
    if kind == "absolute":
        m.write_bytes(_external(d, "/etc/hostname"))
        return [str(m), "-p", "clean"], "absolute location"
    if kind == "no-out-dir":
        return [str(m), "-p", "clean", "-o", str(d / "nodir" / "o.onnx")], "does not exist"
    if kind == "out-is-input":
        return [str(m), "-p", "clean", "-o", str(m)], "refusing to overwrite"
    raise AssertionError(kind)


BAD = ["truncated", "not-onnx", "empty", "missing", "directory", "cyclic", "undefined",
       "unknown-pass", "bad-option", "bad-option-value", "empty-spec", "dotdot", "absolute",
       "no-out-dir", "out-is-input"]


@pytest.fixture
def clean_registry():
    pipeline.discover()
    saved = dict(pipeline._PASSES)
    yield
    pipeline._PASSES.clear()
    pipeline._PASSES.update(saved)
    sys.modules.pop("custom_pass", None)


@pytest.mark.parametrize("kind", BAD)
def test_bad_input(kind, tmp_path, capsys, monkeypatch, clean_registry):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    d = tmp_path / "work"
    d.mkdir()
    argv, fragment = _setup(kind, d)
    monkeypatch.chdir(d)  # a default output or dump dir would land here
    before = snapshot(d)
    dirs_before = sorted(p.name for p in d.iterdir())
    code = main(argv + ["--no-verify"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphopt: error:"), err
    assert fragment in lines[0]
    assert snapshot(d) == before  # input unchanged (bytes and mtime), nothing written
    assert sorted(p.name for p in d.iterdir()) == dirs_before


# --- samples (issue 17): `graphopt verify --samples` checks them like `graphopt MODEL`
def test_verify_samples_folder_with_label(capsys):
    """models/ holds digits_test.npz with an extra `label` array: it is ignored with a
    note, the samples are used."""
    digits = str(REPO / "models" / "digits_cnn.onnx")
    rc = main(["verify", digits, digits, "--samples", str(REPO / "models")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "equivalent" in cap.out
    assert "ignoring array(s) label" in cap.err


def test_verify_samples_wrong_input_name_exit_2(tmp_path, capsys):
    digits = str(REPO / "models" / "digits_cnn.onnx")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((1, 1, 8, 8), np.float32))
    rc = main(["verify", digits, digits, "--samples", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "has no array for model input(s) input (it has: x)" in lines[0], err


# ------------------------------------------------------------------ issue 16: quant's INT8 decisions


def _quant_run(stats: dict) -> graphopt.Report:
    rep = graphopt.Report(nodes_before=9, nodes_after=30, bytes_before=1000, bytes_after=300, seconds=2.0)
    rep.records.append(graphopt.PassRecord("dce", "dce", "exact", None, 0, False, {"nodes_removed": 0},
                                           9, 9, 1000, 1000, 0.01))
    rep.records.append(graphopt.PassRecord("quant", "quant(method=minmax)", "lossy", None, 0, True, stats,
                                           9, 30, 1000, 300, 2.0))
    return rep


_QUANT_STATS = {
    "regions": {
        "R0 (Conv; 0.10 M dense + 0.00 M depthwise MACs, 64 Q/DQ elements)":
            "float: convolution on a graph input (INT8 im2col-bound, adds a quantize)",
        "R1 (Addx2, Convx6; 0.67 M dense + 0.00 M depthwise MACs, 96 Q/DQ elements)":
            "int8 (in the chosen set 'convolutions on float inputs float', measured 1.21x [1.19, 1.22] over 69 rounds)",
        "R2 (Gemm; 0.01 M dense + 0.00 M depthwise MACs, 42 Q/DQ elements)":
            "int8 (in the chosen set 'convolutions on float inputs float', measured 1.21x [1.19, 1.22] over 69 rounds)",
        "R3 (Conv; 0.10 M dense + 0.00 M depthwise MACs, 64 Q/DQ elements)":
            "float: convolution on a graph input (INT8 im2col-bound, adds a quantize)",
    },
    "cost_trials": ["all candidates: 1.10x [1.08, 1.12] over 55 rounds -> inconclusive",
                    "convolutions on float inputs float: 1.21x [1.19, 1.22] over 69 rounds -> faster"],
    "cost_choice": "convolutions on float inputs float",
    "latency_ratio": 1.21, "latency_ratio_interval": [1.19, 1.22],
    "left_float": {"conv5": "sensitive (alone: 0.7 of the budget)"}, "kept_float_for_accuracy": ["conv5"],
}


def test_summary_has_one_line_for_quants_regions(capsys):
    from graphopt.cli.run import print_report

    print_report(_quant_run(dict(_QUANT_STATS)), "o.onnx")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("quant(method=minmax): ")]
    assert lines == [(
        "quant(method=minmax): 2/4 regions int8 (set 'convolutions on float inputs float', measured 1.21x "
        "[1.19, 1.22]); 2 float: R0 (Conv), R3 (Conv): convolution on a graph input (INT8 im2col-bound, "
        "adds a quantize); 1 node(s) kept float for accuracy")], lines


def test_summary_says_when_quant_kept_the_model_float(capsys):
    from graphopt.cli.run import print_report

    why = "INT8 not shown faster than FP32 by 1.05x on onnxruntime (all candidates: 1.03x [0.91, 1.13]); model kept in float"
    stats = {"reverted": why, "latency_ratio": 1.03,
             "regions": {"R0 (Gemm; 0.00 M dense + 0.00 M depthwise MACs, 42 Q/DQ elements)":
                         "float: no set of regions measured faster than FP32"}}
    print_report(_quant_run(stats), "o.onnx")
    out = capsys.readouterr().out
    assert f"quant(method=minmax): kept float: {why}\n" in out
    assert "regions int8" not in out


def test_quant_line_is_not_shown_with_quiet_or_json(model_file, tmp_path, capsys, monkeypatch):
    from graphopt import api

    def fake(model, output, *a, **k):  # quant's record without timing anything
        onnx.save(onnx.load(model), output)
        return str(output), _quant_run(dict(_QUANT_STATS))

    monkeypatch.setattr(api, "optimize_file", fake)
    out = tmp_path / "o.onnx"
    assert main([str(model_file), "-p", "quant", "-o", str(out)]) == 0
    assert "quant(method=minmax): 2/4 regions int8" in capsys.readouterr().out
    assert main([str(model_file), "-p", "quant", "-o", str(out), "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert main([str(model_file), "-p", "quant", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # the JSON document alone, the regions in its stats
    assert data["passes"][1]["stats"]["regions"] == _QUANT_STATS["regions"]
