"""Timing decisions that do not flip between runs (used by `quant`'s cost check).

A lossy pass may keep its rewrite only when it is measurably faster than the input model
by a factor `need` (min_speedup). A single median compared with `need` flips from run to
run whenever the true ratio sits near `need` or the machine is busy. The rule here:

- the two models run interleaved in onnxruntime with the deployment's threads (Timer: 2
  intra-op threads unless the caller says otherwise, spinning as onnxruntime's default), in
  rounds that alternate which goes first; every timed sample repeats a fast model until
  it lasts >= ~10 ms, so timer and call overhead do not decide;
- each round gives one paired ratio t_ref / t_new (both taken within milliseconds of each
  other, so a load change hits both); the verdict uses the median of those ratios and a
  distribution-free 99% confidence interval of that median (binomial order statistics);
- at least `min_rounds` rounds and a third of the time budget; then it stops as soon as
  the interval is on one side of `need`, else goes on up to twice the budget;
- verdict "faster" when the whole interval is >= need, "slower" when it is entirely
  below, otherwise "inconclusive". Callers treat "inconclusive" by a fixed rule (quant:
  keep the input, float), never by which side the median happened to fall on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CONFIDENCE = 0.99


@dataclass(frozen=True)
class Speedup:
    """t_ref / t_new: `ratio` the median over paired rounds, [lo, hi] its confidence interval."""

    ratio: float
    lo: float
    hi: float
    rounds: int
    ms_ref: float
    ms_new: float

    def verdict(self, need: float) -> str:
        if self.lo >= need:
            return "faster"
        if self.hi < need:
            return "slower"
        return "inconclusive"

    def describe(self) -> str:
        return f"{self.ratio:.2f}x [{self.lo:.2f}, {self.hi:.2f}] over {self.rounds} rounds"


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, lo, hi): the median and a distribution-free interval holding the true
    median with probability >= confidence (order statistics of Binomial(n, 1/2))."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    med = float(np.median(v))
    alpha = 1.0 - confidence
    # largest k with P(B <= k - 1) <= alpha / 2: interval [v[k-1], v[n-k]] (1-based k)
    cdf, k = 0.0, 0
    for i in range(n):
        cdf += math.comb(n, i) / 2.0 ** n
        if cdf > alpha / 2:
            break
        k = i + 1
    if k == 0:
        return med, v[0], v[-1]
    return med, float(v[k - 1]), float(v[n - k])


def session(proto, threads: int = 2):
    """A timing session: analysis.latency's (spinning off, one inter-op thread)."""
    from graphopt.analysis.latency import make_session

    return make_session(proto, threads)


def paired_speedup(ref, new, feed: dict, *, need: float | None = None, seconds: float = 3.0,
                   min_rounds: int = 15, max_rounds: int = 121, sample_s: float = 0.01) -> Speedup:
    """Speedup of model `new` over model `ref` (ModelProtos, onnxruntime sessions, or two
    sessions of one Timer's child process) on `feed`. With `need`, rounds continue (up to
    2 * seconds) while the interval straddles it."""
    if isinstance(ref, RemoteSession):
        return ref.timer.remote_speedup(ref, new, feed, dict(need=need, seconds=seconds, min_rounds=min_rounds,
                                                             max_rounds=max_rounds, sample_s=sample_s))
    sa = ref if hasattr(ref, "run") else session(ref)
    sb = new if hasattr(new, "run") else session(new)
    for s in (sa, sb, sa, sb):  # warm-up: allocations, first-run kernel selection
        s.run(None, feed)
    t0 = time.perf_counter()
    sa.run(None, feed)
    reps = max(1, min(2000, int(sample_s / max(time.perf_counter() - t0, 1e-7))))

    def sample(s):
        t = time.perf_counter()
        for _ in range(reps):
            s.run(None, feed)
        return (time.perf_counter() - t) / reps

    ta: list[float] = []
    tb: list[float] = []
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < max_rounds:
        if len(ratios) % 2:
            b = sample(sb)
            a = sample(sa)
        else:
            a = sample(sa)
            b = sample(sb)
        ta.append(a)
        tb.append(b)
        ratios.append(a / b)
        if len(ratios) < min_rounds:
            continue
        spent = time.perf_counter() - start
        if spent > 2 * seconds:
            break
        if spent > seconds / 3:
            med, lo, hi = median_interval(ratios)
            conclusive = need is not None and (lo >= need or hi < need)
            if conclusive or (spent > seconds and need is None):
                break
    med, lo, hi = median_interval(ratios)
    sp = Speedup(med, lo, hi, len(ratios), float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3)
    log.debug("timing: %s (%.3f ms vs %.3f ms, %d runs per sample)", sp.describe(), sp.ms_ref, sp.ms_new, reps)
    return sp


# ------------------------------------------------------------------ the deployment's threads
#
# A served model runs alone in its process with onnxruntime's default: intra-op threads
# that spin between operators. Everywhere else graphopt makes sessions with spinning off
# (two sessions' spinning pools in one process compete for the cores), and then every
# parallel operator pays a thread wake-up. At 2 threads on a 2-core machine that decided
# the verdict: MobileNetV3-small ran FP32 1.03 ms / INT8 0.85 ms (1.22x) with spinning
# off, and 0.57 ms / 0.58 ms (0.98x) with it on, each model alone in its own process
# (benchmarks/bench_quant_deploy.py). So with spinning and more than one thread, a Timer
# times in a child process whose sessions share one global intra-op pool, which spins, as
# the deployment's one pool does; the two sessions take turns, so nothing competes. There
# the paired ratio matched the one-model-per-process ratio (0.98-1.00x vs 0.98x).


class RemoteSession:
    """A session living in a Timer's child process (only paired_speedup uses it)."""

    def __init__(self, timer: "Timer", sid: int) -> None:
        self.timer, self.sid = timer, sid

    def __del__(self) -> None:  # the child drops it with the next request
        self.timer._dropped.append(self.sid)


class Timer:
    """Where the cost checks make their timing sessions: `threads` intra-op threads and, with
    `spinning` (onnxruntime's default), threads that spin. One thread, or spinning off:
    in-process sessions (session()). Otherwise: a child process (started on the first
    session, stopped by close() / the end of a `with` block)."""

    def __init__(self, threads: int = 2, spinning: bool = True) -> None:
        self.threads, self.spinning = threads, spinning
        self._proc = None
        self._dir = None
        self._count = 0
        self._dropped: list[int] = []

    @property
    def remote(self) -> bool:
        return self.spinning and self.threads > 1

    def describe(self) -> str:
        if self.threads == 1:
            return "1 intra-op thread"
        return f"{self.threads} intra-op threads, " + (
            "spinning (in a child process, one shared pool)" if self.spinning else "spinning off")

    def session(self, proto):
        if not self.remote:
            return session(proto, self.threads)
        if self._proc is None:
            self._start()
        self._count += 1
        path = os.path.join(self._dir.name, f"m{self._count}.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        try:
            return RemoteSession(self, self._call("session", path))
        finally:
            os.remove(path)

    def remote_speedup(self, ref: RemoteSession, new: RemoteSession, feed: dict, kw: dict) -> Speedup:
        return Speedup(**self._call("speedup", (ref.sid, new.sid, feed, kw)))

    def _start(self) -> None:
        import subprocess
        import sys
        import tempfile

        import graphopt

        env = dict(os.environ)
        root = str(Path(graphopt.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._dir = tempfile.TemporaryDirectory(prefix="graphopt-timer-")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from graphopt.passes._timing import _serve; _serve()", str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def _call(self, op: str, args):
        import pickle

        from graphopt.errors import GraphoptError
        from graphopt.runtime import RuntimeRejected

        drop, self._dropped = self._dropped, []
        try:
            pickle.dump((op, args, drop), self._proc.stdin)
            self._proc.stdin.flush()
            status, value = pickle.load(self._proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            code = self._proc.poll()
            raise GraphoptError(f"the timing process stopped (exit code {code}): {e}") from e
        if status == "rejected":
            raise RuntimeRejected(value)
        if status != "ok":
            raise GraphoptError(f"timing process: {value}")
        return value

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except Exception:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "Timer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve() -> None:
    """The Timer's child process: one global intra-op pool of argv[1] threads (spinning,
    onnxruntime's default), then requests (pickled) on stdin, replies on stdout."""
    import pickle
    import sys

    threads = int(sys.argv[1])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
    from graphopt import runtime

    unusable = runtime.share_threads(threads)  # before the first session
    if unusable:
        unusable += "; time with spinning off (quant(spinning=false))"
    so = None if unusable else runtime.options(optimize=True, log_level=3, shared_pool=True)
    sessions = {}
    made = 0
    while True:
        try:
            op, args, drop = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        for sid in drop:
            sessions.pop(sid, None)
        try:
            if unusable:
                reply = ("error", unusable)
            elif op == "session":
                try:
                    sessions[made] = runtime.session(args, so=so)
                except runtime.RuntimeRejected as e:
                    reply = ("rejected", e.reason)
                else:
                    reply = ("ok", made)
                    made += 1
            elif op == "speedup":
                a, b, feed, kw = args
                reply = ("ok", asdict(paired_speedup(sessions[a], sessions[b], feed, **kw)))
            else:
                reply = ("error", f"unknown request {op!r}")
        except Exception as e:
            reply = ("error", f"{type(e).__name__}: {runtime.first_line(e)}")
        pickle.dump(reply, out)
        out.flush()


# ------------------------------------------------------------------ measurement cache
#
# The interval rule keeps a verdict stable whenever the true speedup is not within noise
# of `need`; a model whose speedup sits right there (MobileNetV3-small on a busy 2-core
# machine: 1.05-1.2x) can still come out "faster" in one run and "inconclusive" in the
# next. So a measurement is also recorded per machine and runtime, keyed by the exact
# bytes of both models and the feed's shapes, and reused: the first run decides, later
# runs on the same machine give the same verdict and bytes. Location:
# $GRAPHOPT_CACHE_DIR (default ~/.cache/graphopt)/quant-timing.json.


def _machine() -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cpus; onnxruntime {ort.__version__}"


def cache_path() -> Path:
    root = os.environ.get("GRAPHOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "graphopt")
    return Path(root) / "quant-timing.json"


def cache_key(ref_bytes: bytes, new_bytes: bytes, feed: dict, threads: int = 2, spinning: bool = False) -> str:
    h = hashlib.sha256()
    # (2 threads without spinning adds nothing: keys recorded before `threads` and
    # `spinning` existed still match what they measured)
    where = ("" if threads == 2 else f"; {threads} threads") + ("; spinning" if spinning and threads > 1 else "")
    for b in (ref_bytes, new_bytes, _machine().encode() + where.encode(),
              repr(sorted((k, tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in feed.items())).encode()):
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


def cached(key: str) -> Speedup | None:
    try:
        rec = json.loads(cache_path().read_text()).get(key)
        return Speedup(**rec["speedup"]) if rec else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remember(key: str, sp: Speedup) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = {"speedup": asdict(sp), "machine": _machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not fail the pass
        log.info("timing cache not written (%s)", e)
