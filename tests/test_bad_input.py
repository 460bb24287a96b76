"""Bad input never ends in a traceback (issue 13, point 4): through the real `graphopt`
command, each case exits 2 with one line on stderr naming the problem, writes nothing and
leaves the input unchanged. Samples are validated in one place before anything runs."""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.errors import GraphoptError
from graphopt.samples import load_samples, prepare_samples

REPO = Path(__file__).resolve().parent.parent


def graphopt_exe() -> str:
    exe = shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")
    assert Path(exe).exists(), "the graphopt console script is not installed"
    return exe


def make_model(op: str = "Relu", domain: str = "") -> onnx.ModelProto:
    """x -> MatMul(W) -> op -> Identity -> y: `clean` changes it (the Identity), so the
    verifier runs and reads the samples."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    w = numpy_helper.from_array(np.random.default_rng(0).random((64, 64), dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node(op, ["h"], ["a"], name="act", domain=domain),
             helper.make_node("Identity", ["a"], ["y"], name="id")]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=opsets)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_bad(args: list[str], folder: Path, expect: str) -> str:
    """Run graphopt; check exit 2, one stderr line containing `expect`, no traceback,
    nothing written to / changed in `folder`."""
    before = snapshot(folder)
    r = subprocess.run([graphopt_exe(), *args], capture_output=True, text=True, timeout=300, cwd=folder)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("graphopt: error: "), lines
    assert expect in lines[0], lines[0]
    assert snapshot(folder) == before, "something was written or the input changed"
    return lines[0]


def external_model(folder: Path) -> Path:
    """A model with its weight in m.data beside it; returns the .onnx path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(make_model(), path, save_as_external_data=True, location="m.data", size_threshold=0)
    return path


def edit_external(path: Path, **entries: str | None) -> None:
    """Set (or with None drop) external_data keys of W in the model file."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        if t.name != "W":
            continue
        keep = {e.key: e.value for e in t.external_data}
        for k, v in entries.items():
            if v is None:
                keep.pop(k, None)
            else:
                keep[k] = v
        del t.external_data[:]
        for k, v in keep.items():
            t.external_data.add(key=k, value=v)
    onnx.save(m, path)


# ------------------------------------------------------------- external data out of bounds


def test_external_offset_past_end_of_file(tmp_path):
    path = external_model(tmp_path / "m")
    edit_external(path, offset="100000")
    line = run_bad([str(path), "-p", "clean"], tmp_path, "'W'")
    assert "past the end" in line and "m.data" in line


def test_external_length_past_end_of_file(tmp_path):
    path = external_model(tmp_path / "m")
    edit_external(path, length="999999")
    line = run_bad([str(path), "-p", "clean"], tmp_path, "'W'")
    assert "runs past the end of 'm.data'" in line


def test_external_data_file_shorter_than_tensor(tmp_path):
    """No length given, data file cut short: was a reshape error deep in fold-affine."""
    path = external_model(tmp_path / "m")
    edit_external(path, length=None)
    data = path.with_name("m.data")
    data.write_bytes(data.read_bytes()[:1000])
    line = run_bad([str(path), "-p", "clean,fuse"], tmp_path, "too short for tensor 'W'")
    assert "1000 bytes" in line and "16384" in line


def test_external_length_shorter_than_shape(tmp_path):
    path = external_model(tmp_path / "m")
    edit_external(path, length="400")
    run_bad([str(path), "-p", "clean"], tmp_path, "too short for tensor 'W'")


# --------------------------------------------------------------- unwritable output folder


@pytest.fixture
def plain(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(make_model(), path)
    return path


def test_output_under_a_regular_file(plain, tmp_path):
    run_bad([str(plain), "-p", "clean", "-o", str(plain) + "/out.onnx"], tmp_path, "is not a folder")


@pytest.mark.parametrize("folder", ["/proc", "/sys"])
def test_output_in_a_folder_nobody_can_write(plain, tmp_path, folder):
    """Root may write anywhere a chmod forbids; /proc and /sys refuse new folders even to root."""
    line = run_bad([str(plain), "-p", "clean", "-o", f"{folder}/out.onnx"], tmp_path,
                   f"cannot write to output folder '{folder}'")
    assert not Path(f"{folder}/out.onnx").exists()


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_output_folder_permission_errors(plain, tmp_path, monkeypatch, capsys, err):
    """EACCES (not root) and EROFS (read-only mount), which mkdtemp raises there."""
    from graphopt.cli import main

    def refuse(*a, **k):
        raise OSError(err, __import__("os").strerror(err))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    before = snapshot(tmp_path)
    assert main([str(plain), "-p", "clean", "-q", "-o", str(tmp_path / "out.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot write to output folder" in lines[0], lines
    assert __import__("os").strerror(err) in lines[0]
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ samples


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_samples_with_a_wrong_input_name(plain, tmp_path):
    """Was a 13-line traceback from the verify-ahead thread before the real message."""
    npz = save_npz(tmp_path / "s.npz", z=np.zeros((2, 64), np.float32))
    line = run_bad([str(plain), "-p", "clean", "--samples", str(npz)], tmp_path,
                   "has no array for model input(s) x")
    assert "(it has: z)" in line and "s.npz" in line


def test_samples_integer_for_a_float_input(plain, tmp_path):
    npz = save_npz(tmp_path / "s.npz", x=np.ones((2, 64), np.int64))
    run_bad([str(plain), "-p", "clean", "--samples", str(npz)], tmp_path,
            "input 'x' is int64, the model expects float32")


def test_samples_wrong_rank(plain, tmp_path):
    npz = save_npz(tmp_path / "s.npz", x=np.ones((64,), np.float32))
    run_bad([str(plain), "-p", "clean", "--samples", str(npz)], tmp_path, "has rank 1")


def test_samples_wrong_static_dim(plain, tmp_path):
    npz = save_npz(tmp_path / "s.npz", x=np.ones((2, 63), np.float32))
    run_bad([str(plain), "-p", "clean", "--samples", str(npz)], tmp_path, "axis 1: 63 != 64")


def test_samples_float64_cast_with_a_note_and_extra_arrays_ignored(plain, tmp_path):
    npz = save_npz(tmp_path / "s.npz", x=np.random.default_rng(1).random((3, 64)), label=np.arange(3))
    out = tmp_path / "out.onnx"
    r = subprocess.run([graphopt_exe(), str(plain), "-p", "clean", "--samples", str(npz), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "ignoring array(s) label" in r.stderr
    assert "given as float64, cast to the model's float32" in r.stderr
    assert out.exists()


def test_samples_folder_of_the_shipped_models(tmp_path):
    """`--samples models`: digits_test.npz carries a `label` array beside the input."""
    out = tmp_path / "out.onnx"
    r = subprocess.run([graphopt_exe(), str(REPO / "models" / "digits_cnn.onnx"), "-p", "clean",
                        "--samples", str(REPO / "models"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ignoring array(s) label" in r.stderr
    assert out.exists()


def test_samples_validated_through_the_python_api(tmp_path):
    model = make_model()
    with pytest.raises(GraphoptError, match="has no array for model input"):
        graphopt.optimize(model, "clean", samples=[{"z": np.zeros((2, 64), np.float32)}])
    with pytest.raises(GraphoptError, match="is int32, the model expects float32"):
        graphopt.optimize(model, "clean", samples=[{"x": np.zeros((2, 64), np.int32)}])
    # a path works too, and extra arrays are dropped before the verifier sees them
    npz = save_npz(tmp_path / "s.npz", x=np.ones((2, 64), np.float32), label=np.arange(2))
    out = graphopt.optimize(model, "clean", samples=str(npz))
    assert len(out.graph.node) == 2


def test_prepare_samples_rules(caplog):
    model = make_model()
    caplog.set_level(logging.WARNING, logger="graphopt")
    f64 = np.linspace(0, 1, 128).reshape(2, 64)
    out = prepare_samples([{"x": f64, "extra": np.zeros(1)}], model)
    assert out[0]["x"].dtype == np.float32 and set(out[0]) == {"x"}
    np.testing.assert_array_equal(out[0]["x"], f64.astype(np.float32))
    assert "cast to the model's float32" in caplog.text and "ignoring array(s) extra" in caplog.text
    with pytest.raises(GraphoptError, match="out of the range"):
        prepare_samples([{"x": np.full((2, 64), 1e300)}], model)
    with pytest.raises(GraphoptError, match="bool, the model expects float32"):
        prepare_samples([{"x": np.ones((2, 64), bool)}], model)
    # integers: another width is cast when the values fit, refused when they do not
    x = helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
    imodel = helper.make_model(helper.make_graph([helper.make_node("Identity", ["ids"], ["y"])], "g", [x], [y]))
    assert prepare_samples([{"ids": np.arange(4).reshape(1, 4)}], imodel)[0]["ids"].dtype == np.int32
    with pytest.raises(GraphoptError, match="do not fit"):
        prepare_samples([{"ids": np.full((1, 4), 2**40)}], imodel)
    with pytest.raises(GraphoptError, match="is float32, the model expects int32"):
        prepare_samples([{"ids": np.zeros((1, 4), np.float32)}], imodel)
    # an input with an initializer default may be left out
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 64), np.float32), "x"))
    assert prepare_samples([{}], model) == [{}]


def test_load_samples_unreadable_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(GraphoptError, match="not a readable .npz file"):
        load_samples(bad)


# -------------------------------------------------------------------------------- ops


def test_unknown_op_in_the_default_domain(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(make_model(op="Foo"), path)
    run_bad([str(path), "-p", "clean", "--no-verify"], tmp_path, "unknown op 'Foo' in the default ONNX domain (node 'act')")


def test_op_newer_than_the_model_opset(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(make_model(op="Gelu"), path)  # Gelu is in the default domain from opset 20
    run_bad([str(path), "-p", "clean", "--no-verify"], tmp_path, "exists from opset 20")


def test_custom_domain_ops_stay_allowed(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(make_model(op="Foo", domain="my.domain"), path)
    out = tmp_path / "out.onnx"
    r = subprocess.run([graphopt_exe(), str(path), "-p", "clean", "--no-verify", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert any(n.op_type == "Foo" and n.domain == "my.domain" for n in onnx.load(out).graph.node)


def test_unknown_op_refused_by_the_python_api():
    with pytest.raises(GraphoptError, match="unknown op 'Foo'"):
        graphopt.optimize(make_model(op="Foo"), "clean", verify=False)


# ------------------------------------------- side outputs (dumps, reports, reproducers)


@pytest.mark.parametrize("args, expect", [
    (["--dump-after", "*", "--dump-dir", "/proc/dd"], "--dump-dir '/proc/dd': cannot write in '/proc'"),
    (["--dump-after", "*", "--dump-dir", "m.onnx/dd"], "'m.onnx' is not a folder"),
    (["--report", "/proc/r.html"], "--report folder '/proc': cannot write"),
    (["--report", "nowhere/r.json"], "folder 'nowhere' does not exist"),
    (["--report", "."], "is a folder, expected a file name"),
    (["--repro-dir", "/proc/rr"], "--repro-dir '/proc/rr': cannot write in '/proc'"),
])
def test_unwritable_side_outputs_fail_before_the_work(plain, tmp_path, args, expect):
    """Written during or after the pipeline: a bad folder used to be a traceback after the
    model was written (or, for --report, after it was written and before the report)."""
    run_bad([str(plain), "-p", "clean", "-o", "out.onnx", *args], tmp_path, expect)
