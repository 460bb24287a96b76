"""graphopt.report: before/after reports (JSON and self-contained HTML, rendered in chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import Pass, PassContext, PassManager, PassResult, register_pass
from graphopt.analysis import profile_model
from graphopt.analysis.stages import StageProfiler
from graphopt.cli import main as cli_main
from graphopt.report import build_report, hbar_chart, margin, render_html, write_report
from graphopt.verify import VerifyInstrument

from conftest import MODELS

DIGITS = MODELS / "digits_cnn.onnx"


def _scale_first_conv(model, factor: float) -> None:
    for node in model.graph.nodes:
        if node.op == "Conv":
            w = node.inputs[1]
            w.values = (w.values * np.float32(factor)).astype(np.float32)
            return


@register_pass("test-report-nudge", replace=True)
class _Nudge(Pass):
    """Scale the first Conv's weights by 1 + 1e-7 (well inside the float contract)."""

    contract = "float"

    def run(self, model, ctx):
        _scale_first_conv(model, 1 + 1e-7)
        return PassResult(True, {"scaled": 1})


@register_pass("test-report-break", replace=True)
class _Break(Pass):
    """Scale the first Conv's weights by 3 (breaks the float contract)."""

    contract = "float"

    def run(self, model, ctx):
        _scale_first_conv(model, 3.0)
        return PassResult(True, {"scaled": 1})


@pytest.fixture(scope="module")
def run_data(tmp_path_factory):
    """One verified run with a kept pass and a reverted one, profiled before and after."""
    proto = onnx.load(DIGITS)
    model = graphopt.Model.from_onnx(proto)
    ctx = PassContext(input_shapes={"input": (1, 1, 8, 8)})
    stages = StageProfiler(runs=3, warmup=1)
    pm = PassManager("dce,test-report-nudge,test-report-break", ctx,
                     [VerifyInstrument(on_fail="revert", examples=3,
                                       repro_dir=str(tmp_path_factory.mktemp("repro"))), stages])
    report = pm.run(model)
    out = model.to_onnx()
    p_in = profile_model(proto, name="in", input_shapes={"input": (1, 1, 8, 8)}, runs=3,
                         measure_memory=False)
    p_out = profile_model(out, name="out", input_shapes={"input": (1, 1, 8, 8)}, runs=3,
                          measure_memory=False)
    data = build_report(report, input_profile=p_in, output_profile=p_out,
                        spec="dce,test-report-nudge,test-report-break", input_path=str(DIGITS),
                        output_path="out.onnx")
    return report, data


@pytest.fixture(autouse=True)
def _repro_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the verifier writes reproducers of the broken pass here


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.append((tag, dict(attrs)))


def test_json_report_has_passes_verification_and_profiles(run_data, tmp_path):
    report, data = run_data
    path = write_report(tmp_path / "r.json", data)
    loaded = json.loads(Path(path).read_text())
    names = [p["name"] for p in loaded["passes"]]
    assert names == ["dce", "test-report-nudge", "test-report-break"]
    verify = {p["name"]: p["extra"].get("verify", {}) for p in loaded["passes"]}
    assert verify["test-report-nudge"]["status"] == "ok"
    assert verify["test-report-break"]["status"] == "failed"
    assert loaded["passes"][2]["reverted"] is True
    assert margin(verify["test-report-nudge"]) <= 1 < margin(verify["test-report-break"])
    # per-stage profile after the kept change, none after the reverted one
    assert "macs" in loaded["passes"][1]["extra"]["profile"]
    assert "profile" not in loaded["passes"][2]["extra"]
    assert loaded["input_stage"]["macs"] == loaded["profiles"]["input"]["batches"][0]["macs"]
    assert loaded["profiles"]["output"]["batches"][0]["latency"]["p50_ms"] > 0


def test_html_report_is_self_contained(run_data, tmp_path):
    _, data = run_data
    text = render_html(data)
    p = _Collect()
    p.feed(text)
    assert p.tags.get("table", 0) >= 3 and p.tags.get("svg", 0) >= 4
    for tag, attrs in p.attrs:  # nothing fetched from anywhere
        assert not (tag in ("script", "img", "iframe") and "src" in attrs), (tag, attrs)
        assert tag != "link", attrs
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert "test-report-break" in text and "reverted" in text
    assert 'id="chart-flops"' in text and 'id="chart-verify"' in text


def test_report_without_verification_or_profiles():
    rep = graphopt.Report(nodes_before=3, nodes_after=2, bytes_before=10, bytes_after=10)
    rep.records.append(graphopt.PassRecord("dce", "dce", "exact", None, 0, True, {}, 3, 2, 10, 10, 0.01))
    rep.records.append(graphopt.PassRecord("q", "q", "lossy", None, 0, True,
                                           {"per_layer_error": {"conv1": 0.01, "conv2": 0.03}},
                                           2, 2, 10, 10, 0.01))
    text = render_html(build_report(rep, spec="dce,q"))
    assert "not verified" in text and "Verification was off" in text
    assert "No profiles" in text
    assert "per-layer error: q" in text and text.index(">conv2<") < text.index(">conv1<")


def test_chart_escapes_labels_and_handles_missing_values():
    svg = hbar_chart("t<1>", ["a&b", "c"], [("s", [5.0, None])])
    assert "a&amp;b" in svg and "t&lt;1&gt;" in svg
    assert svg.count('class="bar"') == 1


def test_cli_report_json_and_html(tmp_path):
    out = tmp_path / "out.onnx"
    rc = cli_main([str(DIGITS), "-p", "dce", "-o", str(out), "-q", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["profiles"]["input"]["batches"][0]["input_shapes"] == {"input": [1, 1, 8, 8]}
    assert data["profiles"]["output"]["measured_memory"]["session_peak_bytes"] > 0
    rc = cli_main([str(DIGITS), "-p", "dce", "-o", str(out), "-q", "--no-verify",
                   "--report", str(tmp_path / "r.html")])
    assert rc == 0
    assert "Verification was off" in (tmp_path / "r.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_report_renders_in_headless_chromium(run_data, tmp_path):
    _, data = run_data
    page = write_report(tmp_path / "report.html", data)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--window-size=1280,2000", "--dump-dom", Path(page).as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stdout[:500]
    # the page's own check ran after layout: no script errors, every chart has drawn bars
    assert 'data-rendered="ok"' in body.group(0), body.group(0)
    charts = int(re.search(r'data-charts="(\d+)"', body.group(0)).group(1))
    tables = int(re.search(r'data-tables="(\d+)"', body.group(0)).group(1))
    assert charts >= 4 and tables >= 3
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert "<svg" in proc.stdout and 'id="passes"' in proc.stdout
