"""compare(): are two models numerically equivalent under a contract?

The one code path behind the verification instrument and `graphopt verify`:
real samples first, then inputs drawn from the models' signature with a seeded generator
(under a lossy contract, real samples alone when there are any); on a failure, hypothesis
searches the input space and shrinks to a minimal counterexample (bounded in time).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import onnx

from .. import progress as _progress
from ..errors import GraphoptError
from .contracts import DEFAULT_ATOL, FALLBACK_RTOL, Contract, OutputCheck, check_output, is_float_dtype
from .inputs import Example, InputSpace
from .noise import NOISE_FACTOR, NoiseSource
from .probe import _attempts, make_space, run_ahead
from .repro import save_repro, unique_dir
from .result import CompareResult, SignatureMismatch, check_signatures
from .runner import InvalidInput, Runner, RunnerUnavailable, _digest

log = logging.getLogger(__name__)

# what other modules import from here (result, probe and repro hold the rest of a check)
__all__ = ["CompareResult", "DEFAULT_EXAMPLES", "SHRINK_SECONDS", "SignatureMismatch", "compare", "make_space",
           "run_ahead", "save_repro", "unique_dir"]

DEFAULT_EXAMPLES = 8
SHRINK_SECONDS = 20.0


class _Checker:
    """Runs both models on examples and judges them under the contract. A float output
    past the contract's small tolerance is judged again against the input's float noise
    (graphopt.verify.noise.NoiseSource, shared across checks when the caller gives one):
    it passes only within NOISE_FACTOR times that floor. Without a floor (onnxruntime
    cannot run the perturbed model) it is judged at FALLBACK_RTOL, and a note says so.
    Outputs that are sequences, maps or optionals are compared element by element; a
    value the comparison cannot handle is reported as not compared, never a crash."""

    def __init__(self, ra: Runner, rb: Runner, names: list[str], contract: Contract,
                 noise: NoiseSource | None = None) -> None:
        self.ra, self.rb, self.names, self.contract = ra, rb, names, contract
        self.noise = noise
        self.noise_judged = 0                       # outputs that passed on their noise floor
        self.fixed_judged = 0                       # outputs judged at FALLBACK_RTOL (no floor)
        self.noise_ratio = 0.0                      # the largest error / floor seen
        self.not_compared: dict[str, str] = {}      # output -> why
        self.valid = 0
        self.task: _progress.Task | None = None     # counted progress of the examples
        self.worst: OutputCheck | None = None
        self.top1: dict[str, list] = {}   # output -> [agree, rows, worst example, worst share]
        self._floors: dict[tuple[int, int], list[float] | None] = {}

    def _floor(self, feeds: dict, index: int, k: int) -> float | None:
        """Output `index`'s floor from perturbation k on these feeds (cached per example)."""
        if self.noise is None or not self.noise.available:
            return None
        key = (_digest(feeds), k)
        if key not in self._floors:
            if len(self._floors) > 64:
                self._floors.clear()
            self._floors[key] = self.noise.floors(feeds, k)
        floors = self._floors[key]
        return None if floors is None or index >= len(floors) else floors[index]

    def _against_noise(self, c: OutputCheck, feeds: dict, index: int | None) -> OutputCheck:
        floor = None if index is None else self._floor(feeds, index, 0)
        floors = [floor]
        for k in range(1, NoiseSource.DRAWS):
            # only when the first floor does not clear it: the mean of the floors (one
            # random perturbation can land small; the mean of two is steadier, and less
            # swayed by one large draw than their maximum)
            if floor is None or c.error <= c.tolerance + NOISE_FACTOR * floor:
                break
            more = self._floor(feeds, index, k)
            if more is None:
                break
            floors.append(more)
            floor = max(floors[0], sum(floors) / len(floors))
        if floor is None:
            # no floor: the fixed bound of old, with less power (the summary says so)
            bound = self.contract.atol + max(self.contract.rtol, FALLBACK_RTOL) * c.scale
            if c.error <= bound:
                self.fixed_judged += 1
                return OutputCheck(c.name, True, c.error, bound, c.measure,
                                   f"no float-noise floor: judged at rtol {FALLBACK_RTOL:g}", scale=c.scale)
            return OutputCheck(c.name, False, c.error, bound, c.measure,
                               f"past rtol {FALLBACK_RTOL:g}; no float-noise floor", scale=c.scale)
        bound = c.tolerance + NOISE_FACTOR * floor
        ratio = c.error / floor if floor > 0 else float("inf")
        if c.error <= bound:
            self.noise_judged += 1
            self.noise_ratio = max(self.noise_ratio, ratio)
            return OutputCheck(c.name, True, c.error, bound, c.measure,
                               f"within this input's float noise: one-ulp changes move it by {floor:.2g}",
                               scale=c.scale)
        return OutputCheck(c.name, False, c.error, bound, c.measure,
                           f"{c.error / max(c.scale, 1e-300):.2g} of the output's magnitude, "
                           f"{'%.3g' % ratio if floor > 0 else 'infinitely many'} times this input's "
                           f"float noise ({floor:.2g})", scale=c.scale)

    def _checks(self, name: str, a: Any, b: Any, feeds: dict, index: int | None) -> list[OutputCheck]:
        """The checks of one output value (tensor, sequence, map or optional)."""
        if a is None or b is None:
            if a is None and b is None:
                return []
            which = "first" if a is None else "second"
            return [OutputCheck(name, False, float("inf"), 0.0, "kind",
                                f"an empty optional in the {which} model only")]
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
                return [OutputCheck(name, False, float("inf"), 0.0, "kind", "a sequence in one model only")]
            if len(a) != len(b):
                return [OutputCheck(name, False, float("inf"), 0.0, "shape",
                                    f"a sequence of {len(b)} values != {len(a)}")]
            out: list[OutputCheck] = []
            for k, (x, y) in enumerate(zip(a, b)):
                out.extend(self._checks(f"{name}[{k}]", x, y, feeds, None))
            return out
        if isinstance(a, dict) or isinstance(b, dict):
            if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
                return [OutputCheck(name, False, float("inf"), 0.0, "kind", "maps with different keys")]
            out = []
            for k in sorted(a, key=repr):
                out.extend(self._checks(f"{name}[{k!r}]", a[k], b[k], feeds, None))
            return out
        a, b = np.asarray(a), np.asarray(b)
        c = check_output(name, a, b, self.contract)
        if not c.ok and c.measure == "max abs err" and self.contract.kind == "float" and is_float_dtype(a.dtype):
            c = self._against_noise(c, feeds, index)
        return [c]

    def judge(self, ex: Example) -> OutputCheck | None:
        """None if the reference model rejects the input; else the worst output check."""
        feeds = ex.feeds
        try:
            outs_a = self.ra.run(feeds)
        except InvalidInput:
            return None
        self.valid += 1
        if self.task is not None:
            self.task.advance()
        try:
            outs_b = self.rb.run(feeds)
        except InvalidInput as e:
            return OutputCheck(self.names[0], False, float("inf"), 0.0, "crash",
                               f"the second model fails where the first runs: {e}")
        worst = None
        for i, (name, a, b) in enumerate(zip(self.names, outs_a, outs_b)):
            try:
                checks = self._checks(name, a, b, feeds, i)
            except Exception as e:  # noqa: BLE001 - a value type the comparison cannot handle
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                if name not in self.not_compared:
                    log.warning("output '%s' not compared: %s", name, reason)
                self.not_compared[name] = reason
                continue
            for c in checks:
                if c.top1 is not None:
                    acc = self.top1.setdefault(c.name, [0, 0, None, 2.0])
                    acc[0] += c.top1[0]
                    acc[1] += c.top1[1]
                    share = c.top1[0] / max(c.top1[1], 1)
                    if share < acc[3]:
                        acc[2], acc[3] = ex, share
                if worst is None or (not c.ok and worst.ok) or (c.ok == worst.ok and c.margin > worst.margin):
                    worst = c
        if worst is None:
            worst = OutputCheck(self.names[0] if self.names else "(none)", True, 0.0, 0.0, "max abs err")
        if self.worst is None or (not worst.ok and self.worst.ok) \
                or (worst.ok == self.worst.ok and worst.margin > self.worst.margin):
            self.worst = worst
        return worst


def compare(
    model_a: onnx.ModelProto,
    model_b: onnx.ModelProto,
    contract: str | Contract = "float",
    *,
    budget: dict[str, float] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    input_shapes: dict | None = None,
    input_ranges: dict | None = None,
    samples: list[dict] | None = None,
    shrink_seconds: float = SHRINK_SECONDS,
    runner_a: Runner | None = None,
    runner_b: Runner | None = None,
    space: InputSpace | None = None,
    threads: int = 1,
    noise: NoiseSource | None = None,
    label: str = "verifying",
) -> CompareResult:
    """Check that `model_b` computes what `model_a` computes, under `contract`.

    Samples (real inputs, {name: array}) are compared first, then inputs drawn from the
    models' signature (InputSpace.draw, seeded) fill up to `examples` -- except under a
    lossy contract, which is judged on the real samples alone when there are any. A
    failing drawn input is shrunk by hypothesis to a minimal counterexample (smaller
    dims, simpler values) for at most `shrink_seconds`. Raises SignatureMismatch (a
    GraphoptError) if the models take different inputs.

    The float contract is noise-calibrated (contracts.py): `noise` is the NoiseSource
    to judge against (the instrument shares one across a pipeline's checks); by
    default one is made from `model_a` and its runner, used only when an output is past
    the contract's small tolerance. If onnxruntime runs `model_a` but rejects
    `model_b`, the models are not equivalent (measure "rejected"), whatever onnx's
    reference evaluator would say.
    """
    t0 = time.perf_counter()
    chosen_rtol = isinstance(contract, Contract) or rtol is not None
    if not isinstance(contract, Contract):
        kw: dict[str, Any] = {"budget": dict(budget or {})}
        if rtol is not None:
            kw["rtol"] = rtol
        if atol is not None:
            kw["atol"] = atol
        contract = Contract(contract, **kw)
    check_signatures(model_a, model_b)
    result = CompareResult(ok=True, contract=contract)
    try:
        ra = runner_a or Runner(model_a, threads=threads)
    except RunnerUnavailable as e:
        log.warning("verification skipped: %s", e)
        return _done(CompareResult(ok=True, contract=contract, skipped=True, reason=str(e)), t0)
    try:
        rb = runner_b or Runner(model_b, threads=threads)
    except RunnerUnavailable as e:
        if ra.backend == "onnxruntime":
            return _rejected(result, ra, str(e), t0)
        log.warning("verification skipped: %s", e)
        return _done(CompareResult(ok=True, contract=contract, skipped=True, reason=str(e)), t0)
    if ra.backend == "onnxruntime" and rb.backend == "onnx-reference":
        # never judged by the fallback: a model that stopped loading is broken (a runner
        # given by the caller for another runtime, TVM or OpenVINO say, is judged as usual)
        return _rejected(result, ra, rb.note, t0)
    result.backend = ra.backend if ra.backend == rb.backend else f"{ra.backend} vs {rb.backend}"
    result.notes = list(dict.fromkeys(n for n in (ra.note, rb.note) if n))   # once when both say it
    if rb.backend not in ("onnxruntime", "onnx-reference") and contract.kind == "float" and not chosen_rtol:
        # Another runtime's kernels (TVM, a caller's runner): the noise calibration is for
        # rewrites judged on one runtime; across runtimes the fixed rtol of old is the bound
        # (plus the noise relief), unless the caller chose an rtol.
        contract = Contract("float", rtol=FALLBACK_RTOL, atol=max(contract.atol, DEFAULT_ATOL))
        result.contract = contract
        result.notes.append(f"{rb.backend} vs {ra.backend}: float contract at rtol {FALLBACK_RTOL:g} "
                            "(different kernels; the few-ulp bound is for rewrites on one runtime)")
    result._runs0 = ra.runs + (rb.runs if rb is not ra else 0)  # type: ignore[attr-defined]
    if space is None:
        space = make_space(model_a, ra, input_shapes, input_ranges)
    result.runner_a, result.runner_b, result.space = ra, rb, space
    if not space.deterministic:
        result.skipped = True
        result.reason = "the first model gives different outputs on the same input (random ops?)"
        log.warning("verification skipped: %s", result.reason)
        return _done(result, t0)
    names = [o.name for o in model_a.graph.output]
    if noise is None and contract.kind == "float":
        noise = NoiseSource(model_a, ra, threads=threads)
    checker = _Checker(ra, rb, names, contract, noise=noise)
    # counted progress (graphopt.progress): the examples judged so far, closed in _done
    total = examples
    if contract.kind == "lossy" and samples:
        total = min(examples, len(samples))
    checker.task = result._task = _progress.task(label, total)  # type: ignore[attr-defined]
    result.noise = noise
    result._noise0 = noise.runs if noise is not None else 0  # type: ignore[attr-defined]

    # 1. real samples first
    for sample in (samples or [])[:examples]:
        ex = space.from_sample(sample)
        c = checker.judge(ex)
        if c is None:
            raise GraphoptError(f"the first model rejects a real sample ({ex.describe()}); check --samples")
        result.samples_used += 1
        if not c.ok:
            return _fail(result, checker, c, ex, t0)

    # 2. drawn examples fill up to `examples` -- except under a lossy contract with real
    # samples: an error budget (INT8, pruning) is about the data the model will see, and
    # random inputs far from it fail such passes spuriously.
    todo = examples - result.samples_used
    if contract.kind == "lossy" and result.samples_used:
        todo = 0
        result.notes.append(f"lossy budget judged on the {result.samples_used} real sample(s) only")
    if todo > 0 and space.probed_ok:
        found = _draw_and_check(space, checker, todo, seed, shrink_seconds)
        if found is not None:
            ex, c, steps = found
            result.shrunk, result.shrink_steps = steps > 0, steps
            return _fail(result, checker, c, ex, t0)
    elif todo > 0 and not result.samples_used:
        result.skipped = True
        if getattr(space, "too_big", False):
            result.reason = space.probe_error
        else:
            result.reason = (f"found no input the model accepts ({space.probe_error or 'no reason given'}); "
                             "give --input-shape or --samples")
        return _done(result, t0)

    # 3. pooled top-1 agreement
    bound = contract.budget.get("top1") if contract.kind == "lossy" else None
    if bound is not None:
        for name, (agree, rows, worst_ex, _) in checker.top1.items():
            share = agree / max(rows, 1)
            c = OutputCheck(name, share >= bound, share, bound, "top1")
            if not c.ok:
                return _fail(result, checker, c, worst_ex, t0)
            if checker.worst is None or checker.worst.measure != "top1" and c.margin > checker.worst.margin:
                checker.worst = c
    result.examples = checker.valid
    result.worst = checker.worst
    if checker.noise_judged:
        result.notes.append(f"{checker.noise_judged} output(s) past the float tolerance passed within their "
                            f"input's float noise (at most {checker.noise_ratio:.2g}x the error of one-ulp "
                            f"weight and input changes; the bound is {NOISE_FACTOR:g}x)")
    if checker.fixed_judged:
        why = noise.why_not if noise is not None and noise.why_not else "none measured"
        result.notes.append(f"{checker.fixed_judged} output(s) judged at the fixed rtol {FALLBACK_RTOL:g} without "
                            f"a float-noise floor ({why}): smaller changes were not checked")
    for name, why in checker.not_compared.items():
        result.notes.append(f"output '{name}' NOT compared ({why})")
    if checker.valid == 0:
        result.skipped = True
        result.reason = f"no drawn input was accepted by the model ({space.probe_error})"
        return _done(result, t0)
    return _done(result, t0)


def _done(result: CompareResult, t0: float) -> CompareResult:
    result.seconds = time.perf_counter() - t0
    task = getattr(result, "_task", None)
    if task is not None:
        task.close()
    if result.noise is not None:
        result.noise_runs = result.noise.runs - getattr(result, "_noise0", 0)
    if result.runner_a is not None and result.runner_b is not None:
        runs = result.runner_a.runs + (result.runner_b.runs if result.runner_b is not result.runner_a else 0)
        result.model_runs = runs - getattr(result, "_runs0", 0)
    return result


def _rejected(result: CompareResult, ra: Runner, why: str, t0: float) -> CompareResult:
    """onnxruntime runs the first model and rejects the second: not equivalent."""
    why = why.removeprefix("onnxruntime cannot run this model ").strip()
    result.ok = False
    result.runner_a = ra
    result.worst = OutputCheck("(model)", False, float("inf"), 0.0, "rejected",
                               f"onnxruntime rejects the second model but runs the first: {why}")
    result.counterexample_text = "no input (the model does not load)"
    log.debug("%s", result.worst.detail)
    return _done(result, t0)


def _fail(result: CompareResult, checker: _Checker, c: OutputCheck, ex: Example, t0: float) -> CompareResult:
    result.ok = False
    result.worst = c
    result.examples = checker.valid
    result.counterexample = dict(ex.feeds)
    result.counterexample_text = ex.describe()
    return _done(result, t0)


def _draw_and_check(space: InputSpace, checker: _Checker, n: int, seed: int, shrink_seconds: float):
    """Judge `n` valid directly drawn examples (inputs the reference model rejects do not
    count, at most 3n are tried). On the first failure, shrink it: hypothesis searches
    and shrinks the recipe space (bounded by `shrink_seconds`); if its search finds no
    failure, the drawn failing example is reported as it is.
    Returns (failing example, its check, shrink steps) or None."""
    start = checker.valid
    attempts = _attempts(space, n, seed)
    for ex in attempts:
        if checker.valid - start >= n:
            break
        c = checker.judge(ex)
        if c is None or c.ok:
            continue
        if shrink_seconds > 0:
            found = _search(space, checker, max(2 * n, 16), seed, shrink_seconds)
            if found is not None:
                return found
        return ex, c, 0
    return None


def _search(space: InputSpace, checker: _Checker, n: int, seed: int, shrink_seconds: float):
    """Draw up to n inputs; return (minimal failing example, its check, shrink steps) or None."""
    from hypothesis import HealthCheck, Phase, find, reject, settings
    from hypothesis.errors import NoSuchExample, Unsatisfiable

    state: dict[str, Any] = {"last": None, "check": None, "deadline": None, "steps": -1,
                             "search_until": time.perf_counter() + shrink_seconds}

    def fails(ex: Example) -> bool:
        if state["deadline"] is None and time.perf_counter() > state["search_until"]:
            return False  # out of search time before any failure: let hypothesis finish
        if state["deadline"] is not None and time.perf_counter() > state["deadline"]:
            # Out of shrinking time: only the current minimal example still "fails",
            # so hypothesis stops improving and replays it.
            return ex.same_as(state["last"])
        c = checker.judge(ex)
        if c is None:
            reject()
        if c.ok:
            return False
        if state["deadline"] is None:
            state["deadline"] = time.perf_counter() + shrink_seconds
        state["last"], state["check"] = ex, c
        state["steps"] += 1
        return True

    conf = settings(max_examples=n, database=None, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
                    report_multiple_bugs=False, print_blob=False)
    from hypothesis.errors import HypothesisException

    try:
        ex = find(space.strategy(), fails, settings=conf, random=random.Random(seed))
    except (NoSuchExample, Unsatisfiable):
        return None
    except HypothesisException as e:  # e.g. a failure that did not reproduce
        if state["last"] is None:
            raise
        log.warning("hypothesis stopped shrinking early (%s); reporting the last failing input",
                    type(e).__name__)
        return state["last"], state["check"], max(state["steps"], 0)
    check = state["check"] if state["last"] is not None and ex.same_as(state["last"]) else checker.judge(ex)
    return ex, check, max(state["steps"], 0)
