"""Before/after reports of a pipeline run: one self-contained HTML page, or JSON.

    data = build_report(report, input_profile=p_in, output_profile=p_out, spec="clean,fuse")
    write_report("report.html", data)        # or "report.json"

The data is the run's `graphopt.run/1` document (graphopt.schema, docs/json.md) with the
report's parts filled in. The HTML page has no external resources (inline CSS and SVG drawn
here; no scripts from a CDN), so it opens offline or attached to a CI run. What a reader sees
first: summary cards (nodes, weights, MACs, latency p50 with its p90 and the number of runs,
verification), hints (fusions an option would enable), the passes that changed the model
(the unchanged ones folded into one "N passes unchanged" line), a before/after drawing of
the changed region of the graph (graphopt.graphview), and quant's INT8 decision per region
with the candidate sets it measured (when its stats hold `regions`). Then verification details with
per-layer errors of lossy passes (``stats["per_layer_error"]``, relative L2 per layer, in %),
the input and output profiles side by side, charts per stage (nodes, weights, latency p50 with
a p90 whisker, MACs) and FLOPs by op type, and notes (each once). Every chart is drawn in a
fixed viewBox and scaled by CSS to its container; tables stack into label/value rows on a
narrow screen. The page writes its own layout check onto <body> (data-rendered,
data-overflow: anything wider than the window), which tests read in headless chromium.

The package: the data and the one call the CLI makes (here), the HTML page (`page`), the
SVG bar charts (`charts`), quant's decisions for the page and the CLI's summary line
(`quant`); number formatting is shared with the CLI (graphopt._format).
"""

from __future__ import annotations

import json
import logging
import os

from ..errors import GraphoptError
from ..pipeline import Report
from .page import render_html

# ------------------------------------------------------------------------ data


def build_report(
    report: Report,
    *,
    input_profile=None,
    output_profile=None,
    spec: str = "",
    input_path: str | None = None,
    output_path: str | None = None,
    title: str | None = None,
) -> dict:
    """Everything the report shows: the run's `graphopt.run/1` document (graphopt.schema)
    with the report's parts filled in (title, input and output profiles)."""
    from ..schema import run_document

    return run_document(
        report, spec=spec, input_path=input_path, output_path=output_path,
        title=title or f"graphopt report: {os.path.basename(input_path or 'model')}",
        profiles={
            "input": input_profile.as_dict() if input_profile is not None else None,
            "output": output_profile.as_dict() if output_profile is not None else None,
        },
    )


def write_report(path: str | os.PathLike, data: dict) -> str:
    """Write `data` (from build_report) as JSON when the path ends in .json, else HTML."""
    path = os.fspath(path)
    text = json.dumps(data, indent=2) if path.lower().endswith(".json") else render_html(data)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if not text.endswith("\n"):
                f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise GraphoptError(f"cannot write the report to {path}: {e.strerror or e}") from e
    return path


# ------------------------------------------------------------------------ one call for the CLI


def unbound_inputs_note(proto, input_shapes=None) -> str:
    """'' when every input's shape is known once leading dims are bound to 1; else one note
    naming the inputs, their unbound dims and the `graphopt` option that binds them."""
    from ..analysis.shapes import resolve_input_shapes

    try:
        bound, _ = resolve_input_shapes(proto, input_shapes, batch=1)
    except GraphoptError as e:
        return f"the models were not profiled: {e}"
    missing = {k: v for k, v in bound.items() if v is None or not all(isinstance(d, int) for d in v)}
    if not missing:
        return ""

    def example(v) -> str:
        return "x".join(str(d) if isinstance(d, int) else "N" for d in (v or ("N",)))

    what = "; ".join(
        f"input '{k}' has shape " + ("unknown" if v is None else "[" + ", ".join(map(str, v)) + "]")
        for k, v in missing.items())
    opts = " ".join(f"--input-shape {k}={example(v)}" for k, v in missing.items())
    return (f"the models were not profiled (no FLOPs, latency or memory): {what}, with dims "
            f"graphopt cannot guess; give them, e.g. {opts} (N: the size you run with)")


def profile_path(path: str, input_shapes=None, *, progress=None, runs: int = 20,
                 measure_memory: bool = True, proto=None):
    """Profile a saved model for a report: leading symbolic dims bound to 1. Returns
    (Profile or None, note)."""
    from .. import io
    from ..analysis import profile_model
    from ..instruments.stages import report_shapes

    try:
        proto = proto if proto is not None else io.load(path)
        shapes = report_shapes(proto, input_shapes)
        return profile_model(proto, name=os.path.basename(path), path=path, input_shapes=shapes,
                             runs=runs, measure_memory=measure_memory, progress=progress), ""
    except GraphoptError as e:
        return None, f"{os.path.basename(path)} was not profiled: {e}"


def _load_structure(path: str):
    """The model's graph without external weights (for the graph view and hints)."""
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # a report never fails the run over its pictures
        logging.getLogger(__name__).info("report: cannot read %s: %s", path, e)
        return None


def report_for_run(
    out_path: str | os.PathLike, report: Report, *, input_path: str, output_path: str, spec: str,
    input_shapes=None, progress=None, runs: int = 20, measure_memory: bool = True, ctx=None,
) -> str:
    """Profile the input and output models of a run and write the report (HTML or JSON):
    the run's document (graphopt.schema) with profiles, the changed region of the graph,
    hints (when the run's instruments left none) and notes."""
    from ..analysis.hints import fusion_hints
    from ..graphview import graph_diff
    from ..schema import plain

    before, after = _load_structure(input_path), _load_structure(output_path)
    unbound = unbound_inputs_note(before, input_shapes) if before is not None else ""
    graph = hints = None
    if before is not None and after is not None:
        graph = plain(graph_diff(before, after))
        if "hints" not in report.extra:  # FusionHints did not run (it knows the context)
            hints = fusion_hints(after, ctx, {r.name for r in report.records})
    del before, after  # the profiles load the models again, with their external data
    p_in = p_out = None
    notes = []
    if unbound:
        notes.append(unbound)
    else:
        p_in, note_in = profile_path(input_path, input_shapes, progress=progress, runs=runs,
                                     measure_memory=measure_memory)
        p_out, note_out = profile_path(output_path, input_shapes, progress=progress, runs=runs,
                                       measure_memory=measure_memory)
        notes += [n for n in (note_in, note_out) if n]
    data = build_report(report, input_profile=p_in, output_profile=p_out, spec=spec,
                        input_path=input_path, output_path=output_path)
    data["notes"] = notes
    data["graph"] = graph
    if hints is not None:
        data["hints"] = hints
    return write_report(out_path, data)
