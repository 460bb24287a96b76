"""graphopt batch / search on a local Ray instance (graphopt.distributed).

One Ray instance (2 CPUs, the measure resource) serves the module; the node-failure test
runs last on a simulated 3-node cluster (ray.cluster_utils.Cluster) of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt.cli import main
from graphopt.errors import GraphoptError
from graphopt.samples import load_samples

ray = pytest.importorskip("ray")
optuna = pytest.importorskip("optuna")

from graphopt.distributed import parse_space, run_search  # noqa: E402
from graphopt.distributed.cluster import MEASURE_RESOURCE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"
METRICS = Path(__file__).resolve().parent / "_distributed_metrics.py"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance shared by the tests of this module (Ray starts slowly)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, resources={MEASURE_RESOURCE: 1}, include_dashboard=False,
                 log_to_driver=False)
    yield
    ray.shutdown()


def _overlaps(a0, a1, b0, b1) -> bool:
    return a0 < b1 and b0 < a1


# ------------------------------------------------------------------ space (no Ray)


def test_space_choices_none_and_enabled():
    s = parse_space("clean,prune(enabled=[false,true],ratio=[0.2,0.5],round_to=8),"
                    "quant(mode=[none,static],exclude=[Gemm])")
    assert s.size() == 8
    specs = s.all_specs()
    assert len(set(specs)) == 6  # prune disabled: its ratio no longer matters
    assert "clean" in specs
    assert "clean,prune(round_to=8,ratio=0.5),quant(exclude=[Gemm],mode=static)" in specs
    # a list-typed option's list is its value, not a choice
    assert all("exclude=[Gemm]" in x for x in specs if "quant" in x)


def test_space_toml(tmp_path):
    f = tmp_path / "space.toml"
    f.write_text('[[pass]]\nname = "clean"\n[[pass]]\nname = "quant"\nmode = ["none", "dynamic"]\n'
                 'exclude = [["Conv"], []]\n')
    s = parse_space(str(f))
    assert sorted(s.all_specs()) == sorted(
        ["clean", "clean", "clean,quant(mode=dynamic,exclude=[Conv])", "clean,quant(mode=dynamic,exclude=[])"])
    g = tmp_path / "spec.toml"
    g.write_text('space = "fuse,prune(ratio=[0.1,0.2])"\n')
    assert parse_space(str(g)).all_specs() == ["fuse,prune(ratio=0.1)", "fuse,prune(ratio=0.2)"]


@pytest.mark.parametrize("space, message", [
    ("clean,fuse", "has no choices"),
    ("prune(ratioo=[0.1,0.2])", "has no option 'ratioo'"),
    ("quant(mode=[static,fast])", "expected one of"),
    ("prune(enabled=[yes,maybe])", "enabled takes true/false"),
    ("nosuchpass(x=[1,2])", "unknown pass"),
    ("fuse(x=[1,2])", "takes no options"),
])
def test_space_errors(space, message):
    with pytest.raises(GraphoptError, match=message.replace("(", r"\(")):
        parse_space(space)


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", str(DIGITS), "--samples", str(CALIB), "--space", "clean", "-o", str(out)]) == 2
    assert "has no choices" in capsys.readouterr().err
    assert main(["batch", str(DIGITS), "-p", "clean,nosuch", "-o", str(out)]) == 2
    assert main(["search", str(DIGITS), "--samples", str(CALIB), "--space", "quant(mode=[none,static])",
                 "--metric", "nosuchmodule_xyz:f", "-o", str(out)]) == 2
    assert "cannot import nosuchmodule_xyz" in capsys.readouterr().err
    assert main(["search", str(DIGITS), "--samples", str(CALIB), "--space", "quant(mode=[none,static])",
                 "--storage", "nosuchdb://nowhere/x", "-o", str(out)]) == 2
    assert "--storage nosuchdb://nowhere/x" in capsys.readouterr().err
    assert not out.exists()


def test_layering_core_never_imports_distributed():
    """graphopt.distributed sits on top of the driver like the CLI: nothing below imports it,
    and importing graphopt (or its CLI) does not import Ray or Optuna."""
    import ast
    import subprocess
    import sys

    pkg = ROOT / "graphopt"
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(pkg).parts
        if rel[0] in ("distributed", "cli"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("distributed" in n for n in names), f"{f} imports graphopt.distributed"
    code = ("import sys, graphopt, graphopt.cli; graphopt.cli.build_parser('search'); "
            "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ batch


def test_batch_shipped_models_and_a_corrupt_file(tmp_path, local_ray, capsys):
    models = sorted(MODELS.glob("*.onnx"))
    assert len(models) >= 2
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf model")
    before = {m: m.read_bytes() for m in models}
    out = tmp_path / "out"
    args = ["batch", *map(str, models), str(corrupt), "-p", "clean,fuse", "-o", str(out), "--json"]
    assert main(args) == 1  # one model failed
    res = json.loads(capsys.readouterr().out)
    by_input = {m["input"]: m for m in res["models"]}
    assert res["ok"] == len(models) and res["failed"] == 1
    for m in models:
        e = by_input[str(m)]
        assert e["status"] == "ok", e
        opt = onnx.load(e["output"])
        onnx.checker.check_model(opt)
        assert e["nodes_after"] <= e["nodes_before"]
        assert m.read_bytes() == before[m]  # inputs untouched
    bad = by_input[str(corrupt)]
    assert bad["status"] == "failed" and "not a valid ONNX model" in bad["reason"]
    assert "\n" not in bad["reason"]
    assert (out / "batch.csv").read_text().count("\n") == len(models) + 2
    mtimes = {m: os.path.getmtime(by_input[str(m)]["output"]) for m in models}

    # rerun: finished models are skipped, the failed one is tried again
    assert main(args) == 1
    res2 = json.loads(capsys.readouterr().out)
    assert res2["skipped"] == len(models) and res2["failed"] == 1 and res2["ok"] == 0
    assert {m: os.path.getmtime(by_input[str(m)]["output"]) for m in models} == mtimes
    assert main(args[:-1]) == 1  # the table
    text = capsys.readouterr().out
    assert "corrupt.onnx" in text and f"{len(models)} skipped" in text and "1 failed" in text


# ------------------------------------------------------------------ search


def _check_measurements_serialized(trials: list[dict]) -> None:
    """No trial was timed while another trial built or was timed on the same node."""
    done = [t for t in trials if t["state"] == "complete"]
    assert done
    for t in done:
        for u in trials:
            if u["number"] == t["number"] or "build_t0" not in u:
                continue
            if u.get("build_node_id") == t["measure_node_id"]:
                assert not _overlaps(t["measure_t0"], t["measure_t1"], u["build_t0"], u["build_t1"]), (t, u)
            if u.get("measure_node_id") == t["measure_node_id"]:
                assert not _overlaps(t["measure_t0"], t["measure_t1"], u["measure_t0"], u["measure_t1"])


@pytest.mark.slow
def test_search_digits_finds_a_faster_model_within_one_point(tmp_path, local_ray, capsys):
    out = tmp_path / "search"
    space = "clean,fuse,prune(enabled=[false,true],ratio=0.3),quant(mode=[none,static,dynamic],measure=false)"
    rc = main(["search", str(DIGITS), "--samples", str(CALIB), "--space", space, "--trials", "6",
               "--metric", f"{METRICS}:top1", "-o", str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    trials = res["trials"]
    assert len(trials) == 6 and all(t["state"] == "complete" for t in trials)
    assert len({t["spec"] for t in trials}) == 6  # the grid, each point once
    base = res["input"]["accuracy"]
    assert base == pytest.approx(291 / 297)
    pareto = [t for t in trials if t["number"] in res["pareto"]]
    winners = [t for t in pareto if t["speedup"] >= 1.2 and t["accuracy"] >= base - 0.01]
    assert winners, [(t["spec"], t["speedup"], t["accuracy"]) for t in pareto]
    # the best models are written and are what their trials say
    for name, best in res["best"].items():
        assert Path(best["path"]).exists()
    acc_best = res["best"]["accuracy"]
    assert acc_best["value"] == max(t["accuracy"] for t in trials)
    from _distributed_metrics import top1

    assert top1(acc_best["path"]) == acc_best["value"]
    html = (out / "report.html").read_text()
    assert "<svg" in html and all(t["spec"].replace("=", "") in html.replace("=", "") for t in trials)
    assert all(t["measured_on"] and t["node_type"] for t in trials)
    _check_measurements_serialized(trials)


SMALL_SPACE = "clean,prune(ratio=[0.1,0.2,0.3,0.4])"


def _small_search(out, trials=4, **kw):
    return run_search(str(DIGITS), load_samples(CALIB), SMALL_SPACE,
                      str(out), trials=trials, rounds=2, runs_per_block=3, **kw)


class Stop(Exception):
    pass


def test_interrupted_search_resumes_without_redoing_finished_trials(tmp_path, local_ray, capsys):
    out = tmp_path / "s"
    seen = []

    def stop_after_first(event):
        seen.append(event)
        if event["state"] == "complete":
            raise Stop

    with pytest.raises(Stop):
        _small_search(out, on_trial=stop_after_first)
    db = out / "search.db"
    with sqlite3.connect(db) as c:
        states = [r[0] for r in c.execute("select state from trials order by number")]
    assert states.count("COMPLETE") == 1 and "RUNNING" in states  # the others were in flight
    first = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{db}")[0],
                              storage=f"sqlite:///{db}")
    done_before = {t.number: (t.values, t.user_attrs["result"]["build_t0"]) for t in first.get_trials()
                   if t.state.name == "COMPLETE"}

    res = _small_search(out)
    complete = [t for t in res.trials if t["state"] == "complete"]
    assert len(complete) == 4
    assert sorted(t["spec"] for t in complete) == sorted(
        f"clean,prune(ratio={r})" for r in (0.1, 0.2, 0.3, 0.4))
    for n, (values, t0) in done_before.items():  # finished trials were not run again
        row = next(t for t in res.trials if t["number"] == n)
        assert row["build_t0"] == t0
        assert [row["latency_ratio"], row["size_bytes"], row["accuracy"]] == values
    interrupted = [t for t in res.trials if t["state"] == "fail"]
    assert interrupted and all(t["reason"].startswith("interrupted") for t in interrupted)
    assert res.ran == 4 - 1
    # a third run (from the command line) has nothing to do, and shows the Pareto front
    assert main(["search", str(DIGITS), "--samples", str(CALIB), "--space", SMALL_SPACE, "--trials", "4",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "4 complete" in text and "0 run now" in text


@pytest.mark.parametrize("metric, reason", [
    ("raise_if_pruned", "ValueError: this metric refuses pruned models"),
    ("exit_if_pruned", "worker"),  # the worker process died (Ray's message names it)
    ("sleep_if_pruned", "timed out after 40 s"),
])
def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, local_ray, metric, reason):
    res = run_search(str(DIGITS), load_samples(CALIB), "clean,fuse,prune(enabled=[false,true],ratio=0.5)",
                     str(tmp_path / "s"), trials=2, metric=f"{METRICS}:{metric}", rounds=2,
                     runs_per_block=3, trial_timeout=40, max_retries=0)
    # 40 s: the good trial must finish inside it on a busy 2-core machine (8 s did not)
    by_spec = {t["spec"]: t for t in res.trials}
    assert by_spec["clean,fuse"]["state"] == "complete"
    bad = by_spec["clean,fuse,prune(ratio=0.5)"]
    assert bad["state"] == "fail" and reason in bad["reason"] and "\n" not in bad["reason"]
    assert res.pareto == [by_spec["clean,fuse"]["number"]]


def test_a_trial_that_breaks_its_error_budget_is_recorded(tmp_path, local_ray):
    res = run_search(str(DIGITS), load_samples(CALIB),
                     "clean,fuse,prune(enabled=[false,true],ratio=0.7,min_cosine=0.99999)",
                     str(tmp_path / "s"), trials=2, rounds=2, runs_per_block=3)
    by_spec = {t["spec"]: t for t in res.trials}
    assert by_spec["clean,fuse"]["state"] == "complete"
    bad = by_spec["clean,fuse,prune(ratio=0.7,min_cosine=0.99999)"]
    assert bad["state"] == "fail" and "prune" in bad["reason"] and "cosine" in bad["reason"], bad
    assert not (tmp_path / "s" / "trials" / f"trial-{bad['number']:04d}.onnx").exists()


# ------------------------------------------------------------------ a node dies (runs last)


@pytest.mark.slow
def test_a_node_killed_during_a_search_loses_no_trial(tmp_path, local_ray, monkeypatch):
    """Two worker nodes; the node running a trial is killed mid-trial (the trial's metric
    holds it there); Ray runs that trial again on the other node and every trial ends."""
    import threading
    import time

    from ray.cluster_utils import Cluster

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("GRAPHOPT_TEST_MARKERS", str(markers))  # inherited by the nodes' workers
    ray.shutdown()  # this test needs a cluster of its own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    killed: dict = {}
    try:
        workers = [cluster.add_node(num_cpus=1, resources={MEASURE_RESOURCE: 1}) for _ in range(2)]
        cluster.wait_for_nodes()

        def killer():
            deadline = time.time() + 120
            while not (markers / "running").exists():
                if time.time() > deadline:
                    return
                time.sleep(0.1)
            node_id = (markers / "running").read_text()
            victim = next(w for w in workers if w.node_id == node_id)
            killed.update(id=node_id, at=time.time())
            cluster.remove_node(victim, allow_graceful=False)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        res = run_search(str(DIGITS), load_samples(CALIB),
                         "clean,prune(ratio=[0.2,0.3,0.4,0.5,0.6,0.7])", str(tmp_path / "s"),
                         trials=6, rounds=2, runs_per_block=3, metric=f"{METRICS}:hold_one_trial",
                         ray_address=cluster.address)  # joins the cluster, as --ray-address does
        assert not ray.is_initialized()  # and leaves it again
        thread.join(timeout=5)
        assert killed, "no trial reached the node to kill"
        trials = res.trials
        assert sorted(t["number"] for t in trials) == list(range(6))  # every trial accounted for
        assert all(t["state"] in ("complete", "fail") for t in trials)
        assert all(t["reason"] for t in trials if t["state"] == "fail")
        assert sum(t["state"] == "complete" for t in trials) == 6, [(t["spec"], t["reason"]) for t in trials]
        # the trial that was running on the killed node was run again on the other one
        retried = [t for t in trials if t["submitted"] < killed["at"] < t["build_t0"]]
        assert retried and all(t["build_node_id"] != killed["id"] for t in retried)
        assert all(t["measure_node_id"] != killed["id"] for t in trials if t["measure_t0"] > killed["at"])
        _check_measurements_serialized(trials)
    finally:
        ray.shutdown()
        cluster.shutdown()
