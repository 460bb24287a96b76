"""What compare() returns (CompareResult) and refuses (SignatureMismatch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..errors import GraphoptError
from .contracts import Contract, OutputCheck
from .inputs import InputSpace, graph_inputs
from .noise import NoiseSource
from .runner import Runner


class SignatureMismatch(GraphoptError):
    """The two models do not take the same inputs or give the same number of outputs."""


@dataclass
class CompareResult:
    ok: bool
    contract: Contract
    examples: int = 0                   # examples compared (samples + drawn)
    samples_used: int = 0
    skipped: bool = False
    reason: str = ""                    # why skipped
    worst: OutputCheck | None = None    # the worst output check (failing one if not ok)
    counterexample: dict[str, np.ndarray] | None = None
    counterexample_text: str = ""
    shrunk: bool = False
    shrink_steps: int = 0
    backend: str = "onnxruntime"
    notes: list[str] = field(default_factory=list)
    repro: str | None = None
    seconds: float = 0.0
    model_runs: int = 0                 # inference runs this check cost (cached ones excluded)
    runs_ahead: int = 0                 # of those, reference runs made before the check started
    noise_runs: int = 0                 # runs of the weight-perturbed model (float noise floors)
    # reusable by the caller (the instrument keeps them for the next check)
    runner_a: Runner | None = field(default=None, repr=False)
    runner_b: Runner | None = field(default=None, repr=False)
    space: InputSpace | None = field(default=None, repr=False)
    noise: NoiseSource | None = field(default=None, repr=False)

    @property
    def summary(self) -> str:
        if self.skipped:
            return f"skipped: {self.reason}"
        w = self.worst
        if self.ok:
            if w is None or w.error == 0 or self.contract.kind == "exact" or (w.measure == "max abs err" and w.tolerance == 0):
                detail = "exact" if w is None or w.error == 0 else f"max err {w.error:.1g}"
            elif w.measure in ("cosine", "top1"):
                detail = f"{w.measure} {w.error:.4g} ≥ {w.tolerance:.4g}"
            else:
                detail = f"{'max err' if w.measure == 'max abs err' else w.measure} {w.error:.1g} ≤ {w.tolerance:.1g}"
            ref = "" if self.backend == "onnxruntime" else f" [{self.backend}]"
            return f"ok {self.examples}/{self.examples}, {detail}{ref}"
        assert w is not None
        return f"FAILED {w.name}: {self.failure_detail()}"

    def failure_detail(self) -> str:
        w = self.worst
        if w is None:
            return "unknown"
        if w.measure in ("shape", "dtype", "nan", "crash", "rejected", "kind"):
            return w.detail
        if w.measure in ("cosine", "top1"):
            return f"{w.measure} {w.error:.4g} < {w.tolerance:.4g}"
        extra = f" ({w.detail})" if w.detail else ""
        return f"{w.measure} {w.error:.3g} > {w.tolerance:.3g}{extra}"

    def message(self, what: str = "the models differ") -> str:
        if self.ok:
            return f"{what}: {self.summary}"
        w = self.worst
        if w is not None and w.measure == "rejected":
            text = f"{what}: {w.detail}"
            return text + (f"; reproducer in {self.repro}" if self.repro else "")
        text = (f"{what}: output '{w.name}' {self.failure_detail()} under the "
                f"{self.contract.describe()} contract, on {self.counterexample_text}")
        if self.repro:
            text += f"; reproducer in {self.repro}"
        return text

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "status": "skipped" if self.skipped else ("ok" if self.ok else "failed"),
            "summary": self.summary, "contract": self.contract.describe(),
            "examples": self.examples, "samples": self.samples_used, "backend": self.backend,
            "seconds": round(self.seconds, 4), "model_runs": self.model_runs,
        }
        if self.runs_ahead:
            d["runs_ahead"] = self.runs_ahead
        if self.noise_runs:
            d["noise_runs"] = self.noise_runs
        if self.worst is not None:
            d.update(worst_output=self.worst.name, measure=self.worst.measure,
                     error=self.worst.error, tolerance=self.worst.tolerance)
        if self.skipped:
            d["reason"] = self.reason
        if not self.ok and not self.skipped:
            d.update(counterexample=self.counterexample_text, shrunk=self.shrunk,
                     shrink_steps=self.shrink_steps)
            if self.counterexample is not None:
                d["counterexample_shapes"] = {k: ([list(np.shape(x)) for x in v] if isinstance(v, (list, tuple))
                                                  else list(np.shape(v))) for k, v in self.counterexample.items()}
        if self.repro:
            d["repro"] = self.repro
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def check_signatures(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    ia = {s.name: s for s in graph_inputs(a)}
    ib = {s.name: s for s in graph_inputs(b)}
    if ia.keys() != ib.keys():
        only_a, only_b = sorted(ia.keys() - ib.keys()), sorted(ib.keys() - ia.keys())
        raise SignatureMismatch(
            "the models take different inputs: "
            + "; ".join(x for x in (f"only the first has {', '.join(only_a)}" if only_a else "",
                                    f"only the second has {', '.join(only_b)}" if only_b else "") if x))
    for name, s in ia.items():
        if s.container != ib[name].container:
            raise SignatureMismatch(f"input '{name}' is a {s.container} in the first model but a "
                                    f"{ib[name].container} in the second")
        if s.elem_type != ib[name].elem_type:
            raise SignatureMismatch(f"input '{name}' is {s.dtype} in the first model but {ib[name].dtype} in the second")
    if len(a.graph.output) != len(b.graph.output):
        raise SignatureMismatch(f"the first model has {len(a.graph.output)} outputs, the second {len(b.graph.output)}")
