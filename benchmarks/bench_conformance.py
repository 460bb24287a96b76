"""onnx's backend conformance models through graphopt, onnx-simplifier and onnxslim, side by side.

    python benchmarks/bench_conformance.py [--tools graphopt,graphopt-ort,onnxsim,onnxslim]
        [--kinds node,simple,...] [--limit N] [--out benchmarks/results/conformance.md]

For every case onnxruntime (CPU, optimizations off) runs right as given, each tool writes
an optimized model, which must load in onnxruntime and reproduce onnx's expected outputs
(graphopt.testing.conformance; onnx's tolerances). Counted per tool: ok / refused / crash /
rejected-after (onnxruntime refuses the written model) / wrong-output, plus the cases
onnxruntime cannot run (the same for every tool).

graphopt runs as a user gets it from the API (verification on, default examples);
onnxsim.simplify and onnxslim.slim with their defaults. Each tool runs in its own child
process, so a tool that kills its process (or hangs past --timeout seconds on one model)
is counted as a crash on that model and the run goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("graphopt", "graphopt-ort", "onnxsim", "onnxslim")


def _tool(name: str):
    from graphopt.testing import conformance as C

    return {
        "graphopt": lambda: C.graphopt_tool("clean,fuse", "onnx"),
        "graphopt-ort": lambda: C.graphopt_tool("clean,fuse", "ort"),
        "onnxsim": C.onnxsim_tool,
        "onnxslim": C.onnxslim_tool,
    }[name]()


def _cases(kinds, limit):
    from graphopt.testing import conformance as C

    cases = C.collect(kinds)
    return cases[:limit] if limit else cases


def child(args) -> None:
    """Run one tool over cases [start:], one JSON line per outcome on stdout."""
    import logging

    logging.disable(logging.WARNING)
    from graphopt.testing import conformance as C

    cases = _cases(args.kinds, args.limit)
    tool = _tool(args.child)
    out = sys.stdout
    sys.stdout = sys.stderr  # tools that print must not break the protocol
    for i in range(args.start, len(cases)):
        case = cases[i]
        out.write(json.dumps({"start": i}) + "\n")
        out.flush()
        o = C.run_case(case, tool, args.child)
        out.write(json.dumps({"i": i, **o.__dict__}) + "\n")
        out.flush()


def run_tool(name: str, args, n_cases: int, log) -> list[dict]:
    results: list[dict] = []
    start = 0
    while start < n_cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--start", str(start),
               "--kinds", ",".join(args.kinds)] + (["--limit", str(args.limit)] if args.limit else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        current = start
        died = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], args.timeout)
            if not ready:
                proc.kill()
                died = f"no result within {args.timeout:.0f} s (killed)"
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                died = f"process died (exit {proc.returncode})"
                break
            msg = json.loads(line)
            if "start" in msg:
                current = msg["start"]
                continue
            results.append(msg)
            log(msg)
            start = msg["i"] + 1
            current = start
            if start >= n_cases:
                break
        proc.wait()
        if died and current < n_cases:
            from graphopt.testing import conformance as C

            case = _cases(args.kinds, args.limit)[current]
            msg = {"i": current, "case": C.case_id(case), "tool": name, "status": "crash",
                   "reason": died, "where": "", "seconds": 0.0}
            results.append(msg)
            log(msg)
            start = current + 1
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--kinds", default="node,simple,pytorch-converted,pytorch-operator,light")
    ap.add_argument("--limit", type=int, default=0, help="only the first N cases (a smoke run)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model before a tool counts as hung")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "conformance.md"))
    ap.add_argument("--json", default=None, help="also write every outcome here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if args.child:
        child(args)
        return
    tools = [t for t in args.tools.split(",") if t]
    n_cases = len(_cases(args.kinds, args.limit))
    all_results: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for name in tools:
        t0 = time.perf_counter()
        print(f"{name}: {n_cases} cases", file=sys.stderr, flush=True)
        all_results[name] = run_tool(name, args, n_cases, lambda m: m["status"] not in ("ok", "not-runnable")
                                     and print(f"  {m['status']:14s} {m['case']}: {m['reason'][:160]}",
                                               file=sys.stderr, flush=True))
        seconds[name] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f)
    write_markdown(args, tools, all_results, seconds, n_cases)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for pkg in ("graphopt", "onnx", "onnxruntime", "onnxsim", "onnxslim"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "?"
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def write_markdown(args, tools, results, seconds, n_cases) -> None:
    from graphopt.testing.conformance import OUTCOMES

    cmd = "python benchmarks/bench_conformance.py " + " ".join(a for a in sys.argv[1:])
    lines = ["# onnx conformance models: graphopt vs onnx-simplifier vs onnxslim", "",
             f"Command: `{cmd.strip()}`  ", f"CPU: {_cpu()} ({os.cpu_count()} cores, shared with other work "
             "while this ran)  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()), "",
             f"{n_cases} cases from onnx's own package (node tests incl. *_expanded, simple, "
             "pytorch-converted, pytorch-operator, light zoo). A case counts only if onnxruntime "
             "(CPU, optimizations off) runs the input model and matches onnx's expected outputs; "
             "then the tool's written model must load in onnxruntime and match them too "
             "(onnx's tolerances, rtol 1e-3 atol 1e-7 unless the case sets its own).", "",
             "| tool | " + " | ".join(OUTCOMES) + " | bugs (crash+rejected+wrong) | wall s |",
             "|---|" + "---:|" * (len(OUTCOMES) + 2)]
    for name in tools:
        c = Counter(r["status"] for r in results[name])
        bugs = c["crash"] + c["rejected-after"] + c["wrong-output"]
        lines.append(f"| {name} | " + " | ".join(str(c[k]) for k in OUTCOMES) + f" | {bugs} | {seconds[name]:.0f} |")
    lines += ["", "graphopt = `clean,fuse`, graphopt-ort = `clean,fuse --target ort`, both through "
              "`graphopt.api.optimize_file` with verification on.", ""]
    for name in tools:
        bad = [r for r in results[name] if r["status"] in ("crash", "rejected-after", "wrong-output", "refused")]
        if not bad:
            continue
        lines += [f"## {name}: not ok ({len(bad)})", ""]
        for r in sorted(bad, key=lambda r: (r["status"], r["case"])):
            reason = " ".join(r["reason"].split())[:200].replace("|", "\\|")
            lines.append(f"- {r['status']} `{r['case']}`: {reason}")
        lines.append("")
    nr = [r for r in results[tools[0]] if r["status"] == "not-runnable"] if tools else []
    if nr:
        why = Counter(r["reason"].split(":")[0] for r in nr)
        lines += [f"## not runnable by onnxruntime ({len(nr)} cases, the same for every tool)", ""]
        lines += [f"- {k}: {v}" for k, v in why.most_common()]
        lines += ["", "<details><summary>all of them</summary>", ""]
        lines += [f"- `{r['case']}`: {' '.join(r['reason'].split())[:160]}" for r in nr]
        lines += ["", "</details>", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
