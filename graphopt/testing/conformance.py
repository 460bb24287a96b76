"""onnx's backend conformance tests as a test of an optimizer (graphopt or a peer).

Cases come from the installed onnx package itself:

* ``node``: every test case of ``onnx.backend.test.case.node`` (``collect_testcases``,
  including the ``*_expanded`` function-body variants), models and data in memory;
* ``simple``, ``pytorch-converted``, ``pytorch-operator``: the data folders shipped
  under ``onnx/backend/test/data`` (model.onnx + test_data_set_*/input_*.pb, output_*.pb);
* ``light``: the light model zoo (``light_*.onnx`` + ``light_*_output_*.pb``), fed with
  the deterministic input onnx's own runner generates for them (``arange/n``).

For each case, `run_case` first runs the *input* model in onnxruntime (CPU, graph
optimizations off) and compares with the expected outputs under onnx's tolerances
(rtol 1e-3, atol 1e-7, or the case's own). A case that onnxruntime cannot load, run or
get right is ``not-runnable`` (counted and listed with its reason, never dropped). For
the rest, the optimizer writes a model, which must load in onnxruntime and reproduce
the expected outputs. Outcomes:

``ok``, ``refused`` (a GraphoptError, or the peer's own "cannot" answer: one line),
``crash`` (any other exception), ``rejected-after`` (onnxruntime refuses the written
model), ``wrong-output`` (it runs and disagrees with the expected outputs).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..runtime import session

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "refused", "crash", "rejected-after", "wrong-output", "not-runnable")
BUGS = ("crash", "rejected-after", "wrong-output")
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")


@dataclass
class Case:
    """One conformance model with its data sets (loaded lazily)."""

    name: str
    kind: str
    rtol: float = 1e-3
    atol: float = 1e-7
    _model: onnx.ModelProto | None = None
    _data: list | None = None
    path: str | None = None          # model file (data folders, light zoo)
    data_dir: str | None = None      # folder holding test_data_set_* (data folders)
    expected_files: list[str] | None = None  # light zoo: expected outputs

    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = onnx.load(self.path)
        return self._model

    def data_sets(self) -> list[tuple[list, list]]:
        """[(inputs in graph-input order, expected outputs)]."""
        if self._data is None:
            self._data = _load_data(self)
        return self._data


def _data_root() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


_NODE_CASES: list | None = None


def collect(kinds: Iterable[str] = KINDS) -> list[Case]:
    """All cases of the given kinds, sorted by (kind, name)."""
    global _NODE_CASES
    cases: list[Case] = []
    for kind in kinds:
        if kind == "node":
            if _NODE_CASES is None:
                import warnings

                from onnx.backend.test.case import node as node_cases

                with warnings.catch_warnings():  # the generators' own overflow warnings
                    warnings.simplefilter("ignore")
                    _NODE_CASES = list(node_cases.collect_testcases())
            for tc in _NODE_CASES:
                data = [([_normalize(x) for x in ins], [_normalize(x) for x in outs])
                        for ins, outs in tc.data_sets]
                cases.append(Case(tc.name, "node", tc.rtol, tc.atol, _model=tc.model, _data=data))
        elif kind == "light":
            root = os.path.join(_data_root(), "light")
            for path in sorted(glob.glob(os.path.join(root, "light_*.onnx"))):
                prefix = path[: -len(".onnx")]
                outs = sorted(glob.glob(prefix + "_output_*.pb"))
                cases.append(Case(os.path.basename(prefix), "light", path=path, expected_files=outs))
        else:
            root = os.path.join(_data_root(), kind)
            for name in sorted(os.listdir(root)):
                d = os.path.join(root, name)
                if not os.path.isfile(os.path.join(d, "model.onnx")):
                    continue
                rtol, atol = 1e-3, 1e-7
                meta = os.path.join(d, "data.json")
                if os.path.exists(meta):
                    import json

                    with open(meta) as f:
                        j = json.load(f)
                    rtol, atol = j.get("rtol", rtol), j.get("atol", atol)
                cases.append(Case(name, kind, rtol, atol, path=os.path.join(d, "model.onnx"), data_dir=d))
    cases.sort(key=lambda c: (KINDS.index(c.kind), c.name))
    return cases


def case_id(case: Case) -> str:
    return f"{case.kind}/{case.name}"


def chunk_of(case: Case, n_chunks: int) -> int:
    """A stable chunk number for a case (by a hash of its id)."""
    h = hashlib.blake2b(case_id(case).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % n_chunks


def _normalize(x):
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list):
        return [_normalize(v) for v in x]
    return x


def _read_pb(path: str, tp: onnx.TypeProto):
    with open(path, "rb") as f:
        raw = f.read()
    if tp.HasField("sequence_type"):
        p = onnx.SequenceProto()
        p.ParseFromString(raw)
        return numpy_helper.to_list(p)
    if tp.HasField("optional_type"):
        p = onnx.OptionalProto()
        p.ParseFromString(raw)
        return numpy_helper.to_optional(p)
    if tp.HasField("map_type"):
        p = onnx.MapProto()
        p.ParseFromString(raw)
        return numpy_helper.to_dict(p)
    t = onnx.TensorProto()
    t.ParseFromString(raw)
    return numpy_helper.to_array(t)


def _feed_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _load_data(case: Case) -> list[tuple[list, list]]:
    model = case.model()
    if case.kind == "light":
        from onnx.backend.test.runner import Runner

        ins = [Runner.generate_dummy_data(x, seed=0, name=case.name, random=False)
               for x in _feed_inputs(model)]
        outs = [_read_pb(p, model.graph.output[i].type) for i, p in enumerate(case.expected_files or [])]
        return [(ins, outs)]
    sets = []
    for d in sorted(glob.glob(os.path.join(case.data_dir, "test_data_set_*"))):
        n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
        ins = [_read_pb(os.path.join(d, f"input_{i}.pb"), model.graph.input[i].type) for i in range(n_in)]
        outs = [_read_pb(os.path.join(d, f"output_{i}.pb"), model.graph.output[i].type) for i in range(n_out)]
        sets.append((ins, outs))
    return sets


# -- running ---------------------------------------------------------------------------




def _run(sess, inputs: list) -> list:
    names = [i.name for i in sess.get_inputs()]
    feeds = dict(zip(names, inputs))
    return sess.run(None, feeds)


def _check_outputs(expected: list, got: list, rtol: float, atol: float) -> None:
    """onnx's own comparison (onnx.backend.test.runner.Runner.assert_similar_outputs)."""
    from onnx.backend.test.runner import Runner

    got = list(got)
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        if e is None or g is None:  # an empty optional
            if not (e is None and g is None):
                raise AssertionError(f"output {i}: {'empty' if g is None else 'a value'} where "
                                     f"{'empty' if e is None else 'a value'} was expected")
        elif isinstance(e, (list, tuple)) or isinstance(g, (list, tuple)):
            if not isinstance(e, (list, tuple)) or not isinstance(g, (list, tuple)):
                raise AssertionError(f"output {i}: sequence vs non-sequence")
            _check_outputs(list(e), list(g), rtol, atol)  # element by element
        elif isinstance(e, dict):
            if not isinstance(g, dict) or set(e) != set(g):
                raise AssertionError(f"output {i}: map keys differ")
            _check_outputs(list(e.values()), [g[k] for k in e], rtol, atol)
        else:
            # onnx's own comparison of one tensor (shape, dtype, tolerances)
            Runner.assert_similar_outputs([e], [np.asarray(g)], rtol=rtol, atol=atol)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}"[:300]


def _where(e: BaseException) -> str:
    """The innermost traceback frame inside graphopt/passes (else the innermost)."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if ("/graphopt/" in f.filename or "/passes/" in f.filename)
            and "/graphopt/testing/" not in f.filename]
    if not ours:  # the tool's own code (not the harness) where the exception came from
        ours = [f for f in frames if "/graphopt/testing/conformance.py" not in f.filename]
    f = (ours or frames or [None])[-1]
    if f is None:
        return ""
    return f"{os.path.relpath(f.filename) if f.filename.startswith(os.getcwd()) else f.filename}:{f.lineno} ({f.name})"


def baseline(case: Case) -> str | None:
    """None if onnxruntime runs the input model right on every data set, else why not."""
    try:
        model = case.model()
        sets = case.data_sets()
    except Exception as e:
        return f"cannot load case: {_first_line(e)}"
    if not sets:
        return "no test data"
    try:
        sess = session(model)
    except Exception as e:  # RuntimeRejected: name onnxruntime's own exception
        return f"onnxruntime cannot load: {_first_line(e.__cause__ or e)}"
    for ins, outs in sets:
        try:
            got = _run(sess, ins)
        except Exception as e:
            return f"onnxruntime cannot run: {_first_line(e)}"
        try:
            _check_outputs(outs, got, case.rtol, case.atol)
        except Exception as e:
            return f"onnxruntime output differs from expected: {_first_line(e)}"
    return None


@dataclass
class Outcome:
    case: str
    tool: str
    status: str
    reason: str = ""
    where: str = ""
    seconds: float = 0.0


class Refused(Exception):
    """A tool's own, deliberate refusal (graphopt's GraphoptError, onnxsim's failed check)."""


# A tool: (src path, dst path) -> None; writes dst or raises (Refused for a refusal).
Tool = Callable[[str, str], None]


def graphopt_tool(spec: str = "clean,fuse", target: str = "onnx", verify_examples: int | None = None) -> Tool:
    """graphopt through the public API, as the CLI runs it (verification on)."""

    def run(src: str, dst: str) -> None:
        from graphopt import api
        from graphopt.errors import GraphoptError
        from graphopt.pipeline import PassContext
        from graphopt.verify import VerifyInstrument

        opts: dict[str, Any] = {"repro_dir": os.path.join(os.path.dirname(dst), "repro")}
        if verify_examples is not None:
            opts["examples"] = verify_examples
        try:
            api.optimize_file(src, dst, spec, ctx=PassContext(target=target),
                              instruments=[VerifyInstrument(**opts)])
        except GraphoptError as e:
            raise Refused(_first_line(e)) from e

    return run


def onnxsim_tool() -> Tool:
    def run(src: str, dst: str) -> None:
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(src))
        if not ok:
            raise Refused("onnxsim: its own output check failed")
        onnx.save(model, dst)

    return run


def onnxslim_tool() -> Tool:
    def run(src: str, dst: str) -> None:
        import onnxslim

        model = onnxslim.slim(onnx.load(src))
        if model is None:
            raise Refused("onnxslim returned nothing")
        onnx.save(model, dst)

    return run


def _fast_tmp() -> str | None:
    """A memory-backed temp folder when there is one (/dev/shm): each case writes and
    removes a few small files and folders, which costs ~6 ms per folder on a disk."""
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else None


def run_case(case: Case, tool: Tool, tool_name: str, workdir: str | None = None,
             runnable: str | None | bool = True) -> Outcome:
    """Classify one case under one tool. `runnable`: a precomputed `baseline(case)`
    result (None = runnable, str = reason), or True to compute it here."""
    cid = case_id(case)
    reason = baseline(case) if runnable is True else runnable
    if reason is not None:
        return Outcome(cid, tool_name, "not-runnable", reason)
    tmp = tempfile.mkdtemp(prefix="conformance-", dir=workdir or _fast_tmp())
    try:
        src = os.path.join(tmp, "model.onnx")
        dst = os.path.join(tmp, "out.onnx")
        onnx.save(case.model(), src)
        t0 = time.perf_counter()
        try:
            tool(src, dst)
        except Refused as e:
            return Outcome(cid, tool_name, "refused", str(e), seconds=time.perf_counter() - t0)
        except Exception as e:  # anything else is a bug in the tool
            return Outcome(cid, tool_name, "crash", _first_line(e), _where(e), time.perf_counter() - t0)
        secs = time.perf_counter() - t0
        try:
            sess = session(dst)
        except Exception as e:  # RuntimeRejected: name onnxruntime's own exception
            return Outcome(cid, tool_name, "rejected-after", _first_line(e.__cause__ or e), seconds=secs)
        for ins, outs in case.data_sets():
            try:
                got = _run(sess, ins)
            except Exception as e:
                return Outcome(cid, tool_name, "rejected-after", "run: " + _first_line(e), seconds=secs)
            try:
                _check_outputs(outs, got, case.rtol, case.atol)
            except Exception as e:
                msg = " ".join(str(e).split())[:300]
                return Outcome(cid, tool_name, "wrong-output", msg, seconds=secs)
        return Outcome(cid, tool_name, "ok", seconds=secs)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in OUTCOMES}
        for o in self.outcomes:
            c[o.status] += 1
        return c

    def bugs(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in BUGS]

    def of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def describe(self) -> str:
        c = self.counts()
        lines = [", ".join(f"{k} {v}" for k, v in c.items())]
        for o in self.outcomes:
            if o.status != "ok":
                lines.append(f"  {o.status:14s} {o.case} [{o.tool}]: {o.reason}" + (f" @ {o.where}" if o.where else ""))
        return "\n".join(lines)


def run_suite(cases: Iterable[Case], tools: dict[str, Tool], workdir: str | None = None,
              progress: Callable[[Outcome], None] | None = None) -> Summary:
    """Every case under every tool (the baseline is computed once per case)."""
    summary = Summary()
    for case in cases:
        reason = baseline(case)
        for name, tool in tools.items():
            o = run_case(case, tool, name, workdir, runnable=reason)
            summary.outcomes.append(o)
            if progress:
                progress(o)
        if case.path is not None:  # read from disk: let it go (light zoo models are large in memory)
            case._model = case._data = None
    return summary
