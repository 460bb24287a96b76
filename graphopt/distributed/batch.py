"""`graphopt batch`: many models through one pipeline, one Ray task per model.

Results go to OUTDIR/batch.json (and batch.csv), rewritten after every model, so an
interrupted or repeated run resumes: a model whose entry says ok, with the same spec, the
same input (size and modification time) and its output still present, is skipped. Failed
models are tried again.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from ..errors import GraphoptError
from . import cluster, tasks

log = logging.getLogger(__name__)

RESULTS = "batch.json"
CSV_FIELDS = ("input", "output", "status", "reason", "nodes_before", "nodes_after", "size",
              "seconds", "host", "node_id")


@dataclass
class BatchResult:
    outdir: str
    spec: str
    models: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [m for m in self.models if m["status"] == "failed"]

    def as_dict(self) -> dict:
        counts = {s: sum(1 for m in self.models if m["status"] == s) for s in ("ok", "skipped", "failed")}
        return {"command": "batch", "spec": self.spec, "outdir": self.outdir,
                "results": os.path.join(self.outdir, RESULTS), **counts, "models": self.models}


def _fingerprint(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _output_names(models: list[str], previous: dict[str, dict], outdir: str) -> dict[str, str]:
    """input -> output path: `<stem>.opt.onnx`, `-2`, `-3` ... for repeated stems; a model seen
    by an earlier run keeps its output."""
    taken = {os.path.basename(e["output"]) for e in previous.values() if e.get("output")}
    out = {}
    for m in models:
        if m in previous and previous[m].get("output"):
            out[m] = previous[m]["output"]
            continue
        stem = os.path.splitext(os.path.basename(m))[0] or "model"
        name, k = f"{stem}.opt.onnx", 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}.opt.onnx"
        taken.add(name)
        out[m] = os.path.join(outdir, name)
    return out


def _load_previous(path: str) -> dict[str, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
        return {e["input"]: e for e in data.get("models", []) if "input" in e}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _write_results(result: BatchResult) -> None:
    tmp = os.path.join(result.outdir, f".{RESULTS}.tmp")
    with open(tmp, "w") as f:
        json.dump(result.as_dict(), f, indent=2, default=str)
    os.replace(tmp, os.path.join(result.outdir, RESULTS))
    tmp = os.path.join(result.outdir, ".batch.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(result.models)
    os.replace(tmp, os.path.join(result.outdir, "batch.csv"))


def run_batch(models: list[str], spec: str, outdir: str, *, ctx_fields: dict | None = None,
              verify: bool = True, ray_address: str | None = None, max_retries: int = 2,
              progress: Callable[[str], None] | None = None) -> BatchResult:
    """Optimize every model with `spec` into `outdir`, one Ray task per model."""
    from ..pipeline import build_pipeline

    if not models:
        raise GraphoptError("no models given")
    build_pipeline(spec)  # a bad spec fails before anything is written
    ray = cluster.require_ray()
    models = [os.path.abspath(m) for m in models]
    outdir = os.path.abspath(outdir)
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise GraphoptError(f"{outdir}: output folder is a file")
    ctx_fields = dict(ctx_fields or {})
    os.makedirs(outdir, exist_ok=True)
    previous = _load_previous(os.path.join(outdir, RESULTS))
    outputs = _output_names(models, previous, outdir)
    result = BatchResult(outdir, spec)
    entries: dict[str, dict] = {}
    todo = []
    for m in dict.fromkeys(models):  # a model named twice is optimized once
        prev = previous.get(m)
        if (prev and prev.get("status") in ("ok", "skipped") and prev.get("spec") == spec
                and prev.get("fingerprint") == _fingerprint(m) and os.path.exists(prev.get("output", ""))):
            entries[m] = {**prev, "status": "skipped"}
        else:
            todo.append(m)
    with cluster.connect(ray_address):
        remote = ray.remote(tasks.optimize_one).options(num_cpus=1, max_retries=max_retries)
        refs = {remote.remote(m, outputs[m], spec, ctx_fields, verify): m for m in todo}
        done = 0
        for m in todo:
            entries[m] = {"input": m, "output": outputs[m], "status": "running", "spec": spec}
        result.models = [entries[m] for m in dict.fromkeys(models)]
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            m = refs.pop(ready[0])
            try:
                info = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # worker killed, node died, out of memory
                info = {"input": m, "output": outputs[m], "ok": False, "reason": tasks.one_line(e)}
            info.pop("debug", None)
            status = "ok" if info.get("ok") else "failed"
            entries[m].update(info, status=status, spec=spec, fingerprint=_fingerprint(m))
            entries[m].pop("ok", None)
            if status == "failed":
                log.warning("%s", info.get("reason") if m in str(info.get("reason")) else f"{m}: {info.get('reason')}")
            done += 1
            if progress:
                progress(f"{done}/{len(todo)} models")
            _write_results(result)
    _write_results(result)
    return result
