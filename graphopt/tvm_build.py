"""TVM's side of `graphopt compile`: import an ONNX model into Relax, build it (default
schedules, or MetaSchedule through graphopt.tuning), export the library (linked here
with the arch's cross gcc, or a tar of objects), and run it as a verification runner.

graphopt.codegen drives these steps for a named arch (graphopt.codegen.Target); the
functions here take that Target and know nothing of presets.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx

from .errors import GraphoptError
from .tuning import DEFAULT_TUNE_SHARE, SPIN_ENV

if TYPE_CHECKING:
    from .codegen import Target

log = logging.getLogger(__name__)

INSTALL_HINT = "TVM is not installed: pip install 'graphopt[tvm]'"


# ---------------------------------------------------------------------------- TVM


def require_tvm():
    # TVM's thread pool spins by default; graphopt's onnxruntime sessions do not
    # (allow_spinning=0), so neither does TVM: on a shared machine a spinning pool
    # measured 15.5 ms vs 1.4 ms for the tuned digits CNN (benchmarks/results/compile.md)
    os.environ.setdefault(SPIN_ENV, "0")
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError:
        raise GraphoptError(INSTALL_HINT) from None
    except Exception as e:  # noqa: BLE001 - a broken install
        raise GraphoptError(f"TVM cannot be loaded ({str(e).splitlines()[0][:200]}); "
                            "reinstall with pip install 'graphopt[tvm]'") from None
    return tvm


def cross_compiler(target: Target) -> str | None:
    """The cross gcc for `target` if installed (None for host-like targets)."""
    if target.toolchain is None:
        return None
    return shutil.which(f"{target.toolchain}-gcc")


# ---------------------------------------------------------------------------- quiet TVM


@contextlib.contextmanager
def quiet_tvm():
    """TVM's C++ side logs warnings straight to fd 2 and its ONNX importer prints to
    stdout; capture both (logged at debug level) so the CLI shows only its own lines."""
    import sys

    buf = _io.StringIO()
    saved_fd = None
    tmp = None
    try:
        sys.stderr.flush()
        tmp = tempfile.TemporaryFile(mode="w+b")
        saved_fd = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except (OSError, ValueError):
        saved_fd = None
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            tmp.close()
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines:
                log.debug("TVM (stderr, %d lines): %s", len(lines), "\n".join(lines[-20:]))
        if buf.getvalue().strip():
            log.debug("TVM (stdout): %s", buf.getvalue().strip()[-2000:])


# ---------------------------------------------------------------------------- import


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types in the main graph that TVM's Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


def import_onnx(model: onnx.ModelProto, input_shapes: dict[str, tuple], *, hint: str = ""):
    """A Relax IRModule of the model, weights bound as constants. GraphoptError (one line,
    naming the ops or the failing op) when TVM cannot import it."""
    require_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_ops(model)
    if missing:
        raise GraphoptError(
            f"TVM's Relax ONNX frontend does not support {', '.join(missing)} "
            f"({_count_nodes(model, missing)}); the model cannot be compiled with TVM")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    message = ""
    with quiet_tvm() as out:
        try:
            mod = from_onnx(model, shape_dict={k: list(v) for k, v in input_shapes.items()},
                            opset=opset, keep_params_in_input=False)
        except Exception as e:  # noqa: BLE001 - the importer raises anything
            log.debug("TVM's ONNX importer failed", exc_info=True)
            op = _failing_op(out.getvalue())
            message = f"TVM's ONNX importer failed{f' at {op}' if op else ''}: {first_line(e)}{hint}"
            e.__traceback__ = None
            del e
            import gc

            gc.collect()  # TVM warns about its half-built module when that is freed
    if message:
        raise GraphoptError(message)
    return mod


def _count_nodes(model: onnx.ModelProto, ops: list[str]) -> str:
    names = [n.name or n.op_type for n in model.graph.node if n.op_type in ops]
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"node{'s' if len(names) != 1 else ''} {shown}"


def _failing_op(printed: str) -> str:
    m = re.findall(r"Error converting operator (\w+)", printed)
    return m[-1] if m else ""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors end with the message after a traceback of C++ frames
    for ln in reversed(lines):
        if not ln.startswith(("File ", "at ", "^", "  ")) and not re.match(r"^\d+:", ln):
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


# ---------------------------------------------------------------------------- build


def build(mod, target: Target, *, tune_trials: int = 0, tune_cache: str | os.PathLike | None = None,
          tune_share: float = DEFAULT_TUNE_SHARE, progress: Callable[[str], None] | None = None,
          remote=None):
    """(executable, TuneInfo | None): `mod` built for `target`. Untuned: TVM's default
    CPU pipeline. Tuned: MetaSchedule (graphopt.tuning), measuring on this machine or, with
    `remote` (graphopt.device.Remote), on the device over RPC; the heaviest tasks holding
    `tune_share` of the estimated FLOPs are tuned, the light rest keep default schedules."""
    tvm = require_tvm()
    ttarget = target.tvm_target()
    try:
        if tune_trials <= 0:
            with quiet_tvm():
                return tvm.compile(mod, target=ttarget), None
        from .tuning import tuned_build

        gcc = cross_compiler(target)
        if target.toolchain is not None:
            require_linker(target)
        return tuned_build(mod, ttarget, tune_trials, tune_cache, tune_share, progress,
                           remote=remote, cross_gcc=gcc)
    except GraphoptError:
        raise
    except Exception as e:  # noqa: BLE001
        raise GraphoptError(f"TVM failed to build for {target.name}: {first_line(e)}") from e


def require_linker(target: Target) -> str:
    """The cross gcc, with the target's C library present; GraphoptError naming the
    Debian package that is missing."""
    gcc = cross_compiler(target)
    if gcc is None:
        raise GraphoptError(f"{target.toolchain}-gcc not found: apt-get install {target.apt_package}")
    if target.libc_package and not Path(f"/usr/{target.toolchain}/lib/crti.o").exists():
        raise GraphoptError(f"the {target.machine} C library for linking is missing "
                            f"(no /usr/{target.toolchain}/lib/crti.o): apt-get install {target.libc_package}")
    return gcc


# ---------------------------------------------------------------------------- export


def export(ex, target: Target, path: Path, *, archive: bool = False) -> tuple[Path, str, str]:
    """Write the executable: (path written, kind, why an archive). A shared library when
    the target is the host or its cross gcc is installed (and not `archive`), else a tar
    of object files (`path` with suffix .tar; see `link_hint`)."""
    gcc = cross_compiler(target)
    with quiet_tvm():
        if not archive and (target.is_host or gcc):
            if target.is_host:
                ex.export_library(str(path))
            else:
                from tvm.support import cc

                require_linker(target)
                try:
                    ex.export_library(str(path), fcompile=cc.cross_compiler(gcc))
                except Exception as e:  # noqa: BLE001 - the linker's message, on one line
                    msg = first_line(e)
                    hint = f" (apt-get install {target.libc_package})" if target.libc_package and \
                        re.search(r"cannot find (crt|-lc\b)|crti\.o", str(e)) else ""
                    raise GraphoptError(f"linking for {target.name} with {Path(gcc).name} failed: "
                                        f"{msg}{hint}") from None
            return path, "shared library", ""
        tar = path if path.suffix == ".tar" else path.with_suffix(".tar")
        ex.export_library(str(tar))
    why = "" if archive or not target.apt_package else \
        f" ({target.toolchain}-gcc not found; apt-get install {target.apt_package})"
    return tar, "object archive", why


def link_hint(target: Target, tar: Path, why: str = "") -> str:
    """One line: how to turn the object archive into a shared library."""
    compiler = f"{target.toolchain}-gcc" if target.toolchain else "gcc"
    return (f"wrote an object archive{why}; link it with: mkdir objs && tar -xf {tar.name} -C objs "
            f"&& {compiler} -shared -fPIC -o {tar.stem}.so objs/*.o")


# ---------------------------------------------------------------------------- running


class TVMRunner:
    """Runs a compiled Relax VM module with the interface of graphopt.verify.Runner, so
    `graphopt.verify.compare` can check it against onnxruntime."""

    def __init__(self, lib, input_names: list[str], output_names: list[str], note: str = "") -> None:
        import tvm
        from tvm import relax

        self._tvm = tvm
        self.device = tvm.cpu()
        with quiet_tvm():
            self.vm = relax.VirtualMachine(lib, self.device)
        self.main = self.vm["main"]
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.backend = "tvm"
        self.note = note
        self.runs = 0

    @classmethod
    def load(cls, path: str | os.PathLike, input_names, output_names) -> "TVMRunner":
        import tvm

        return cls(tvm.runtime.load_module(str(path)), input_names, output_names)

    def arguments(self, feeds: dict[str, np.ndarray]) -> list:
        return [self._tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), self.device)
                for n in self.input_names]

    def call(self, args: list):
        return self.main(*args)

    def run(self, feeds: dict[str, np.ndarray], cache: bool = True) -> list[np.ndarray]:
        from .verify.runner import InvalidInput

        try:
            self.runs += 1
            out = self.main(*self.arguments(feeds))
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(first_line(e)) from e
        return flatten_outputs(out)


def flatten_outputs(out) -> list[np.ndarray]:
    """A Relax VM's result (a tensor or nested tuples of them) as a flat list of arrays."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    res: list[np.ndarray] = []
    for item in out:
        res.extend(flatten_outputs(item))
    return res
