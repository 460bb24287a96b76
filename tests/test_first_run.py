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
