"""What every runtime's hand-off shares: static shapes, the verification against
onnxruntime, the reproducer, and interleaved latency.

A runtime module provides a `Target`: `convert(onnx_path, out_dir, job) -> Path` runs
the runtime's own converter, `runner(path, ...) -> TargetRunner` loads the converted
model in the runtime. The verification reuses graphopt.verify.compare: the reference
is the ONNX model in onnxruntime, the "second model" is a TargetRunner, duck-typed like
graphopt.verify.Runner, so the same inputs are drawn, the same contracts judge, and a
failure is shrunk the same way.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import GraphoptError, VerificationError
from ..verify.compare import CompareResult, compare
from ..verify.contracts import Contract
from ..verify.inputs import graph_inputs
from ..verify.runner import InvalidInput, _digest

log = logging.getLogger(__name__)


class ConversionError(GraphoptError):
    """The runtime's converter cannot convert the model (exit 2)."""


class BrokenConversion(VerificationError):
    """The converted model computes something else than the ONNX model (exit 1)."""


@dataclass
class ExportResult:
    runtime: str
    output: Path | None
    files: list[Path]
    verification: CompareResult | None
    spec: str
    precision: str                   # "fp32", "int8", "fp16"
    layout: str = ""                 # e.g. "inputs NCHW -> NHWC (transposed by graphopt)"
    notes: list[str] = field(default_factory=list)
    repro: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    model: onnx.ModelProto | None = field(default=None, repr=False)   # the ONNX model that was converted

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "runtime": self.runtime, "output": str(self.output) if self.output else None,
            "files": [str(f) for f in self.files], "spec": self.spec, "precision": self.precision,
            "layout": self.layout, "notes": list(self.notes), "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        if self.verification is not None:
            d["verification"] = self.verification.as_dict()
        if self.repro:
            d["repro"] = self.repro
        return d


class TargetRunner:
    """Runs a converted model in its runtime, with graphopt.verify.Runner's interface
    (run(feeds, cache), backend, note, runs), so verify.compare can take it as the
    second model. Subclasses implement _execute(feeds) -> list of outputs in the ONNX
    model's output order and layout."""

    backend = "target"

    def __init__(self) -> None:
        self.note = ""
        self.runs = 0
        self._cache: dict[tuple, list[np.ndarray]] = {}

    def run(self, feeds: dict[str, np.ndarray], cache: bool = True) -> list[np.ndarray]:
        key = _digest(feeds) if cache else None
        if key is not None and key in self._cache:
            return self._cache[key]
        self.runs += 1
        try:
            outs = [np.asarray(o) for o in self._execute(feeds)]
        except InvalidInput:
            raise
        except Exception as e:  # noqa: BLE001 - runtimes raise their own types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidInput(f"{self.backend}: {first[:300]}") from e
        if key is not None:
            self._cache[key] = outs
        return outs

    def _execute(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def timed_call(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call running the model once on `feeds` (prepared ahead), for timing."""
        return lambda: self._execute(feeds)


# ------------------------------------------------------------------ shapes and samples


def resolve_shapes(model: onnx.ModelProto, given: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
    """Static shapes for every graph input: the user's (--input-shape), else the model's
    fixed dims with a symbolic leading (batch) dim bound to 1. Converters for edge
    runtimes want static shapes; a symbolic dim elsewhere needs --input-shape."""
    out: dict[str, tuple[int, ...]] = {}
    names = {s.name for s in graph_inputs(model)}
    for name in given:
        if name not in names:
            raise GraphoptError(f"--input-shape names '{name}', which is not an input "
                                f"(inputs: {', '.join(sorted(names)) or 'none'})")
    for s in graph_inputs(model):
        if s.name in given:
            out[s.name] = tuple(int(d) for d in given[s.name])
            continue
        dims = []
        for axis, d in enumerate(s.dims):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif axis == 0:
                dims.append(1)
            else:
                shown = "x".join(str(x) if isinstance(x, int) and x > 0 else "?" for x in s.dims)
                raise GraphoptError(f"input '{s.name}' has shape {shown} with a symbolic dim at axis {axis}: "
                                    f"give a static shape, e.g. --input-shape {s.name}=" +
                                    "x".join(str(x) if isinstance(x, int) and x > 0 else "1" for x in s.dims))
        out[s.name] = tuple(dims)
    return out


def fit_samples(samples: list[dict] | None, shapes: dict[str, tuple[int, ...]]) -> list[dict]:
    """Real samples cut to the export's static shapes: a sample whose leading dim is a
    multiple of the static batch becomes that many samples (digits_calib.npz holds 64
    digits in one array; the export binds batch 1). Samples that fit neither way are
    dropped with a logged line."""
    out: list[dict] = []
    for sample in samples or []:
        arrays = {k: np.asarray(v) for k, v in sample.items() if k in shapes}
        if set(arrays) != set(shapes):
            log.warning("a sample lacks some inputs (%s); not used", ", ".join(sorted(set(shapes) - set(arrays))))
            continue
        if all(a.shape == shapes[k] for k, a in arrays.items()):
            out.append(arrays)
            continue
        counts = set()
        for k, a in arrays.items():
            want = shapes[k]
            if a.ndim != len(want) or not want or a.shape[1:] != want[1:] or a.shape[0] % want[0]:
                counts = set()
                break
            counts.add(a.shape[0] // want[0])
        if len(counts) != 1:
            log.warning("a sample does not fit the export's static shapes %s; not used", shapes)
            continue
        n = counts.pop()
        for i in range(n):
            out.append({k: a[i * shapes[k][0]:(i + 1) * shapes[k][0]] for k, a in arrays.items()})
    return out


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                             "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear") for n in model.graph.node)


# ------------------------------------------------------------------ verification


def verify_runner(
    reference: onnx.ModelProto, runner: TargetRunner, contract: Contract, *,
    shapes: dict[str, tuple[int, ...]], samples: list[dict] | None, examples: int, seed: int,
    input_ranges: dict | None = None, shrink_seconds: float = 0.0,
) -> CompareResult:
    """compare() the ONNX `reference` (onnxruntime) with the converted model run by
    `runner`, on the verifier's inputs at the export's static shapes."""
    # The contract is given explicitly (a Contract), so compare() keeps its rtol for the
    # other runtime's kernels; the result names both backends ("onnxruntime vs openvino").
    return compare(reference, reference, contract, examples=examples, seed=seed, input_shapes=shapes,
                   input_ranges=input_ranges, samples=samples, runner_b=runner, threads=2,
                   shrink_seconds=shrink_seconds)


def save_target_repro(directory: str | os.PathLike, reference: onnx.ModelProto, converted: list[Path],
                      result: CompareResult | None, *, runtime: str, title: str, error: str = "") -> Path:
    """A reproducer folder: model.onnx (the reference), the converted file(s), inputs.npz
    (the failing input) and README.txt with the command that re-checks it."""
    from .. import io

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    io.save(reference, d / "model.onnx")
    main = None
    for f in converted:
        if f.exists():
            shutil.copy2(f, d / f.name)
            main = main or d / f.name
    lines = [title, ""]
    if error:
        lines += [error, ""]
    if result is not None:
        lines += [result.message(f"{runtime} disagrees with onnxruntime"), ""]
        if result.counterexample is not None:
            np.savez(d / "inputs.npz", **result.counterexample)
    if main is not None:
        c = result.contract if result is not None else None
        extra = ""
        if c is not None and c.kind == "lossy":
            extra = " --contract lossy " + " ".join(f"--budget {m}={v:g}" for m, v in c.budget.items())
        elif c is not None:
            extra = f" --rtol {c.rtol:g} --atol {c.atol:g}"
        samples = f" --samples {shlex.quote(str(d / 'inputs.npz'))}" if (d / "inputs.npz").exists() else ""
        lines += ["Re-check with:",
                  f"    graphopt verify {shlex.quote(str(d / 'model.onnx'))} {shlex.quote(str(main))}{samples}{extra}", ""]
    (d / "README.txt").write_text("\n".join(lines))
    if result is not None:
        result.repro = str(d)
    return d


# ------------------------------------------------------------------ latency


@dataclass
class Timing:
    name: str
    median: float
    samples: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "median_ms": round(self.median * 1e3, 4), "runs": len(self.samples)}


def time_interleaved(calls: dict[str, Callable[[], Any]], *, runs: int = 20, warmup: int = 3,
                     repeat: int = 1) -> dict[str, Timing]:
    """Median seconds per call of each callable, timed interleaved (one run of each in
    turn, rotating the order), so drift on a busy machine hits all of them alike."""
    names = list(calls)
    for _ in range(warmup):
        for n in names:
            calls[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(repeat):
                calls[n]()
            times[n].append((time.perf_counter() - t0) / repeat)
    return {n: Timing(n, statistics.median(t), t) for n, t in times.items()}


def ort_timed_call(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], threads: int = 2) -> Callable[[], Any]:
    """onnxruntime with all graph optimizations, `threads` intra-op threads and spinning
    off (a spinning pool would steal the other runtime's cores in interleaved timing)."""
    from ..analysis.latency import make_session

    sess = make_session(model, threads)
    return lambda: sess.run(None, feeds)
