"""The one JSON document of a pipeline run: what `graphopt MODEL --json` prints and what
`graphopt MODEL --report run.json` writes (the report fills in the optional parts).

    doc = run_document(report, spec="clean,fuse", input_path="m.onnx", output_path="m.opt.onnx")
    doc["schema"] == "graphopt.run/1"

Documented field by field in docs/json.md. The version after the slash changes only when a
field is removed or changes meaning; new optional fields keep it. Floats are rounded to
6 significant digits (timings, errors, ratios: more digits are noise), NaN becomes null
and infinities the strings "inf" / "-inf", so every value is plain JSON.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

SCHEMA = "graphopt.run/1"
DIGITS = 6


def plain(x: Any, digits: int = DIGITS) -> Any:
    """`x` as plain JSON values, floats rounded to `digits` significant digits."""
    if isinstance(x, dict):
        return {str(k): plain(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [plain(v, digits) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(f"{x:.{digits}g}")
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return plain(x.item(), digits)
        if isinstance(x, np.ndarray):
            return plain(x.tolist(), digits)
    except ImportError:  # pragma: no cover
        pass
    return str(x)


def run_document(report, *, spec: str = "", input_path: str | None = None,
                 output_path: str | None = None, notes: list[str] | None = None,
                 **optional: Any) -> dict:
    """The run as a `graphopt.run/1` document. `optional` fills the report-only fields
    (title, profiles, graph) or overrides hints."""
    from . import __version__

    passes = []
    for r in report.records:
        d = r.as_dict()
        d["extra"] = dict(d.get("extra") or {})
        d["verify"] = d["extra"].pop("verify", None)
        d["profile"] = d["extra"].pop("profile", None)
        passes.append(d)
    doc = {
        "schema": SCHEMA,
        "graphopt_version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pipeline": spec,
        "input": input_path,
        "output": output_path,
        "summary": {
            "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
            "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
            "seconds": report.seconds,
        },
        "passes": passes,
        "verification": report.extra.get("verify"),
        "input_stage": report.extra.get("input_profile"),
        "hints": list(report.extra.get("hints") or []),
        "notes": list(notes or []),
        "title": None,
        "profiles": None,
        "graph": None,
    }
    doc.update(optional)
    return plain(doc)
