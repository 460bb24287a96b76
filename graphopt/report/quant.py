"""Quant's per-region INT8 decisions, for the HTML report and the CLI summary (issue 16:
"the report shows, per region, 'int8' or 'float' and why").

Pass `quant` records them in its stats (passes/_qregions.py `choose()`):
``regions`` {region description: "int8 (...)" or "float: why"}, ``cost_trials`` (every
candidate set measured, "label: 1.10x [1.08, 1.12] over 55 rounds -> verdict"),
``cost_choice`` (the chosen label), ``cost_head_to_head`` (sets timed against the chosen one), ``latency_ratio`` and ``latency_ratio_interval``,
``reverted`` (the model was kept float, and why), ``kept_float_for_accuracy`` (node names)
with their reasons in ``left_float``. Nothing here measures: it only reads those stats.
"""

from __future__ import annotations

import re

from .._format import esc
from .page import _table, pass_label

_REGION = re.compile(r"^(\S+) \(([^;()]*);.*\)$")  # "R1 (Addx2, Convx6; 0.67 M dense ...)"


def split_decision(text: str) -> tuple[str, str]:
    """("int8" | "float", why) of one region's decision text:
    "int8 (in the chosen set 'X', measured 1.21x ...)" -> ("int8", "in the chosen set 'X', ...");
    "float: convolution on a graph input" -> ("float", "convolution on a graph input")."""
    text = str(text).strip()
    for kind in ("int8", "float"):
        if text == kind or text.startswith((kind + ":", kind + " ")):
            why = text[len(kind):].strip().removeprefix(":").strip()
            if why.startswith("(") and why.endswith(")"):
                why = why[1:-1]
            return kind, why
    return "", text


def short_region(description: str) -> str:
    """A region's label and ops without its cost figures: "R1 (Addx2, Convx6, GlobalAveragePool)"."""
    m = _REGION.match(description)
    return f"{m.group(1)} ({m.group(2)})" if m else description


def _measured(stats: dict) -> str:
    """"1.21x [1.19, 1.22]": the chosen set's speed-up over FP32 and its interval."""
    ratio, iv = stats.get("latency_ratio"), stats.get("latency_ratio_interval")
    if not isinstance(ratio, (int, float)):
        return ""
    text = f"{ratio:.2f}x"
    if isinstance(iv, (list, tuple)) and len(iv) == 2:
        text += f" [{iv[0]:.2f}, {iv[1]:.2f}]"
    return text


def summary_line(stats: dict) -> str:
    """One line for the CLI (without the pass's name), '' when quant made no cost decision:
    "34/36 regions int8 (set 'X', measured 1.21x [1.19, 1.22]); 2 float: R0 (Conv): why"
    or "kept float: <reason>"."""
    regions = stats.get("regions")
    if stats.get("reverted"):
        return f"kept float: {stats['reverted']}"
    if not isinstance(regions, dict) or not regions:
        return ""
    decided = [(short_region(r), *split_decision(d)) for r, d in regions.items()]
    n_int8 = sum(kind == "int8" for _, kind, _ in decided)
    line = f"{n_int8}/{len(decided)} regions int8"
    how = []
    if stats.get("cost_choice"):
        how.append(f"set '{stats['cost_choice']}'")
    measured = _measured(stats)
    if measured:
        how.append(f"measured {measured}")
    if how:
        line += f" ({', '.join(how)})"
    floats: dict[str, list[str]] = {}  # why -> regions, in order
    for region, kind, why in decided:
        if kind != "int8":
            floats.setdefault(why or "no reason given", []).append(region)
    if floats:
        line += f"; {len(decided) - n_int8} float: " + "; ".join(
            f"{', '.join(rs)}: {why}" for why, rs in floats.items())
    accuracy = stats.get("kept_float_for_accuracy") or []
    if accuracy:
        line += f"; {len(accuracy)} node(s) kept float for accuracy"
    return line


def _section(p: dict, ident: str) -> str:
    st = p.get("stats") or {}
    name = pass_label(p)
    decided = [(r, *split_decision(d)) for r, d in st["regions"].items()]
    n_int8 = sum(kind == "int8" for _, kind, _ in decided)
    out = [f'<section id="{esc(ident)}"><h2>INT8 decisions ({esc(name)})</h2>']
    if st.get("reverted"):
        out.append(f'<p class="note">INT8 not kept, the model stays float: {esc(st["reverted"])}</p>')
    measured = _measured(st)
    head = f"{n_int8} of {len(decided)} region(s) INT8"
    if st.get("cost_choice"):
        head += f", in the chosen set <code>{esc(st['cost_choice'])}</code>"
    if measured and not st.get("reverted"):
        head += (f", measured speed-up over FP32 {esc(measured)} (median of paired rounds and "
                 "its confidence interval)")
    out.append(f'<p class="muted">{head}. A region is a chain of quantized nodes that stays '
               'INT8 between one quantize and one dequantize.</p>')
    rows = []
    for region, kind, why in decided:
        cls = {"int8": "ok", "float": "skip"}.get(kind, "muted")
        rows.append([esc(region), f'<span class="{cls}">{esc(kind or "?")}</span>', esc(why)])
    out.append(_table(["region", "decision", "why"], rows, left=3, table_id=f"{ident}-regions", raw=True,
                      cell_class={0: "l wrap", 2: "l wrap"}))
    trials = st.get("cost_trials") or []
    if trials:
        choice = st.get("cost_choice")
        items = []
        for t in trials:
            chosen = bool(choice) and str(t).startswith(f"{choice}: ")
            items.append(f'<li class="ok"><strong>{esc(t)}</strong> (chosen)</li>' if chosen
                         else f"<li>{esc(t)}</li>")
        timing = f" with {esc(st['cost_timing'])}" if st.get("cost_timing") else ""
        out.append(f"<p>Candidate sets measured against FP32{timing}, in order (speed-up, its interval, "
                   f'verdict):</p><ul id="{esc(ident)}-trials">' + "".join(items) + "</ul>")
    duels = st.get("cost_head_to_head") or []
    if duels:
        out.append("<p>Sets whose intervals overlapped, timed head to head (the later set vs the "
                   f'chosen one):</p><ul id="{esc(ident)}-head-to-head">'
                   + "".join(f"<li>{esc(d)}</li>" for d in duels) + "</ul>")
    accuracy = st.get("kept_float_for_accuracy") or []
    if accuracy:
        why = st.get("left_float") or {}
        out.append(f'<p>Kept float for accuracy ({len(accuracy)} node(s)):</p><ul id="{esc(ident)}-accuracy">'
                   + "".join(f"<li><code>{esc(n)}</code>" + (f": {esc(why[n])}" if why.get(n) else "")
                             + "</li>" for n in accuracy) + "</ul>")
    out.append("</section>")
    return "".join(out)


def quant_sections(data: dict) -> str:
    """One section per pass record whose stats hold `regions` (id "int8", then "int8-2", ...)."""
    out = []
    for p in data.get("passes") or []:
        if isinstance((p.get("stats") or {}).get("regions"), dict):
            out.append(_section(p, "int8" if not out else f"int8-{len(out) + 1}"))
    return "".join(out)
