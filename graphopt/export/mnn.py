"""MNN: the `MNN` package's ONNX converter, run guarded in a subprocess
(graphopt/export/_mnn_guard.py says why), and its Module API for running the result.

QDQ INT8 models are refused: MNN 3.6.1's converter aborts on them ("Input data channel
may be mismatch with filter channel count") or writes a model that does not load.
MNN's own quantization tool (mnnquant, on an FP32 .mnn and real images) is the way to
INT8 there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import ConversionError, TargetRunner

log = logging.getLogger(__name__)

NAME = "mnn"
SUFFIXES = (".mnn",)
DEFAULT_SPEC = "static-shapes,clean,fuse"
INT8_SPEC = None  # refused: see the module doc
GUARD = Path(__file__).with_name("_mnn_guard.py")
TIMEOUT = 600
QDQ_REFUSAL = ("MNN's converter cannot take a QDQ INT8 model (MNN 3.6.1 aborts or writes a model that does not "
               "load): export FP32 to MNN and quantize with MNN's own tool (mnnquant) on real images")


def available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("_tools") is None or importlib.util.find_spec("MNN") is None:
        return "MNN is not installed: pip install 'graphopt[mnn]'"
    return None


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """`unshare -n --` when this process may make a network namespace (root), so even
    the C++ converter cannot reach the network; else nothing (the audit hook remains)."""
    unshare = shutil.which("unshare")
    if unshare is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ()
    try:
        ok = subprocess.run([unshare, "-n", "--", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (unshare, "-n", "--") if ok else ()


def guarded_command(events_file: Path, onnx_path: Path, mnn_path: Path, *extra: str) -> tuple[list[str], dict]:
    """The converter's command line and environment: this interpreter in isolated mode
    (-I: no PYTHON* variables, no user site), PATH holding nothing (so no `pip` to
    run), an empty HOME, and the network namespace prefix where possible."""
    empty = Path(tempfile.mkdtemp(prefix="graphopt-mnn-env-"))
    env = {"PATH": str(empty), "HOME": str(empty), "LANG": "C.UTF-8", "TMPDIR": tempfile.gettempdir(),
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [*_netns_prefix(), sys.executable, "-I", str(GUARD), str(events_file), str(onnx_path), str(mnn_path), *extra]
    return cmd, env


def convert(onnx_path: Path, out_dir: Path, stem: str, *, fp16: bool = False, qdq: bool = False, **_: object) -> list[Path]:
    if qdq:
        raise ConversionError(QDQ_REFUSAL)
    why = available()
    if why:
        raise ConversionError(why)
    out = out_dir / f"{stem}.mnn"
    events = out_dir / "mnn-guard-events.txt"
    cmd, env = guarded_command(events, onnx_path, out, *(["--fp16"] if fp16 else []))
    try:
        proc = subprocess.run(cmd, env=env, cwd=out_dir, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"MNN's converter did not finish in {TIMEOUT} s") from None
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)
    refused = events.read_text().strip() if events.exists() else ""
    events.unlink(missing_ok=True)
    if refused:
        log.warning("MNN guard refused: %s", refused.replace("\n", "; "))
    text = (proc.stdout or "") + (proc.stderr or "")
    (out_dir / "mnnconvert.log").write_text(text)
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise ConversionError("MNN's converter failed" + (f" (rc {proc.returncode})" if proc.returncode else "")
                              + f": {_reason(text)}")
    log.debug("mnnconvert output:\n%s", text)
    return [out]


def _reason(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for key in ("not support", "Error", "error", "mismatch", "Can't", "failed"):
        for line in lines:
            if key in line:
                return line[:300]
    return (lines[-1] if lines else "no output")[:300]


@contextlib.contextmanager
def _stdout_to_stderr():
    """MNN's C++ side prints device notes on fd 1; keep stdout for graphopt's own output."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class Runner(TargetRunner):
    backend = "mnn"

    def __init__(self, path: Path, input_names: list[str], output_names: list[str],
                 output_dtypes: list[np.dtype], threads: int = 2) -> None:
        super().__init__()
        with _stdout_to_stderr():
            import MNN.expr as F
            import MNN.nn as nn

            rt = nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads},))
            try:
                self.module = nn.load_module_from_file(str(path), list(input_names), list(output_names),
                                                       runtime_manager=rt)
            except Exception as e:  # noqa: BLE001
                raise ConversionError(f"MNN cannot load {path.name}: {e}") from e
        if self.module is None:
            raise ConversionError(f"MNN cannot load {path.name}")
        self.F = F
        self.input_names, self.output_dtypes = list(input_names), list(output_dtypes)

    def _vars(self, feeds):
        F = self.F
        out = []
        for name in self.input_names:
            a = np.asarray(feeds[name])
            if a.dtype.kind in "iub":
                a, dt = np.ascontiguousarray(a.astype(np.int32)), F.int
            else:
                a, dt = np.ascontiguousarray(a.astype(np.float32)), F.float
            out.append(F.const(a, list(a.shape), F.NCHW, dt))
        return out

    def _execute(self, feeds):
        F = self.F
        outs = self.module.forward(self._vars(feeds))
        result = []
        for v, dt in zip(outs, self.output_dtypes):
            if v.data_format == F.NC4HW4:
                v = F.convert(v, F.NCHW)
            result.append(np.array(v.read()).astype(dt, copy=False))
        return result

    def timed_call(self, feeds):
        def call():
            outs = self.module.forward(self._vars(feeds))
            for v in outs:
                v.read()
        return call


def runner(path: Path, input_names: list[str], output_names: list[str], output_dtypes: list[np.dtype],
           threads: int = 2) -> Runner:
    return Runner(path, input_names, output_names, output_dtypes, threads)
