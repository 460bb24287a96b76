"""Issue 17: what a new user trips on outside the HTML report: --version, --plugin FILE.py,
the weight count of the summary (Constant nodes), opset/target hints, one JSON schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main as cli_main

from conftest import MODELS

ROOT = Path(__file__).resolve().parents[1]
DIGITS = MODELS / "digits_cnn.onnx"


def _graphopt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphopt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


# ------------------------------------------------------------------ --version, --plugin


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    assert cli_main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"graphopt {version('graphopt')}"


def test_plugin_given_as_a_file_path(tmp_path):
    (tmp_path / "plugins").mkdir()
    plugin = tmp_path / "plugins" / "my_rewrite.py"
    plugin.write_text(
        "import graphopt\n"
        "@graphopt.register_pass('issue17-noop', replace=True)\n"
        "class Noop(graphopt.Pass):\n"
        "    '''does nothing'''\n"
        "    contract = 'exact'\n"
        "    def run(self, model, ctx):\n"
        "        return graphopt.PassResult(False, {'seen': 1})\n")
    out = tmp_path / "out.onnx"
    proc = _graphopt(DIGITS, "--plugin", "plugins/my_rewrite.py", "-p", "issue17-noop", "-o", out,
                     "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    # a missing file is one line, exit 2
    proc = _graphopt(DIGITS, "--plugin", "plugins/nope.py", "-p", "clean", "-o", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "graphopt: error: cannot load plugin 'plugins/nope.py': no such file"]


# ------------------------------------------------------------------ weights in Constant nodes


def _constant_weight_model(path: Path) -> int:
    """y = x @ W with W (64x32 float) held in a Constant node, not an initializer."""
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    const = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W"))
    mm = helper.make_node("MatMul", ["x", "W"], ["y"])
    g = helper.make_graph([const, mm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w.nbytes


def test_summary_counts_weights_held_in_constant_nodes(tmp_path, capsys):
    from graphopt.analysis.weights import weight_bytes
    from graphopt.ir import Model

    nbytes = _constant_weight_model(tmp_path / "c.onnx")
    assert weight_bytes(Model.from_onnx(onnx.load(tmp_path / "c.onnx"))) == nbytes
    # -p dce keeps the Constant node: before and after both hold the 8 KB
    assert cli_main([str(tmp_path / "c.onnx"), "-p", "dce", "-o", str(tmp_path / "o.onnx"), "--json",
                     "--no-verify"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["bytes_before"] == nbytes and doc["summary"]["bytes_after"] == nbytes
    assert all(p["bytes_before"] == nbytes for p in doc["passes"])
    # the printed summary line too (was "0 B → 0 B weights")
    assert cli_main([str(tmp_path / "c.onnx"), "-p", "dce", "-o", str(tmp_path / "o.onnx"),
                     "--no-verify"]) == 0
    assert "8.0 KB → 8.0 KB weights" in capsys.readouterr().out


def test_pp_ocr_rec_weights_are_counted_before_folding():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    from graphopt.analysis import count_params
    from graphopt.analysis.weights import weight_bytes
    from graphopt.ir import Model

    rec = next((Path(rapidocr.__file__).parent / "models").glob("*rec*.onnx"))
    proto = onnx.load(rec)
    model = Model.from_onnx(proto)
    assert model.weight_bytes() < count_params(proto).bytes  # what the summary showed: 0 B
    assert weight_bytes(model) == count_params(proto).bytes > 5_000_000


# ------------------------------------------------------------------ hints


def _hints(capsys, *args) -> list[str]:
    assert cli_main([*map(str, args), "--json", "--verify-examples", "2"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    logged = [line for line in cap.err.splitlines() if "hint: " in line]
    assert len(logged) == len(doc["hints"])  # each said once
    return doc["hints"]


def test_hint_names_the_opset_option_for_layernorm_and_gelu(tmp_path, capsys):
    tiny = MODELS / "tiny_transformer.onnx"
    hints = _hints(capsys, tiny, "-p", "clean,fuse", "-o", tmp_path / "t.onnx")
    ln = [h for h in hints if "LayerNormalization needs opset 17" in h]
    gelu = [h for h in hints if "Gelu needs opset 20" in h]
    assert len(ln) == 1 and len(gelu) == 1
    assert "--allow-opset-upgrade" in ln[0] and "--allow-opset-upgrade" in gelu[0]
    # following the hint fuses them, and the hints are gone
    hints = _hints(capsys, tiny, "-p", "clean,fuse", "-o", tmp_path / "t2.onnx", "--allow-opset-upgrade")
    assert not [h for h in hints if "opset" in h], hints
    ops = {n.op_type for n in onnx.load(tmp_path / "t2.onnx").graph.node}
    assert {"LayerNormalization", "Gelu"} <= ops


def test_hint_names_target_ort_for_conv_activation(tmp_path, capsys):
    hints = _hints(capsys, DIGITS, "-p", "clean,fuse", "-o", tmp_path / "d.onnx")
    assert any("--target ort" in h and "FusedConv" in h for h in hints), hints
    hints = _hints(capsys, DIGITS, "-p", "clean,fuse", "-o", tmp_path / "d2.onnx", "--target", "ort")
    assert not hints
    assert "FusedConv" in {n.op_type for n in onnx.load(tmp_path / "d2.onnx").graph.node}
    # no fusion pass ran: nothing to hint about
    assert _hints(capsys, DIGITS, "-p", "clean", "-o", tmp_path / "d3.onnx") == []


# ------------------------------------------------------------------ one JSON schema


def _floats(x):
    if isinstance(x, float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _floats(v)
    elif isinstance(x, list):
        for v in x:
            yield from _floats(v)


def test_json_and_json_report_share_one_versioned_schema(tmp_path, capsys):
    from graphopt.schema import SCHEMA

    args = [str(DIGITS), "-p", "clean,fuse", "-o", str(tmp_path / "d.onnx"), "--verify-examples", "2"]
    assert cli_main(args + ["--json", "--report", str(tmp_path / "r.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "r.json").read_text())
    assert SCHEMA == "graphopt.run/1" and printed["schema"] == written["schema"] == SCHEMA
    assert set(printed) == set(written)  # the same document; the report fills optional parts
    assert printed["profiles"] is None and written["profiles"]["input"] is not None
    for doc in (printed, written):
        assert doc["output"] == str(tmp_path / "d.onnx")
        assert [p["name"] for p in doc["passes"]][:2] == ["noop", "fold-constants"]
        assert doc["summary"]["nodes_before"] == 23
        changed = [p for p in doc["passes"] if p["changed"]]
        assert changed and all(p["verify"]["status"] == "ok" for p in changed)
        for f in _floats(doc):  # rounded: at most 6 significant digits
            assert float(f"{f:.6g}") == f, f
    # documented: every top-level key appears in docs/json.md
    text = (ROOT / "docs" / "json.md").read_text()
    for key in printed:
        assert f"`{key}`" in text, key


def test_hardswish_hint_only_for_x_times_hardsigmoid_of_x():
    from graphopt.analysis.hints import fusion_hints

    def model(same_input: bool):
        hs = helper.make_node("HardSigmoid", ["x" if same_input else "y"], ["h"], alpha=1 / 6)
        mul = helper.make_node("Mul", ["x", "h"], ["z"])
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
        g = helper.make_graph([hs, mul], "g", vi, [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    hints = fusion_hints(model(True))
    assert len(hints) == 1 and "HardSwish needs opset 14" in hints[0]
    assert fusion_hints(model(False)) == []  # a squeeze-excite gate is no HardSwish
