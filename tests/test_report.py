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
from graphopt._format import esc
from graphopt.analysis import profile_model
from graphopt.instruments.stages import StageProfiler
from graphopt.cli import main as cli_main
from graphopt.report import build_report, render_html, write_report
from graphopt.report.charts import hbar_chart
from graphopt.report.page import margin
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
    verify = {p["name"]: p["verify"] or {} for p in loaded["passes"]}
    assert verify["test-report-nudge"]["status"] == "ok"
    assert verify["test-report-break"]["status"] == "failed"
    assert loaded["passes"][2]["reverted"] is True
    assert margin(verify["test-report-nudge"]) <= 1 < margin(verify["test-report-break"])
    # per-stage profile after the kept change, none after the reverted one
    assert "macs" in loaded["passes"][1]["profile"]
    assert loaded["passes"][2]["profile"] is None
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
    assert "per-layer error after q" in text and text.index(">conv2<") < text.index(">conv1<")


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
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")
SIZES = ((1280, 800), (390, 844))  # a laptop and a phone


def _chromium(page: Path, tmp_path: Path, size: tuple[int, int], *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           f"--window-size={size[0]},{size[1]}", *extra, Path(page).as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


_HARNESS = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="{src}" width="{w}" height="{h}" style="border:0;display:block"></iframe>
<script>
document.getElementById("f").addEventListener("load", function(){{
  var b = this.contentDocument.body;
  for (var i = 0; i < b.attributes.length; i++) document.body.setAttribute(b.attributes[i].name, b.attributes[i].value);
}});
</script></body></html>"""


def _harness(page: Path, tmp_path: Path, size: tuple[int, int]) -> Path:
    """The page in an iframe of exactly `size`: headless chromium will not make a window
    narrower than 500 px, an iframe can be a phone's 390 px."""
    h = tmp_path / f"harness-{size[0]}x{size[1]}.html"
    h.write_text(_HARNESS.format(src=Path(page).as_uri(), w=size[0], h=size[1]))
    return h


def _rendered(page: Path, tmp_path: Path, size: tuple[int, int]) -> dict[str, str]:
    """The attributes the page's own script wrote onto <body> after layout in chromium."""
    proc = _chromium(_harness(page, tmp_path, size), tmp_path, (max(size[0], 800), size[1] + 16),
                     "--allow-file-access-from-files", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stdout[:500]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', body.group(0)))
    assert "data-rendered" in attrs, body.group(0)
    return attrs


@needs_chromium
def test_html_report_renders_in_headless_chromium(run_data, tmp_path):
    _, data = run_data
    page = write_report(tmp_path / "report.html", data)
    for size in SIZES:
        attrs = _rendered(page, tmp_path, size)
        # no script errors, every chart has drawn bars, nothing wider than the window
        assert attrs["data-rendered"] == "ok", attrs
        assert int(attrs["data-viewport"]) == size[0], attrs
        assert attrs["data-overflow"] == "none", (size, attrs)
        assert int(attrs["data-charts"]) >= 4 and int(attrs["data-tables"]) >= 3


# ------------------------------------------------------------------ issue 17: a report to look at


@pytest.fixture(scope="module")
def cli_reports(tmp_path_factory):
    """Reports of the two shipped models through the CLI: digits (clean,fuse) and the tiny
    transformer (clean,fuse: its LayerNorm/GELU need a newer opset; symbolic seq dim)."""
    tmp = tmp_path_factory.mktemp("reports")
    out = {}
    for name, model in (("digits", DIGITS), ("tiny", MODELS / "tiny_transformer.onnx")):
        html_path = tmp / f"{name}.html"
        rc = cli_main([str(model), "-p", "clean,fuse", "-o", str(tmp / f"{name}.onnx"), "-q",
                       "--verify-examples", "2", "--report", str(html_path)])
        assert rc == 0
        out[name] = html_path
    return out


def _unchanged_report() -> dict:
    rep = graphopt.Report(nodes_before=5, nodes_after=4, bytes_before=10, bytes_after=10, seconds=0.5)
    for i in range(6):
        rep.records.append(graphopt.PassRecord(f"p{i}", f"p{i}", "exact", "g", 0, False,
                                               {"fused": 0}, 5, 5, 10, 10, 0.001))
    rep.records.append(graphopt.PassRecord("dce", "dce", "exact", None, 0, True, {"removed": 1},
                                           5, 4, 10, 10, 0.01))
    return build_report(rep, spec="g,dce")


def test_unchanged_passes_are_folded_away():
    text = render_html(_unchanged_report())
    passes = re.search(r'<table class="stack" id="passes">.*?</table>', text, re.S).group(0)
    assert ">dce<" in passes and ">p0<" not in passes
    folded = re.search(r'<details id="unchanged"><summary>(.*?)</summary>(.*?)</details>', text, re.S)
    assert folded and folded.group(1).startswith("6 passes unchanged")
    assert all(f">p{i}<" in folded.group(2) for i in range(6))


def test_fusion_refusals_show_their_reasons():
    """A rule's refusals ({reason: count}) show in its pass row; other stats as before."""
    from test_fusion import layernorm_model

    from graphopt.report.page import _stats_text

    report = PassManager("fuse-layernorm,fuse-hardswish", PassContext()).run(
        graphopt.Model.from_onnx(layernorm_model(opset=16)))
    text = render_html(build_report(report, spec="fuse-layernorm,fuse-hardswish"))
    cells = re.findall(r'<td class="stats"[^>]*>(.*?)</td>', text)
    assert cells == ["fused=0, refused 1: needs opset &gt;= 17 (1)", "fused=0, refused=0"], cells
    assert _stats_text({"fused": 1, "refused": 5, "reasons": {"a": 3, "b": 2}, "other": {"x": 1}}) == \
        "fused=1, refused 5: a (3); b (2)"


def test_a_pass_that_kept_the_model_says_why_in_the_shown_rows():
    """quant keeping a model float (INT8 not measured faster) is a decision, not an
    unchanged pass: its row and reason stay visible instead of being folded away."""
    rep = graphopt.Report(nodes_before=3, nodes_after=3)
    why = "INT8 not shown faster than FP32 by 1.05x on onnxruntime (0.65x [0.56, 0.77]); model kept in float"
    rep.records.append(graphopt.PassRecord("quant", "quant", "lossy", None, 0, False,
                                           {"mode": "static", "reverted": why}, 3, 3, 10, 10, 0.01))
    rep.records.append(graphopt.PassRecord("dce", "dce", "exact", None, 0, False,
                                           {"nodes_removed": 0}, 3, 3, 10, 10, 0.001))
    text = render_html(build_report(rep, spec="quant,dce"))
    shown = text.split('id="passes-unchanged"')[0]
    assert ">quant<" in shown and "model kept in float" in shown
    assert "1 passes unchanged" in text and ">dce<" not in shown


def test_changes_are_percent_or_factor_never_exponent():
    from graphopt._format import format_change

    assert format_change(1.0, 0.0037) == "-99.6% (÷270)"
    assert format_change(100, 88) == "-12%" and format_change(100, 97) == "-3.0%" and format_change(10, 37) == "×3.7"
    p_in = {"batches": [{"latency": {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.0, "runs": 20}}]}
    p_out = {"batches": [{"latency": {"p50_ms": 0.5, "p90_ms": 0.6, "p99_ms": 0.0037, "runs": 20}}]}
    data = _unchanged_report()
    data["profiles"] = {"input": p_in, "output": p_out}
    text = render_html(data)
    assert not re.search(r"[×x]\d(\.\d+)?e[-+]\d", text), re.findall(r"[×x][\d.]+e[-+]\d+", text)
    assert "-99.6% (÷270)" in text


def test_per_layer_labels_are_whole_and_have_a_unit():
    long = "/features/features.3/body/body.1/body.1.0/Conv_with_a_rather_long_exported_name"
    svg = hbar_chart("per-layer error (%)", [long, "fc"], [("error", [0.0123, 0.001])],
                     fmt=lambda x: f"{x * 100:.3g}%")
    lines = re.findall(r'<text [^>]*class="label">([^<]*)</text>', svg)
    assert "".join(lines[:-1]) == long and lines[-1] == "fc"  # wrapped over lines, not cut
    assert "…" not in "".join(lines)
    rep = graphopt.Report(nodes_before=3, nodes_after=3)
    rep.records.append(graphopt.PassRecord("q", "q", "lossy", None, 0, True,
                                           {"per_layer_error": {long: 0.0123}}, 3, 3, 10, 10, 0.01))
    text = render_html(build_report(rep, spec="q"))
    assert "relative L2 error of each layer&#x27;s output (%)" in text and ">1.23%" in text


def test_latency_card_and_chart_show_the_same_numbers_with_their_spread():
    rep = graphopt.Report(nodes_before=5, nodes_after=4, bytes_before=10, bytes_after=10)
    rep.extra["input_profile"] = {"macs": 10, "p50_ms": 2.0, "p90_ms": 2.6, "runs": 10}
    rep.records.append(graphopt.PassRecord("dce", "dce", "exact", None, 0, True, {}, 5, 4, 10, 10, 0.01,
                                           extra={"profile": {"macs": 8, "p50_ms": 1.5, "p90_ms": 1.9,
                                                              "runs": 10}}))
    data = build_report(rep, spec="dce")
    # a separate measurement of the saved files must not replace the card's numbers
    data["profiles"] = {"input": {"batches": [{"latency": {"p50_ms": 9.0, "p90_ms": 9.9}}]},
                        "output": {"batches": [{"latency": {"p50_ms": 8.0, "p90_ms": 8.8}}]}}
    text = render_html(data)
    card = re.search(r'latency p50 \(onnxruntime CPU\)</div><div class="v">(.*?)</div><div class="s">(.*?)</div>',
                     text).groups()
    assert card[0] == "2 ms → 1.5 ms" and "p90 2.6 ms → 1.9 ms" in card[1] and "10 runs" in card[1]
    chart = re.search(r'<svg[^>]*id="chart-latency".*?</svg>', text, re.S).group(0)
    assert "2 ms (p90 2.6 ms)" in chart and "1.5 ms (p90 1.9 ms)" in chart
    assert chart.count('class="whisker"') == 4 and "(ms" in chart


def test_graph_view_draws_the_changed_region():
    from graphopt.graphview import graph_diff, render_graph

    before = onnx.load(DIGITS)
    after = graphopt.optimize(before, "fold-bn", verify=False)
    diff = graph_diff(before, after)
    removed = {n["op"] for n in diff["before"]["nodes"] if n["changed"]}
    added = {n["op"] for n in diff["after"]["nodes"] if n["changed"]}
    assert "BatchNormalization" in removed and "BatchNormalization" not in added and "Conv" in added
    assert diff["before"]["edges"] and graph_diff(before, before) is None
    svg = render_graph(diff["before"], "before")
    assert svg.count("<rect") == len(diff["before"]["nodes"]) and svg.count('class="edge"') == len(
        diff["before"]["edges"])


def test_cli_report_has_graph_hints_and_one_note_per_problem(cli_reports):
    digits = cli_reports["digits"].read_text()
    assert digits.count('<svg class="graph"') == 2 and "BatchNormalization" in digits
    assert "--target ort" in digits  # Conv+Relu fuse into FusedConv only for onnxruntime
    tiny = cli_reports["tiny"].read_text()
    hints = re.findall(r'<li class="hint">(.*?)</li>', tiny)
    assert any("LayerNormalization needs opset 17" in h and "--allow-opset-upgrade" in h for h in hints)
    assert any("Gelu needs opset 20" in h for h in hints)
    notes = re.findall(r'<li class="note">(.*?)</li>', tiny)
    assert len(notes) == 1, notes  # was ten copies
    assert "--input-shape input_ids=1xN" in notes[0]
    assert "--batch" not in tiny  # `graphopt MODEL` has no --batch


@needs_chromium
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cli_reports_fit_the_window(cli_reports, tmp_path, size):
    for name in ("digits", "tiny"):
        attrs = _rendered(cli_reports[name], tmp_path, size)
        assert attrs["data-rendered"] == "ok", attrs
        assert int(attrs["data-viewport"]) == size[0], attrs
        assert attrs["data-overflow"] == "none", (name, size, attrs)
    assert int(_rendered(cli_reports["digits"], tmp_path, size)["data-graphs"]) == 2


def test_report_keeps_the_runs_hints_for_another_target(tmp_path):
    """--target ort: Conv+Relu fused, and the report must not advise --target ort."""
    rc = cli_main([str(DIGITS), "-p", "clean,fuse", "--target", "ort", "-o", str(tmp_path / "o.onnx"),
                   "-q", "--no-verify", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["hints"] == []


# ------------------------------------------------------------------ issue 16: quant's INT8 decisions

_QUANT_STATS = {
    "mode": "static",
    "regions": {
        "R0 (Conv; 0.10 M dense + 0.00 M depthwise MACs, 64 Q/DQ elements)":
            "float: convolution on a graph input (INT8 im2col-bound, adds a quantize)",
        "R1 (Addx2, Convx6; 0.67 M dense + 0.00 M depthwise MACs, 96 Q/DQ elements)":
            "int8 (in the chosen set 'convolutions on float inputs float (input)', "
            "measured 1.21x [1.19, 1.22] over 69 rounds)",
        "R2 (Gemm, Relu; 0.01 M dense + 0.00 M depthwise MACs, 42 Q/DQ elements)":
            "int8 (1/2 nodes; the rest float: no speedup from INT8 there)",
    },
    "cost_trials": [
        "all candidates: 1.10x [1.08, 1.12] over 55 rounds -> inconclusive",
        "convolutions on float inputs float (input): 1.21x [1.19, 1.22] over 69 rounds -> faster",
        "element-wise/pooling ops float: 0.90x [0.85, 0.95] over 40 rounds -> slower",
    ],
    "cost_choice": "convolutions on float inputs float (input)",
    "cost_timing": "2 intra-op threads, spinning (in a child process, one shared pool)",
    "latency_ratio": 1.21,
    "latency_ratio_interval": [1.19, 1.22],
    "left_float": {"conv0": "cost: convolution on a graph input", "conv5": "sensitive (alone: 0.7 of the budget)"},
    "kept_float_for_accuracy": ["conv5"],
}


def _quant_report(stats: dict) -> dict:
    rep = graphopt.Report(nodes_before=9, nodes_after=30, bytes_before=1000, bytes_after=300, seconds=2.0)
    rep.records.append(graphopt.PassRecord("quant", "quant", "lossy", None, 0, True, dict(stats),
                                           9, 30, 1000, 300, 2.0))
    return build_report(rep, spec="quant")


def test_quant_regions_show_int8_or_float_and_why():
    """One row per region: the region, int8 or float (styled), and why; then the measured
    candidate sets with the chosen one marked, and the nodes kept float for accuracy."""
    text = render_html(_quant_report(_QUANT_STATS))
    sec = re.search(r'<section id="int8">(.*?)</section>', text, re.DOTALL)
    assert sec, "no INT8 section"
    sec = sec.group(1)
    rows = re.findall(r"<tr>(<td.*?)</tr>", re.search(r'<table class="stack" id="int8-regions">.*?</table>',
                                                   sec, re.DOTALL).group(0))
    cells = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]
    assert [c[1] for c in cells] == ["float", "int8", "int8"], cells
    assert cells[0][0].startswith("R0 (Conv;") and \
        cells[0][2] == "convolution on a graph input (INT8 im2col-bound, adds a quantize)"
    assert cells[1][2] == "in the chosen set &#x27;convolutions on float inputs float (input)&#x27;, " \
                          "measured 1.21x [1.19, 1.22] over 69 rounds"
    assert cells[2][2] == "1/2 nodes; the rest float: no speedup from INT8 there"
    assert '<span class="skip">float</span>' in rows[0] and '<span class="ok">int8</span>' in rows[1]
    assert "2 of 3 region(s) INT8" in sec and "1.21x [1.19, 1.22]" in sec
    assert "measured against FP32 with 2 intra-op threads, spinning (in a child process" in sec
    trials = re.findall(r"<li[^>]*>(.*?)</li>", re.search(r'<ul id="int8-trials">(.*?)</ul>', sec).group(1))
    assert len(trials) == 3 and "(chosen)" in trials[1] and not any("chosen" in t for t in (trials[0], trials[2]))
    accuracy = re.search(r'<ul id="int8-accuracy">(.*?)</ul>', sec).group(1)
    assert "conv5" in accuracy and "sensitive (alone: 0.7 of the budget)" in accuracy and "conv0" not in accuracy
    assert 'id="int8-head-to-head"' not in sec  # none in these stats
    duel = "element-wise/pooling ops float vs all candidates: 1.01x [0.98, 1.05] over 41 rounds -> kept 'x'"
    sec2 = re.search(r'<section id="int8">(.*?)</section>',
                     render_html(_quant_report({**_QUANT_STATS, "cost_head_to_head": [duel]})), re.DOTALL).group(1)
    assert re.search(r'<ul id="int8-head-to-head"><li>(.*?)</li></ul>', sec2).group(1) == esc(duel)
    # the section sits after the pipeline, before verification; nothing about the model kept float
    assert text.index('id="pipeline"') < text.index('id="int8"') < text.index('id="verification"')
    assert "stays float" not in sec


def test_quant_kept_float_says_so_at_the_top():
    why = ("INT8 not shown faster than FP32 by 1.05x on onnxruntime (all candidates: 1.03x [0.91, 1.13] "
           "over 121 rounds); model kept in float")
    stats = {"cost_trials": ["all candidates: 1.03x [0.91, 1.13] over 121 rounds -> inconclusive"],
             "reverted": why, "latency_ratio": 1.03,
             "regions": {"R0 (Gemm; 0.00 M dense + 0.00 M depthwise MACs, 42 Q/DQ elements)":
                         "float: no set of regions measured faster than FP32"}}
    text = render_html(_quant_report(stats))
    sec = re.search(r'<section id="int8"><h2>INT8 decisions \(quant\)</h2>(.*?)</section>', text, re.DOTALL).group(1)
    assert sec.startswith('<p class="note">INT8 not kept, the model stays float: INT8 not shown faster')
    assert "0 of 1 region(s) INT8" in sec and "no set of regions measured faster than FP32" in sec
    assert "(chosen)" not in sec and "int8-accuracy" not in sec
    # a run without quant's decisions has no such section
    assert 'id="int8' not in render_html(_unchanged_report())


@needs_chromium
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quant_section_fits_the_window(tmp_path, size):
    page = write_report(tmp_path / "quant.html", _quant_report(_QUANT_STATS))
    assert 'id="int8-regions"' in Path(page).read_text()
    attrs = _rendered(Path(page), tmp_path, size)
    assert attrs["data-rendered"] == "ok", attrs
    assert attrs["data-overflow"] == "none", (size, attrs)
