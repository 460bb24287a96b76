"""Passes, the registry and the pass manager.

A pipeline spec (graphopt.spec) names passes and groups with their options; groups
(``clean``, ``fuse``, ...) expand to their member passes and may be iterated to a fixed
point. The PassManager runs the expanded pipeline on a `Model`, calling instruments
before and after every pass (graphopt.instruments: verification, timing, statistics,
dumps).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from .errors import GraphoptError
from .ir import Model
from .spec import NAME_RE, Option, SpecItem, parse_spec

log = logging.getLogger(__name__)

CONTRACTS = ("exact", "float", "lossy")
TARGETS = ("onnx", "ort", "tvm")

# Lossy budgets: the metrics and the pass options that set them (see graphopt.verify.contracts).
BUDGET_METRICS = ("rel_l2", "cosine", "top1")
BUDGET_OPTIONS = {"max_rel_l2": "rel_l2", "min_cosine": "cosine", "min_top1": "top1"}


def budget_options(default: dict[str, float]) -> dict[str, "Option"]:
    """The three budget options of a lossy pass; `default` is what applies without them."""
    shown = ", ".join(f"{m} {'<=' if m == 'rel_l2' else '>='} {v:g}" for m, v in default.items())
    return {
        "max_rel_l2": Option(float, None, f"error budget: max relative L2 vs the input model (default: --budget, else {shown})"),
        "min_cosine": Option(float, None, "error budget: min cosine similarity of the outputs"),
        "min_top1": Option(float, None, "error budget: min top-1 agreement (classifier outputs)"),
    }


# ---------------------------------------------------------------------------- passes


@dataclass
class PassResult:
    """What a pass did: whether the graph changed, and statistics worth reporting."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """Settings shared by all passes of a run (from the CLI or the embedding tool).

    target: where the model will run: 'onnx' (portable standard ops), 'ort'
        (onnxruntime, contrib ops allowed) or 'tvm' (TVM's ONNX importer).
    allow_opset_upgrade: passes may convert the model to a newer opset.
    input_shapes / input_ranges: user-given bindings for graph inputs.
    samples: real input samples (a list of {input name: array}), used for
        calibration, data-driven decisions and verification.
    budget: the error budget of lossy passes that do not set their own (`--budget`):
        metric -> bound, metrics rel_l2 (at most), cosine and top1 (at least).
    """

    target: str = "onnx"
    allow_opset_upgrade: bool = False
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: list[dict] | None = None
    seed: int = 0
    budget: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # --- distill (issue 15): the model as it entered the run's first lossy pass (a
    # ModelProto copy the PassManager takes), the default teacher of pass `distill`.
    teacher: Any = None
    # --- end distill

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise GraphoptError(f"unknown target '{self.target}' (expected one of {', '.join(TARGETS)})")
        for metric, bound in self.budget.items():
            if metric not in BUDGET_METRICS:
                raise GraphoptError(f"unknown budget metric '{metric}' (expected one of {', '.join(BUDGET_METRICS)})")
            if not 0.0 <= float(bound) <= (float("inf") if metric == "rel_l2" else 1.0):
                raise GraphoptError(f"budget {metric}={bound} is out of range")


class Pass:
    """Base class of all passes.

    Subclasses set `name` (via `register_pass`), `contract` ('exact', 'float' or
    'lossy'), a one-line docstring, and `options` (a dict of `Option`). They implement
    `run(model, ctx)` returning a `PassResult` (or a bool: changed or not).

    Options are available as attributes: a pass with ``options = {"ratio": Option(float,
    0.3)}`` reads ``self.ratio``.
    """

    name: ClassVar[str] = ""
    contract: ClassVar[str] = "exact"
    options: ClassVar[dict[str, Option]] = {}
    # A lossy pass declares its default error budget here (metric -> bound). The pass
    # manager resolves it before run() -- the pass's own budget options (see
    # `budget_options`), else the run's --budget (`ctx.budget`), else this default -- into
    # `self.budget`, which run() reads and the verifier judges the result on. A pass never
    # sets it itself.
    budget: ClassVar[dict[str, float]] = {}

    def __init__(self, **opts: Any) -> None:
        unknown = set(opts) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise GraphoptError(
                f"pass '{self.name}' has no option '{sorted(unknown)[0]}' (options: {known})"
            )
        for key, opt in self.options.items():
            value = opt.coerce(self.name, key, opts[key]) if key in opts else opt.default
            setattr(self, key, value)
        self.given_options = dict(opts)

    def run(self, model: Model, ctx: PassContext) -> PassResult | bool:
        raise NotImplementedError

    def budget_for(self, ctx: PassContext) -> dict[str, float]:
        """The error budget of this run: the pass's own budget options where given, else
        the run's budget (`ctx.budget`), else the pass's default."""
        own = {metric: getattr(self, opt) for opt, metric in BUDGET_OPTIONS.items()
               if opt in self.given_options and getattr(self, opt, None) is not None}
        return own or dict(ctx.budget) or dict(type(self).budget)

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        if not self.given_options:
            return self.name
        args = ",".join(f"{k}={v}" for k, v in self.given_options.items())
        return f"{self.name}({args})"


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Group:
    name: str
    members: tuple[str, ...]
    description: str
    fixed_point: bool = False
    max_iterations: int = 8


_PASSES: dict[str, type[Pass]] = {}
_GROUPS: dict[str, Group] = {}
_discovered = False


def register_pass(name: str, *, replace: bool = False) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator registering a Pass subclass under `name`."""

    if not NAME_RE.match(name):
        raise ValueError(f"invalid pass name {name!r}")

    def deco(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError("register_pass decorates subclasses of graphopt.Pass")
        if cls.contract not in CONTRACTS:
            raise ValueError(f"pass {name!r}: contract must be one of {CONTRACTS}")
        if not replace and (name in _PASSES and _PASSES[name] is not cls or name in _GROUPS):
            raise ValueError(f"a pass or group named {name!r} is already registered")
        cls.name = name
        _PASSES[name] = cls
        return cls

    return deco


def register_group(
    name: str, members: Sequence[str], description: str, *, fixed_point: bool = False,
    max_iterations: int = 8, replace: bool = False,
) -> None:
    """Register a named group of passes (members may be passes or other groups)."""
    if not replace and (name in _PASSES or name in _GROUPS):
        raise ValueError(f"a pass or group named {name!r} is already registered")
    _GROUPS[name] = Group(name, tuple(members), description, fixed_point, max_iterations)


def discover() -> None:
    """Import the built-in passes (the package graphopt.passes, the repository's passes/
    folder) and those of installed plugins (entry points of group graphopt.passes)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    try:
        importlib.import_module("graphopt.passes")
    except ModuleNotFoundError as e:
        if e.name != "graphopt.passes":
            raise
        from pathlib import Path

        raise GraphoptError(
            f"the built-in passes (graphopt.passes) are missing: graphopt was imported from "
            f"{Path(__file__).parent}, a source checkout that shadows the installed package; "
            "install the checkout with pip install -e . or run from another folder") from None
    from importlib.metadata import entry_points

    for ep in entry_points(group="graphopt.passes"):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break graphopt
            log.warning("could not load pass plugin '%s': %s", ep.name, e)


def load_plugin(module: str) -> None:
    """Import a module that registers passes (the CLI's --plugin): a module name
    (``my_passes``, ``pkg.passes``) or the path of a Python file (``path/to/file.py``)."""
    import os
    import sys

    if module.endswith(".py") or os.sep in module or (os.altsep and os.altsep in module):
        path = os.path.abspath(module)
        if not os.path.isfile(path):
            raise GraphoptError(f"cannot load plugin '{module}': no such file")
        name = "graphopt_plugin_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise GraphoptError(f"cannot load plugin '{module}': not a Python file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(mod)
        except (ImportError, SyntaxError) as e:
            del sys.modules[name]
            raise GraphoptError(f"cannot load plugin '{module}': {type(e).__name__}: {e}") from e
        except Exception:
            del sys.modules[name]
            raise
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise GraphoptError(f"cannot import plugin '{module}': {e}") from e


def list_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (built-in and plugins), sorted."""
    discover()
    return dict(sorted(_PASSES.items()))


def groups() -> dict[str, Group]:
    """Every registered group by name, sorted."""
    discover()
    return dict(sorted(_GROUPS.items()))


def get_pass(name: str) -> type[Pass]:
    discover()
    if name not in _PASSES:
        raise GraphoptError(_unknown(name))
    return _PASSES[name]


def _unknown(name: str) -> str:
    import difflib

    names = sorted(_PASSES) + sorted(_GROUPS)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown pass '{name}'{hint}; available: {', '.join(names)}"


@dataclass
class Stage:
    """One element of an expanded pipeline: a pass, or a group iterated to a fixed point."""

    group: str | None
    passes: list[Pass]
    fixed_point: bool = False
    max_iterations: int = 1


def build_pipeline(spec: str | Sequence[str | Pass]) -> list[Stage]:
    """Resolve a spec (string, or a list of names/Pass instances) into stages."""
    discover()
    if isinstance(spec, str):
        items: list[SpecItem | Pass] = list(parse_spec(spec))
    else:
        items = []
        for s in spec:
            items.extend(parse_spec(s) if isinstance(s, str) else [s])
    stages: list[Stage] = []
    for item in items:
        if isinstance(item, Pass):
            stages.append(Stage(None, [item]))
        elif item.name in _GROUPS:
            if item.options:
                raise GraphoptError(f"group '{item.name}' takes no options; give them to its passes")
            group = _GROUPS[item.name]
            stages.append(
                Stage(group.name, _expand_group(group, ()), group.fixed_point, group.max_iterations)
            )
        else:
            stages.append(Stage(None, [get_pass(item.name)(**item.options)]))
    return stages


def _expand_group(group: Group, seen: tuple[str, ...]) -> list[Pass]:
    if group.name in seen:
        raise GraphoptError(f"group '{group.name}' contains itself")
    out: list[Pass] = []
    for member in group.members:
        for item in parse_spec(member):
            if item.name in _GROUPS:
                out.extend(_expand_group(_GROUPS[item.name], seen + (group.name,)))
            else:
                out.append(get_pass(item.name)(**item.options))
    return out


# ---------------------------------------------------------------------------- instruments


class Instrument:
    """Hooks around each pass (LLVM's PassInstrumentation, TVM's PassInstrument).

    `after_pass` may raise to stop the pipeline, or restore the model to its state before
    the pass (it took a snapshot in `before_pass`) and return "revert", which marks the
    pass reverted. Instruments add what they measured to `record.extra`.
    """

    def before_pipeline(self, model: Model, ctx: PassContext) -> None: ...

    def before_pass(self, p: Pass, model: Model, ctx: PassContext) -> None: ...

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: "PassRecord") -> str | None: ...

    def after_pipeline(self, model: Model, ctx: PassContext, report: "Report") -> None: ...

    def pipeline_failed(self, model: Model, ctx: PassContext, error: BaseException) -> None:
        """The pipeline stopped on `error` (raised by a pass or an instrument); release
        what before_pipeline started. after_pipeline is not called."""


@dataclass
class PassRecord:
    """What happened in one run of one pass."""

    name: str
    spec: str
    contract: str
    group: str | None
    iteration: int
    changed: bool
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    seconds: float
    reverted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    """The result of a pipeline run."""

    records: list[PassRecord] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- manager


class PassManager:
    """Runs a pipeline of passes over a model, with instruments around each pass."""

    def __init__(
        self,
        spec: str | Sequence[str | Pass],
        ctx: PassContext | None = None,
        instruments: Iterable[Instrument] = (),
    ) -> None:
        self.stages = build_pipeline(spec)
        self.ctx = ctx or PassContext()
        self.instruments = list(instruments)
        self.progress: Callable[[str], None] | None = None

    @property
    def passes(self) -> list[Pass]:
        return [p for s in self.stages for p in s.passes]

    def run(self, model: Model) -> Report:
        ctx = self.ctx
        report = Report(nodes_before=model.node_count(), bytes_before=model.weight_bytes())
        ctx.teacher = None  # --- distill (issue 15): taken before the first lossy pass
        start = time.perf_counter()
        for inst in self.instruments:
            inst.before_pipeline(model, ctx)
        try:
            self._run_stages(model, report)
        except BaseException as e:
            for inst in self.instruments:
                inst.pipeline_failed(model, ctx, e)
            raise
        report.seconds = time.perf_counter() - start
        report.nodes_after = model.node_count()
        report.bytes_after = model.weight_bytes()
        for inst in self.instruments:
            inst.after_pipeline(model, ctx, report)
        return report

    def _run_stages(self, model: Model, report: Report) -> None:
        for stage in self.stages:
            iterations = stage.max_iterations if stage.fixed_point else 1
            for it in range(iterations):
                changed_any = False
                for p in stage.passes:
                    record = self._run_pass(p, model, stage.group, it, report)
                    changed_any |= record.changed and not record.reverted
                if not changed_any:
                    break
            else:
                if stage.fixed_point:
                    log.info("group '%s' did not settle after %d iterations", stage.group, iterations)

    def _run_pass(self, p: Pass, model: Model, group: str | None, it: int, report: Report) -> PassRecord:
        if self.progress:
            self.progress(p.name)
        nodes_before, bytes_before = model.node_count(), model.weight_bytes()
        if (p.contract == "lossy" and self.ctx.teacher is None  # --- distill (issue 15)
                and any(getattr(q, "wants_teacher", False) for q in self.passes)):
            self.ctx.teacher = model.to_onnx()
        if p.contract == "lossy":  # the declared budget, resolved for this run (Pass.budget)
            p.budget = p.budget_for(self.ctx)
        for inst in self.instruments:
            inst.before_pass(p, model, self.ctx)
        t0 = time.perf_counter()
        try:
            result = p.run(model, self.ctx)
        except GraphoptError as e:
            raise GraphoptError(f"pass '{p.name}': {e}") from e
        seconds = time.perf_counter() - t0
        if isinstance(result, bool):
            result = PassResult(result)
        elif not isinstance(result, PassResult):
            raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, expected PassResult or bool")
        record = PassRecord(
            name=p.name, spec=repr(p), contract=p.contract, group=group, iteration=it,
            changed=result.changed, stats=dict(result.stats),
            nodes_before=nodes_before, nodes_after=model.node_count(),
            bytes_before=bytes_before, bytes_after=model.weight_bytes(), seconds=seconds,
        )
        report.records.append(record)
        for inst in self.instruments:
            if inst.after_pass(p, model, self.ctx, record) == "revert":
                record.reverted = True
                record.nodes_after, record.bytes_after = model.node_count(), model.weight_bytes()
        log.debug("%s: changed=%s %s (%.3fs)", p.name, result.changed, result.stats, seconds)
        return record
