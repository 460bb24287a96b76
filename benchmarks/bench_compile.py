"""Benchmark of `graphopt compile` (TVM) against onnxruntime, and which models TVM can take.

    python benchmarks/bench_compile.py [--trials-per-task 8] [--runs 30]
        [--latency digits_cnn,ppocr_cls,mobilenet_v2] [--tune digits_cnn,ppocr_cls]
        [--no-tune] [--skip-share] [--cache DIR] [--tune-share F] [--prepack]

Part 1, import share: for each model (rapidocr's PP-OCRv4 det/rec and PP-OCR mobile v2.0
cls when `rapidocr-onnxruntime` is installed, the graphopt.testing.archs builders, the
shipped models), can TVM 0.27's Relax ONNX frontend import it and `tvm.compile` build it
for the host (a) directly, with the input shapes given to the importer, and (b) after
graphopt's front end (`static-shapes,clean,fuse`, target tvm, passes unverified here —
the tests run them verified)? The first error line is shown where it fails.

Part 2, latency on this machine (batch 1; digits_cnn batch 32), all timings interleaved
(benchmarks/common.py interleaved_median; medians of --runs after warm-up):

- onnxruntime on the original model: all graph optimizations, CPU EP, 2 intra-op
  threads, allow_spinning=0;
- TVM untuned: graphopt front end, then `tvm.compile` with TVM's default CPU pipeline;
- TVM tuned (models in --tune): the same module with MetaSchedule, tuning the tasks that
  hold 90% of the FLOPs (graphopt compile's default --tune-share) with a budget of
  --trials-per-task times their number (the tuning time is reported; records are cached
  in --cache/MODEL; --tune-share 1 tunes every task; --prepack adds a tuned build with
  the weights marked layout-free, cached in --cache/MODEL-prepack);
TVM runs with TVM_NUM_THREADS=2 and TVM_THREAD_POOL_SPIN_COUNT=0 (no spinning, like onnxruntime
here). Every TVM build is checked against onnxruntime first.
Results go to benchmarks/results/compile.md (rewritten after each model).

Part 3, on the device (--device HOST:PORT, a TVM RPC server such as the emulated aarch64
board of tools/emulated-aarch64.sh; --device-only updates just that section of --out):
each model of --device-models is compiled for --device-target, uploaded, checked on the
device against onnxruntime on this machine (float contract, the worst error is shown) and
timed there with TVM's time evaluator. Times from an emulated board are qemu's, not a
board's: they are shown to size the check, never to compare schedules.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
# TVM's thread pool does not spin, as onnxruntime does not (allow_spinning=0): a spinning pool
# on a shared machine waits at every kernel for a descheduled thread
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, interleaved_median, markdown_table, ort_session  # noqa: E402

from graphopt import codegen  # noqa: E402
from graphopt.testing import archs  # noqa: E402

REPO = HERE.parent


def rapidocr_models() -> dict[str, Path]:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return {}
    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return {"ppocr_det": d / "ch_PP-OCRv4_det_infer.onnx", "ppocr_rec": d / "ch_PP-OCRv4_rec_infer.onnx",
            "ppocr_cls": d / "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def model_zoo() -> dict[str, tuple[onnx.ModelProto, dict]]:
    """name -> (model, input shapes): the models of part 1 (part 2 picks from these)."""
    out: dict[str, tuple[onnx.ModelProto, dict]] = {}
    ocr = rapidocr_models()
    shapes = {"ppocr_det": (1, 3, 320, 320), "ppocr_rec": (1, 3, 48, 320), "ppocr_cls": (1, 3, 48, 192)}
    for name, path in ocr.items():
        out[name] = (onnx.load(path), {"x": shapes[name]})
    out["mobilenet_v2"] = (archs.mobilenet_v2(image=96, width=0.5), {})
    out["mobilenet_v3_small"] = (archs.mobilenet_v3_small(image=96), {})
    out["resnet50"] = (archs.resnet50(image=64, width=0.25), {})
    out["densenet_like"] = (archs.densenet_like(), {})
    out["bert_tiny"] = (archs.bert(layers=2, hidden=128, heads=2, intermediate=512),
                        {"input_ids": (1, 32), "attention_mask": (1, 32)})
    out["digits_cnn"] = (onnx.load(REPO / "models" / "digits_cnn.onnx"), {"input": (32, 1, 8, 8)})
    out["tiny_transformer"] = (onnx.load(REPO / "models" / "tiny_transformer.onnx"), {"input_ids": (1, 32)})
    return out


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:110].replace("|", "/")


def try_build(model: onnx.ModelProto, shapes: dict, front_end: bool):
    import tvm

    if front_end:
        model, _ = codegen.front_end(model, codegen.DEFAULT_SPEC, shapes, verify=False)
    mod = codegen.import_onnx(model, shapes)
    with codegen.quiet_tvm():
        ex = tvm.compile(mod, target=codegen.resolve_target("host").tvm_target())
    return model, mod, ex


def import_share(models) -> tuple[str, dict]:
    rows, ok = [], {"direct": 0, "graphopt": 0}
    for name, (model, given) in models.items():
        try:
            shapes = codegen.static_input_shapes(model, given)
        except Exception as e:  # noqa: BLE001
            rows.append([name, len(model.graph.node), "-", f"no static shapes: {first_line(e)}", "-", "-"])
            continue
        cells = [name, len(model.graph.node), "x".join(map(str, next(iter(shapes.values()))))]
        for key, fe in (("direct", False), ("graphopt", True)):
            t0 = time.perf_counter()
            try:
                opt, _, _ = try_build(model, shapes, fe)
                ok[key] += 1
                cells.append(f"ok ({len(opt.graph.node)} nodes, {time.perf_counter() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001
                cells.append(f"fails: {first_line(e)}")
        rows.append(cells)
        print(f"  {name}: {cells[3:]}", flush=True)
    n = len(rows)
    table = markdown_table(["model", "nodes", "input", "TVM directly", "after graphopt front end"], rows)
    summary = (f"TVM imports and builds **{ok['direct']}/{n}** models directly and "
               f"**{ok['graphopt']}/{n}** after graphopt's front end.")
    return table + "\n\n" + summary, ok


def latency(name: str, model: onnx.ModelProto, given: dict, *, trials_per_task: int, tune: bool,
            runs: int, cache: Path, share: float = codegen.DEFAULT_TUNE_SHARE,
            prepack: bool = False) -> list[list]:
    from graphopt.verify import compare

    shapes = codegen.static_input_shapes(model, given)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    sess = ort_session(model, threads=2, optimize=True)
    opt, _ = codegen.front_end(model, codegen.DEFAULT_SPEC, shapes, verify=False)
    mod = codegen.import_onnx(opt, shapes)
    host = codegen.resolve_target("host")
    in_names, out_names = list(shapes), [o.name for o in opt.graph.output]
    builds = {}
    t0 = time.perf_counter()
    ex, _ = codegen.build(mod, host)
    builds["TVM untuned (default pipeline)"] = (ex, f"build {time.perf_counter() - t0:.1f} s")
    if tune:
        from graphopt import tuning

        n_tasks = _count_tasks(mod, host, share)
        trials = trials_per_task * n_tasks  # over the tasks holding `share` of the FLOPs
        for packed in (False, True) if prepack else (False,):
            tuning.PREPACK = packed
            t0 = time.perf_counter()
            ex_t, info = codegen.build(mod, host, tune_trials=trials, tune_share=share,
                                       tune_cache=cache / (name + ("-prepack" if packed else "")))
            total = time.perf_counter() - t0
            builds[f"TVM tuned (MetaSchedule, {trials} trials{', weights prepacked' if packed else ''})"] = (
                ex_t, f"{info.tasks_selected} of {info.tasks} tasks tuned ({100 * info.flops_share:.0f}% of "
                      f"FLOPs; {info.tasks_tuned} tuned in this run); tuning {info.seconds:.0f} s, "
                      f"build total {total:.0f} s")
        tuning.PREPACK = False
    runners = {}
    for label, (ex, _) in builds.items():
        r = codegen.TVMRunner(ex, in_names, out_names)
        res = compare(model, opt, "float", examples=3, input_shapes=shapes,
                      input_ranges={k: (-2.0, 2.0) for k in shapes}, runner_b=r)
        if not res.ok:
            raise SystemExit(f"{name}: {label} disagrees with onnxruntime: {res.summary}")
        runners[label] = r
    jobs = {"onnxruntime (ORT_ENABLE_ALL, 2 threads)": lambda: sess.run(None, feeds)}
    for label, r in runners.items():
        args = r.arguments(feeds)
        jobs[label] = (lambda r=r, a=args: r.call(a))
    times = interleaved_median(jobs, runs=runs, warmup=3)
    base = times["onnxruntime (ORT_ENABLE_ALL, 2 threads)"]
    rows = []
    for label, t in times.items():
        note = builds[label][1] if label in builds else ""
        rows.append([f"{name} {'x'.join(map(str, next(iter(shapes.values()))))}", label, t * 1e3 if isinstance(t, float) else t,
                     f"{t / base:.2f}x" if isinstance(t, float) else "-", note])
    return rows


def _count_tasks(mod, host, share: float) -> int:
    """How many tasks `graphopt compile --tune-trials --tune-share share` tunes."""
    from graphopt import tuning

    with codegen.quiet_tvm():
        tasks = tuning.extract_tasks(mod, host.tvm_target(), tuning.PREPACK)
    return len(tuning.heaviest(tasks, share)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials-per-task", type=int, default=8)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--latency", default="digits_cnn,ppocr_cls,mobilenet_v2")
    ap.add_argument("--tune", default="digits_cnn,ppocr_cls", help="models of --latency also tuned")
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--tune-share", type=float, default=codegen.DEFAULT_TUNE_SHARE)
    ap.add_argument("--prepack", action="store_true",
                    help="also a tuned build with the weights marked layout-free (graphopt.tuning._fusion)")
    ap.add_argument("--skip-share", action="store_true")
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "graphopt-bench-tune"))
    ap.add_argument("--out", default=str(HERE / "results" / "compile.md"))
    ap.add_argument("--device", metavar="HOST:PORT", help="a TVM RPC server: part 3, on the device")
    ap.add_argument("--device-only", action="store_true", help="run only part 3, update only its section")
    ap.add_argument("--device-target", default="aarch64")
    ap.add_argument("--device-models", default="digits_cnn,ppocr_cls,mobilenet_v2")
    ap.add_argument("--device-examples", type=int, default=8)
    args = ap.parse_args()
    import tvm

    models = model_zoo()
    if args.device_only:
        if not args.device:
            ap.error("--device-only needs --device HOST:PORT")
        replace_section(args.out, DEVICE_HEADING,
                        on_device(models, [n for n in args.device_models.split(",") if n], args.device,
                                  args.device_target, args.device_examples))
        print(Path(args.out).read_text())
        return
    header = [
        "# `graphopt compile` (TVM) vs onnxruntime", "",
        f"CPU: {cpu_name()} ({os.cpu_count()} cores); TVM {tvm.__version__}; host target "
        f"`{codegen.resolve_target('host').tvm}`.", "",
        "Reproduce: `python benchmarks/bench_compile.py "
        f"--trials-per-task {args.trials_per_task} --latency {args.latency} --tune {args.tune}"
        f"{f' --tune-share {args.tune_share}' if args.tune_share != codegen.DEFAULT_TUNE_SHARE else ''}"
        f"{' --prepack' if args.prepack else ''}{' --skip-share' if args.skip_share else ''}`", "",
    ]
    sections = []
    if not args.skip_share:
        print("import share", flush=True)
        table, _ = import_share(models)
        sections += ["## Which models TVM can import and build", "",
                     "Input shapes: PP-OCR det 1x3x320x320, rec 1x3x48x320, cls 1x3x48x192; "
                     "transformers sequence length 32; symbolic batch dims bound to 1.", "", table, ""]
        write(args.out, header + sections)
    lat_rows: list[list] = []
    for name in [n for n in args.latency.split(",") if n]:
        print(f"latency {name}", flush=True)
        model, given = models[name]
        lat_rows += latency(name, model, given, trials_per_task=args.trials_per_task,
                            tune=not args.no_tune and name in args.tune.split(","), runs=args.runs,
                            cache=Path(args.cache), share=args.tune_share, prepack=args.prepack)
        table = markdown_table(["model", "runtime", "median ms", "vs onnxruntime", "build"], lat_rows)
        write(args.out, header + sections + [
            "## Latency", "",
            "Medians of interleaved runs; TVM_NUM_THREADS=2, TVM_THREAD_POOL_SPIN_COUNT=0; every TVM build was checked against "
            "onnxruntime (float contract) before timing.", "", table, ""])
    if args.device:
        replace_section(args.out, DEVICE_HEADING,
                        on_device(models, [n for n in args.device_models.split(",") if n], args.device,
                                  args.device_target, args.device_examples))
    print(Path(args.out).read_text())


DEVICE_HEADING = "## On the device (TVM RPC)"


def on_device(models, names: list[str], address: str, target: str, examples: int) -> list[str]:
    import tempfile

    from graphopt import device

    host, port = device.parse_address(address, "--device")
    remote = device.Remote(host, port, timeout=600)
    rows = []
    for name in names:
        model, given = models[name]
        print(f"device {name}", flush=True)
        shapes = codegen.static_input_shapes(model, given)
        shape = "; ".join("x".join(map(str, v)) for v in shapes.values())
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            try:
                r = codegen.compile_model(model, target, Path(tmp) / f"{name}.so", input_shapes=given,
                                          examples=examples, remote=remote, verify_passes=False)
            except Exception as e:  # noqa: BLE001 - a row, not a crash
                rows.append([f"{name} {shape}", "fails", first_line(e)[:120], "", ""])
                continue
            took = time.perf_counter() - t0
        check = r.verification.split("(float contract): ", 1)[-1].split(" [", 1)[0]
        lat = r.device["latency"]
        rows.append([f"{name} {shape}", r.verified, check,
                     f"{lat['median_ms']:.2f} (min {lat['min_ms']:.2f})",
                     f"upload+load {r.device['upload_load_s']:.2f} s; compile+check {took:.0f} s"])
    table = markdown_table(["model", "checked on", "outputs vs onnxruntime (float contract)",
                            "device ms (emulated: not a speed)", "time"], rows)
    return [DEVICE_HEADING, "",
            f"`python benchmarks/bench_compile.py --device-only --device {address} --device-target {target} "
            f"--device-models {','.join(names)}`; the device: {remote.where}, target `{target}`, "
            f"{examples} drawn examples per model run on the device.", "", table, "",
            "Device latencies here were measured under qemu-user (the emulated aarch64 board of "
            "tools/emulated-aarch64.sh) on a busy 2-core x86 machine: they show the check ran, "
            "and say nothing about a real board's speed; they are never used to rank schedules.", ""]


def replace_section(path: str, heading: str, lines: list[str]) -> None:
    text = Path(path).read_text() if Path(path).exists() else ""
    if heading in text:
        before, rest = text.split(heading, 1)
        nxt = rest.find("\n## ")
        after = rest[nxt + 1:] if nxt >= 0 else ""
    else:
        before, after = text.rstrip("\n") + "\n\n", ""
    Path(path).write_text(before + "\n".join(lines) + "\n" + after)


def write(path: str, lines: list[str]) -> None:
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
