"""A device reached over TVM's RPC: upload a compiled library, run it there, time it there,
and let MetaSchedule measure tuning candidates on it.

    from graphopt import device
    remote = device.Remote.parse(rpc="127.0.0.1:9090")            # a server (python -m tvm.exec.rpc_server)
    remote = device.Remote.parse(tracker="127.0.0.1:9190", key="rasp4")   # or a device from a tracker
    with device.connect(remote) as sess:
        runner = sess.load(Path("model.so"), ["input"], ["output"])   # a graphopt.verify Runner
        runner.run({"input": x}); runner.latency({"input": x})

Every call that talks to the device runs under `Remote.timeout`: a bad address, a dead
server or a device that stops answering is a one-line GraphoptError within that time,
never a hang (TVM's RPC client has no timeouts of its own, so the calls run on a daemon
thread that is abandoned when it does not come back).

Times measured on an emulated board (qemu-user) are correct numbers for the emulator and
say nothing about a real board: use such a board to check correctness and the tuning
plumbing, never to rank schedules.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import GraphoptError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Remote:
    """Where the device is: an RPC server (host, port) or a tracker (host, port) plus the
    key the device registered under; `timeout` bounds every call to it (seconds)."""

    host: str
    port: int
    key: str | None = None
    tracker: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def parse(cls, rpc: str | None = None, tracker: str | None = None, key: str | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> "Remote | None":
        """From the command line's --rpc / --rpc-tracker / --rpc-key; None when neither."""
        if rpc and tracker:
            raise GraphoptError("give --rpc HOST:PORT or --rpc-tracker HOST:PORT, not both")
        if key and not tracker:
            raise GraphoptError("--rpc-key names a device of a tracker: give --rpc-tracker HOST:PORT too")
        if not (timeout > 0):
            raise GraphoptError("--rpc-timeout must be more than 0 seconds")
        if tracker:
            if not key:
                raise GraphoptError("--rpc-tracker needs --rpc-key KEY (the key the device registered under)")
            host, port = parse_address(tracker, "--rpc-tracker")
            return cls(host, port, key, True, float(timeout))
        if rpc:
            host, port = parse_address(rpc, "--rpc")
            return cls(host, port, None, False, float(timeout))
        return None

    @property
    def where(self) -> str:
        if self.tracker:
            return f"device '{self.key}' of the tracker {self.host}:{self.port}"
        return f"the RPC server {self.host}:{self.port}"

    @property
    def identity(self) -> str:
        """What the tuning database is keyed by: the tracker key names a kind of device; a
        direct server is known only by its address."""
        return f"key-{self.key}" if self.tracker else f"server-{self.host}-{self.port}"

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"tracker" if self.tracker else "rpc": f"{self.host}:{self.port}",
                             "timeout_s": self.timeout}
        if self.key:
            d["key"] = self.key
        return d


def parse_address(text: str, option: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([A-Za-z0-9_.:-]*?)\]?:(\d{1,5})", text.strip())
    if not m or not m.group(1):
        raise GraphoptError(f"{option} '{text}': expected HOST:PORT, e.g. 127.0.0.1:9090")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise GraphoptError(f"{option} '{text}': port {port} is not in 1..65535")
    return m.group(1), port


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "at ", "^")) and not re.match(r"^\d+:", ln):
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def call_with_timeout(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """fn() on a daemon thread; GraphoptError naming `what` when it raises or does not
    return within `seconds` (the thread is then left behind, blocked in TVM)."""
    box: dict[str, Any] = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["error"] = e

    t = threading.Thread(target=work, name=f"graphopt-rpc: {what}", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        _ABANDONED.append(t)
        raise GraphoptError(f"{what}: no answer within {seconds:g} s (is the device up? "
                            "raise the limit with --rpc-timeout)")
    if "error" in box:
        e = box["error"]
        log.debug("%s failed", what, exc_info=e)
        if isinstance(e, GraphoptError):
            raise GraphoptError(f"{what}: {e}") from None
        raise GraphoptError(f"{what}: {_explain(first_line(e))}") from None
    return box.get("value")


_ABANDONED: list[threading.Thread] = []


def abandoned_calls() -> bool:
    """Whether a device call timed out and its thread is still blocked in TVM. Such a
    thread that comes back while the interpreter shuts down aborts the process (C++
    'terminate called'), so the CLI leaves with os._exit after flushing."""
    return any(t.is_alive() for t in _ABANDONED)


def _explain(msg: str) -> str:
    msg = re.sub(r"^Check failed: \(.*?\) is false: ", "", msg)
    if re.search(r"Connect to \S+ failed", msg):
        return f"{msg} (nothing listens there, or it refused the connection)"
    return msg


def open_session(remote: Remote):
    """A tvm.rpc session to the device (GraphoptError within the timeout otherwise)."""
    from tvm import rpc

    session_timeout = 0  # the server keeps the session as long as the client holds it
    if remote.tracker:
        _tcp_reachable(remote, "the tracker")  # TVM's own client retries for a minute, logging

        def connect():
            tracker = rpc.connect_tracker(remote.host, remote.port)
            keys = _tracker_keys(tracker.summary())
            if remote.key not in keys:
                raise GraphoptError(f"no device registered under key '{remote.key}' "
                                    f"(keys at the tracker: {', '.join(sorted(keys)) or 'none'})")
            return tracker.request(remote.key, priority=1, session_timeout=session_timeout)

        what = f"cannot get {remote.where}"
    else:
        def connect():
            return rpc.connect(remote.host, remote.port, session_timeout=session_timeout)

        what = f"cannot reach {remote.where}"
    return call_with_timeout(connect, remote.timeout, what)


def _tcp_reachable(remote: Remote, what: str) -> None:
    """A plain TCP connect (only for the tracker: an RPC server must see a real session)."""
    import socket

    try:
        with socket.create_connection((remote.host, remote.port), timeout=min(remote.timeout, 15)):
            pass
    except OSError as e:
        reason = "connection refused" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
        raise GraphoptError(f"cannot reach {what} {remote.host}:{remote.port}: {reason}") from None


def _tracker_keys(summary: dict) -> set[str]:
    keys = set()
    for item in summary.get("server_info", []):
        key = str(item.get("key", ""))
        # registered servers show as "server:KEY"
        keys.add(key.split(":", 1)[1] if key.startswith("server:") else key)
    return keys


def probe(remote: Remote) -> dict:
    """Open and close a session: a bad address or a dead device fails here, before a
    long build (the session is not kept: a single-session server would refuse the tuner).
    Returns what the device says of itself: {"threads": N}."""
    sess = DeviceSession(remote)
    try:
        threads = sess.call(lambda: int(sess.sess.get_function("runtime.NumThreads")()),
                            "ask the device's thread count")
    finally:
        sess.close()
    return {"threads": threads}


class DeviceSession:
    """An open RPC session: upload libraries and run them on the device."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._runners: list[RemoteRunner] = []
        t0 = time.perf_counter()
        self.sess = open_session(remote)
        self.connect_seconds = time.perf_counter() - t0
        self.device = self.call(lambda: self.sess.cpu(0), "open the device's CPU")

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_timeout(fn, self.remote.timeout, f"{what} on {self.remote.where}")

    def load(self, path: Path, input_names: list[str], output_names: list[str]) -> "RemoteRunner":
        """Upload the shared library and load it there as a Relax VM."""
        from tvm import relax

        t0 = time.perf_counter()
        name = Path(path).name

        def upload():
            self.sess.upload(str(path), name)
            lib = self.sess.load_module(name)
            return relax.VirtualMachine(lib, self.device)

        vm = self.call(upload, "upload and load the library")
        runner = RemoteRunner(self, vm, input_names, output_names, time.perf_counter() - t0)
        self._runners.append(runner)
        return runner

    def close(self) -> None:
        """Drop every remote object, which ends the session: a server serves one session
        at a time, and a traceback that kept a runner alive would block the next client."""
        import gc

        for r in self._runners:
            r.vm = None
        self._runners.clear()
        self.sess = None
        self.device = None
        gc.collect()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(remote: Remote) -> DeviceSession:
    return DeviceSession(remote)


class RemoteRunner:
    """A Relax VM on the device with the interface of graphopt.verify.Runner (so
    graphopt.verify.compare checks it against onnxruntime on the host)."""

    def __init__(self, session: DeviceSession, vm, input_names, output_names, load_seconds: float) -> None:
        self.session = session
        self.vm = vm
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.load_seconds = load_seconds
        self.backend = "tvm-rpc"
        self.note = ""
        self.runs = 0

    def _args(self, feeds: dict[str, np.ndarray]) -> list:
        import tvm

        return [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), self.session.device)
                for n in self.input_names]

    def run(self, feeds: dict[str, np.ndarray], cache: bool = True) -> list[np.ndarray]:
        from .tvm_build import flatten_outputs
        from .verify.runner import InvalidInput

        self.runs += 1

        def go():
            return flatten_outputs(self.vm["main"](*self._args(feeds)))

        try:
            return self.session.call(go, "run the model")
        except GraphoptError as e:
            if "no answer within" in str(e):
                raise
            raise InvalidInput(str(e)) from None

    def latency(self, feeds: dict[str, np.ndarray], *, number: int = 3, repeat: int = 5) -> dict:
        """The device's own timing of `main` (TVM's time evaluator, run on the device):
        seconds per run for each of `repeat` rounds of `number` runs."""
        def go():
            self.vm.set_input("main", *self._args(feeds))
            fe = self.vm.time_evaluator("invoke_stateful", self.session.device,
                                        number=number, repeat=repeat)
            return [float(s) for s in fe("main").results]

        results = self.session.call(go, "time the model")
        return dict(median_ms=1e3 * float(np.median(results)), min_ms=1e3 * min(results),
                    number=number, repeat=repeat)



# ---------------------------------------------------------------------------- MetaSchedule


def create_session(rpc_config):
    """MetaSchedule's f_create_session (runs in its popen worker): a tracker's device when
    the key is a real one, else the server at tracker_host:tracker_port directly (RPCConfig
    has no direct mode; graphopt puts the server's address there with DIRECT_KEY)."""
    from tvm import rpc

    if rpc_config.tracker_key == DIRECT_KEY:
        return rpc.connect(rpc_config.tracker_host, rpc_config.tracker_port,
                           session_timeout=rpc_config.session_timeout_sec)
    return rpc_config.connect_server()


DIRECT_KEY = "graphopt-direct-rpc-server"


def rpc_runner(remote: Remote, initializer=None):
    """A MetaSchedule RPCRunner measuring on the device, one candidate at a time."""
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.RPCConfig(tracker_host=remote.host, tracker_port=remote.port,
                                 tracker_key=remote.key if remote.tracker else DIRECT_KEY,
                                 session_priority=1, session_timeout_sec=int(remote.timeout))
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0)
    return ms.runner.RPCRunner(config, evaluator, f_create_session=create_session, max_workers=1,
                               initializer=initializer)
