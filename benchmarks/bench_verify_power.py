"""The verifier's power: does it catch small real bugs, and only those?

    python benchmarks/bench_verify_power.py [--seeds 2] [--examples 8] [--models NAME,...] [--quick]

Models: the shipped ones (models/*.onnx), onnx's light zoo (onnx/backend/test/data/light;
their weights are constants, so they test the legitimate rewrites more than the mutants),
rapidocr's PP-OCR models (rapidocr-onnxruntime's package folder), whichever exist, and
small random-weight architectures as frameworks export them (graphopt.testing.archs:
ResNet-50 and MobileNetV2/V3 with separate BatchNorms, a 2-layer BERT with LayerNorm,
GELU and attention as Hugging Face's export lays them out, which graphopt's and
onnxruntime's fusions rewrite).

Mutants (seeded, one change each, written as a model a buggy pass could produce):
  nudge-5%, nudge-0.5%, nudge-0.05%  one weight element (of a Conv/Gemm/MatMul weight)
                                     moved by that share of its tensor's range;
  bias-zero                          one Conv/Gemm bias (not already zero) set to zero;
  swap-channels                      two output channels of one Conv/Gemm weight swapped;
  leaky-relu                         one Relu made LeakyRelu(alpha=0.01).
Each mutant's output change is measured on the inputs the verifier draws (onnxruntime,
optimizations off): per example and output max|a-b| / max|a| (the scale the verifier
uses), the largest over examples and outputs, leaving out saturated examples (an output
below 1e-6 of its largest magnitude over the examples); the mutants are bucketed by it. Target: every mutant whose change is at least 1e-5 is
caught (graphopt.verify.compare, float contract, defaults).

Legitimate rewrites, which must all be accepted: onnxsim's output; onnxruntime's own
graph optimizations saved at the EXTENDED level (SessionOptions.optimized_model_filepath);
graphopt `clean,fuse` and `clean,fuse --target ort` with verification on (every float
pass is checked on its own, inside the pipeline: a false alarm fails the pipeline) and
the end result compared with the input. For these, the table gives the largest
error / float-noise-floor ratio seen (the bound is graphopt.verify.noise.NOISE_FACTOR).

Results go to benchmarks/results/verify_power.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper as nh

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import graphopt  # noqa: E402
from graphopt.verify import compare  # noqa: E402
from graphopt.verify.compare import make_space  # noqa: E402
from graphopt.verify.contracts import DEFAULT_RTOL, FLOAT_ATOL  # noqa: E402
from graphopt.verify.noise import NOISE_FACTOR  # noqa: E402
from graphopt.verify.runner import InvalidInput, Runner  # noqa: E402

from common import cpu_name, markdown_table  # noqa: E402

log = logging.getLogger("bench_verify_power")

NUDGES = {"nudge-5%": 0.05, "nudge-0.5%": 0.005, "nudge-0.05%": 0.0005}
MUTANTS = list(NUDGES) + ["bias-zero", "swap-channels", "leaky-relu"]
BUCKETS = [(1e-3, "≥ 1e-3"), (1e-4, "1e-4 – 1e-3"), (1e-5, "1e-5 – 1e-4"), (1e-6, "1e-6 – 1e-5"),
           (1e-300, "< 1e-6"), (0.0, "0 (no change on the drawn inputs)")]
TARGET = 1e-5
THREADS = 2   # onnxruntime intra-op threads of every session here (the verifier's default)


# ----------------------------------------------------------------------------- models


ARCHS = {
    "arch_resnet50_w0.5": lambda a: a.resnet50(batch="N", image=64, width=0.5),
    "arch_mobilenet_v2": lambda a: a.mobilenet_v2(batch="N", image=64, width=0.5),
    "arch_mobilenet_v3_small": lambda a: a.mobilenet_v3_small(batch="N", image=64, width=0.5),
    "arch_bert_2x128": lambda a: a.bert(layers=2, hidden=128, heads=4, intermediate=512, vocab=1000),
}


def load(path) -> onnx.ModelProto:
    if isinstance(path, str) and path in ARCHS:
        from graphopt.testing import archs

        return ARCHS[path](archs)
    return onnx.load(str(path))


def find_models(names: list[str] | None) -> dict[str, Path | str]:
    found: dict[str, Path | str] = {}
    for p in sorted((REPO / "models").glob("*.onnx")):
        found[p.stem] = p
    zoo = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for p in sorted(zoo.glob("*.onnx")):
        found[p.stem] = p
    try:
        import rapidocr_onnxruntime

        for p in sorted((Path(rapidocr_onnxruntime.__file__).parent / "models").glob("*.onnx")):
            found[p.stem] = p
    except ImportError:
        pass
    found.update({name: name for name in ARCHS})
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"unknown model(s) {', '.join(missing)}; have {', '.join(found)}")
        found = {n: found[n] for n in names}
    return found


# ----------------------------------------------------------------------------- mutants


def _weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(node, weight initializer) of Conv/ConvTranspose/Gemm/MatMul nodes with a float weight."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            t = inits.get(n.input[1])
            if t is not None and t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 16:
                out.append((n, t))
    return out


def mutate(model: onnx.ModelProto, kind: str, seed: int) -> onnx.ModelProto | None:
    """A copy of `model` with one seeded mutation of `kind`, or None if it has no site."""
    rng = np.random.default_rng([seed, MUTANTS.index(kind)])
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    if kind == "leaky-relu":
        relus = [n for n in m.graph.node if n.op_type == "Relu"]
        if not relus:
            return None
        n = relus[int(rng.integers(len(relus)))]
        n.op_type = "LeakyRelu"
        n.attribute.append(onnx.helper.make_attribute("alpha", 0.01))
        return m
    sites = _weights(m)
    if kind == "bias-zero":
        biased = [(n, inits[n.input[2]]) for n, _ in sites
                  if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in inits
                  and np.any(nh.to_array(inits[n.input[2]]) != 0)]
        if not biased:
            return None
        _, b = biased[int(rng.integers(len(biased)))]
        b.CopyFrom(nh.from_array(np.zeros_like(nh.to_array(b)), b.name))
        return m
    if not sites:
        return None
    n, t = sites[int(rng.integers(len(sites)))]
    w = nh.to_array(t).copy()
    if kind in NUDGES:
        flat = w.reshape(-1)
        i = int(rng.integers(flat.size))
        span = float(flat.max() - flat.min()) or 1.0
        flat[i] += np.float32(NUDGES[kind] * span * (1 if rng.random() < 0.5 else -1))
    elif kind == "swap-channels":
        # output channels: dim 0 of a Conv weight (dim 1 of ConvTranspose), the last dim of
        # a MatMul weight / a Gemm weight unless transB
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        axis = {"Conv": 0, "ConvTranspose": 1}.get(n.op_type, 0 if trans_b else w.ndim - 1)
        if w.shape[axis] < 2:
            return None
        i, j = rng.choice(w.shape[axis], 2, replace=False)
        idx = [slice(None)] * w.ndim
        a_idx, b_idx = list(idx), list(idx)
        a_idx[axis], b_idx[axis] = i, j
        wa, wb = w[tuple(a_idx)].copy(), w[tuple(b_idx)].copy()
        if np.array_equal(wa, wb):
            return None
        w[tuple(a_idx)], w[tuple(b_idx)] = wb, wa
    t.CopyFrom(nh.from_array(w, t.name))
    return m


# ----------------------------------------------------------------------------- legit rewrites


def legit_rewrites(model: onnx.ModelProto, path: Path) -> dict[str, onnx.ModelProto | str]:
    """name -> rewritten model (or a string saying why there is none)."""
    out: dict[str, onnx.ModelProto | str] = {}
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        out["onnxsim"] = simplified if ok else "onnxsim's own check failed"
    except Exception as e:  # noqa: BLE001 - a tool's failure is a row, not a crash
        out["onnxsim"] = f"onnxsim failed: {str(e).splitlines()[0][:80] if str(e) else type(e).__name__}"
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as d:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = os.path.join(d, "ext.onnx")
            so.log_severity_level = 3
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            out["ort-extended"] = _drop_unused_inputs(onnx.load(so.optimized_model_filepath), model)
    except Exception as e:  # noqa: BLE001
        out["ort-extended"] = f"onnxruntime failed: {str(e).splitlines()[0][:80]}"
    return out


def _drop_unused_inputs(rewritten: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's saved graph keeps graph inputs for initializers it folded away
    (light zoo models declare every weight as an input too): unread there, they would
    count as new required inputs. Drop those (never the original's real inputs)."""
    from graphopt.ir import iter_proto_nodes

    real = {i.name for i in original.graph.input} - {t.name for t in original.graph.initializer}
    inits = {t.name for t in rewritten.graph.initializer}
    read = {i for n in iter_proto_nodes(rewritten.graph) for i in n.input}
    keep = [i for i in rewritten.graph.input if i.name in real or i.name in read or i.name in inits]
    del rewritten.graph.input[:]
    rewritten.graph.input.extend(keep)
    return rewritten


def graphopt_rewrite(model: onnx.ModelProto, target: str | None, examples: int) -> tuple[object, str]:
    """(optimized model or None, what the in-pipeline checks said)."""
    kw = {"target": target} if target else {}
    try:
        out, report = graphopt.optimize(model, "clean,fuse", return_report=True,
                                        verify_options={"examples": examples, "shrink_seconds": 0,
                                                        "repro_dir": os.path.join(tempfile.gettempdir(), "graphopt-power-repro")},
                                        **kw)
    except graphopt.VerificationError as e:
        return None, f"FALSE ALARM inside the pipeline: {str(e)[:200]}"
    checks = [r for r in report.records if r.extra.get("verify", {}).get("status") not in (None, "unchanged")]
    return out, f"{len(checks)} pass checks ok"


# ----------------------------------------------------------------------------- measuring


SATURATED = 1e-6   # an example whose output stays below this share of the output's largest magnitude


def output_change(model: onnx.ModelProto, other: onnx.ModelProto, space, examples: int, seed: int,
                  ref: Runner) -> float:
    """The output change on the drawn examples (the verifier's own, in its order): per
    example and output, max|a-b| / max|a| (the verifier's own scale), the largest over
    examples and outputs -- leaving out an example whose output's magnitude is below
    SATURATED times its largest over the examples (a saturated Sigmoid at 6e-8 where
    other inputs give 1: there a one-ulp difference would count as a 50% change).
    inf when shapes or finiteness differ, nan when nothing ran."""
    try:
        # the reference's own thread count: onnxruntime's intra-op threads change the
        # reduction order, which moves an ill-conditioned input's outputs by itself
        # (PP-OCRv4 det, a 1000x input: 3.4e-5 between 1 and 2 threads)
        rb = Runner(other, threads=THREADS)
    except Exception:  # noqa: BLE001
        return float("inf")
    per: dict[int, list[tuple[float, float]]] = {}
    ran = 0
    for ex in space.draw(3 * examples, seed):
        if ran >= examples:
            break
        try:
            outs_a = ref.run(ex.feeds)
        except InvalidInput:
            continue
        ran += 1
        try:
            outs_b = rb.run(ex.feeds)
        except InvalidInput:
            return float("inf")
        for i, (a, b) in enumerate(zip(outs_a, outs_b)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape or (np.isfinite(a) != np.isfinite(b)).any():
                return float("inf")
            fin = np.isfinite(a)
            if fin.any():
                per.setdefault(i, []).append((float(np.abs(a[fin] - b[fin]).max()), float(np.abs(a[fin]).max())))
    if not ran:
        return float("nan")
    worst = 0.0
    for pairs in per.values():
        top = max(m for _, m in pairs)
        for err, mag in pairs:
            if mag > 0 and mag >= SATURATED * top:
                worst = max(worst, err / mag)
            elif mag == 0 and err > 0 and top == 0:
                worst = float("inf")
    return worst


def bucket(change: float) -> str:
    if change == 0:
        return BUCKETS[-1][1]
    for lo, name in BUCKETS[:-1]:
        if change >= lo:
            return name
    return BUCKETS[-2][1]


def noise_ratio(result) -> str:
    for note in result.notes:
        if "float noise" in note and "at most" in note:
            return note.split("at most ", 1)[1].split("x", 1)[0]
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="mutants per kind and model (default 2)")
    ap.add_argument("--examples", type=int, default=8, help="verifier examples per check (default 8)")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: all found)")
    ap.add_argument("--no-graphopt", action="store_true", help="skip the graphopt pipelines (faster)")
    ap.add_argument("--out", default=str(HERE / "results" / "verify_power.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    models = find_models(args.models.split(",") if args.models else None)
    t_start = time.perf_counter()

    mutant_rows: list[dict] = []
    legit_rows: list[dict] = []
    for name, path in models.items():
        model = load(path)
        t0 = time.perf_counter()
        ref = Runner(model, threads=THREADS)
        space = make_space(model, ref)
        if not space.probed_ok:
            print(f"{name}: no input the model accepts ({space.probe_error}); skipped", flush=True)
            continue
        for kind in MUTANTS:
            for seed in range(args.seeds):
                mutant = mutate(model, kind, seed)
                if mutant is None:
                    continue
                change = output_change(model, mutant, space, args.examples, 0, ref)
                res = compare(model, mutant, "float", examples=args.examples, seed=0, shrink_seconds=0,
                              runner_a=ref, space=space, threads=THREADS)
                caught = not res.ok and not res.skipped
                mutant_rows.append(dict(model=name, kind=kind, seed=seed, change=change, caught=caught,
                                        skipped=res.skipped, summary=res.summary))
                print(f"{name:32s} {kind:14s} seed {seed}  change {change:9.2e}  "
                      f"{'CAUGHT' if caught else ('skipped' if res.skipped else 'missed')}  {res.summary[:90]}",
                      flush=True)
        rewrites = legit_rewrites(model, path)
        if not args.no_graphopt:
            for target in (None, "ort"):
                label = "graphopt clean,fuse" + (" --target ort" if target else "")
                out, said = graphopt_rewrite(model, target, args.examples)
                rewrites[label] = out if out is not None else said
                if out is None:
                    legit_rows.append(dict(model=name, tool=label, change=float("nan"), ok=False,
                                           ratio="-", summary=said))
                    rewrites.pop(label)
        for tool, rewritten in rewrites.items():
            if isinstance(rewritten, str):
                legit_rows.append(dict(model=name, tool=tool, change=float("nan"), ok=None, ratio="-",
                                       summary=f"no rewrite: {rewritten}"))
                continue
            change = output_change(model, rewritten, space, args.examples, 0, ref)
            try:
                res = compare(model, rewritten, "float", examples=args.examples, seed=0, shrink_seconds=0,
                              runner_a=ref, space=space, threads=THREADS)
                ok, summary, ratio = res.ok, res.summary, noise_ratio(res)
                if res.skipped:
                    ok = None
            except Exception as e:  # noqa: BLE001 - reported as a row
                ok, summary, ratio = False, f"crash: {type(e).__name__}: {e}", "-"
            legit_rows.append(dict(model=name, tool=tool, change=change, ok=ok, ratio=ratio, summary=summary))
            print(f"{name:32s} {tool:30s} change {change:9.2e}  {'accepted' if ok else 'REJECTED' if ok is False else 'n/a'}"
                  f"  {summary[:90]}", flush=True)
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    write_results(args, models, mutant_rows, legit_rows, time.perf_counter() - t_start)


def write_results(args, models, mutant_rows, legit_rows, seconds: float) -> None:
    lines = ["# Verifier power: seeded mutants vs legitimate rewrites", "",
             f"Command: `python benchmarks/bench_verify_power.py --seeds {args.seeds} --examples {args.examples}"
             + (f" --models {args.models}" if args.models else "") + (" --no-graphopt" if args.no_graphopt else "")
             + "`", "",
             f"CPU: {cpu_name()}; {len(models)} models; {seconds:.0f} s in all. Verifier: graphopt.verify.compare, "
             f"float contract at its defaults (rtol {DEFAULT_RTOL:g}, atol {FLOAT_ATOL:g}, then {NOISE_FACTOR:g}x "
             "the input's one-ulp float noise), no shrinking. Change = per example and output max|a-b| / max|a|, the largest "
             "over the drawn examples and outputs, saturated examples (output magnitude below 1e-6 of its largest "
             "over the examples) left out.",
             "", "## Mutants by measured output change", ""]
    rows = []
    for lo, name in BUCKETS:
        sel = [r for r in mutant_rows if bucket(r["change"]) == name]
        if not sel:
            continue
        caught = sum(r["caught"] for r in sel)
        rows.append([name, len(sel), caught, len(sel) - caught,
                     "yes" if lo >= TARGET and caught == len(sel) else ("**NO**" if lo >= TARGET else "(below target)")])
    lines += markdown_table_plain(["output change", "mutants", "caught", "missed", f"target (≥ {TARGET:g}) met"], rows)
    lines += ["", "By kind:", ""]
    rows = []
    for kind in MUTANTS:
        sel = [r for r in mutant_rows if r["kind"] == kind]
        if sel:
            ch = [r["change"] for r in sel if np.isfinite(r["change"])]
            rows.append([kind, len(sel), sum(r["caught"] for r in sel),
                         f"{min(ch):.1e}" if ch else "-", f"{max(ch):.1e}" if ch else "-"])
    lines += markdown_table_plain(["mutant", "count", "caught", "smallest change", "largest change"], rows)
    missed = [r for r in mutant_rows if not r["caught"] and r["change"] >= TARGET]
    lines += ["", f"Missed mutants with change ≥ {TARGET:g}: {len(missed)}"]
    lines += [f"- {r['model']} {r['kind']} seed {r['seed']}: change {r['change']:.2e}, {r['summary']}" for r in missed]
    below = [r for r in mutant_rows if not r["caught"] and r["change"] < TARGET]
    lines += ["", f"Mutants below the target not caught: {len(below)} (changes "
              + ", ".join(f"{r['change']:.1e}" for r in sorted(below, key=lambda r: -r['change'])[:12])
              + (" ..." if len(below) > 12 else "") + ")"]
    lines += ["", "## Legitimate rewrites", ""]
    rows = [[r["model"], r["tool"], f"{r['change']:.1e}" if np.isfinite(r["change"]) else "-",
             "accepted" if r["ok"] else ("**REJECTED**" if r["ok"] is False else "n/a"), r["ratio"],
             r["summary"][:110].replace("|", "/")] for r in legit_rows]
    lines += markdown_table_plain(["model", "rewrite", "output change", "verdict", "err/noise", "summary"], rows)
    rejected = [r for r in legit_rows if r["ok"] is False]
    accepted = [r for r in legit_rows if r["ok"]]
    lines += ["", f"Legitimate rewrites accepted: {len(accepted)}, rejected (false alarms): {len(rejected)}, "
              f"not available: {len(legit_rows) - len(accepted) - len(rejected)}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def markdown_table_plain(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


if __name__ == "__main__":
    main()
