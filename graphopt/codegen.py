"""TVM code generation: ONNX -> graphopt passes -> Relax -> a library for an edge target.

    from graphopt import codegen
    result = codegen.compile_model("model.onnx", "aarch64-cortex-a72", "model.so",
                                   input_shapes={"input": (1, 3, 224, 224)})
    result.output, result.kind, result.verification

Steps (`compile_model`):

1. graphopt's pass pipeline, the front end TVM needs (default `DEFAULT_SPEC`: bind the
   input shapes and fold shape computations to constants, clean up, fuse for target
   "tvm"), each pass verified as usual;
2. import with TVM's Relax ONNX frontend (`tvm.relax.frontend.onnx.from_onnx`), weights
   embedded as constants so the library is self-contained;
3. build with `tvm.compile` (TVM's default CPU pipeline), or with MetaSchedule when
   `tune_trials` > 0: the heaviest tasks holding `tune_share` of the FLOPs are tuned, the
   records cached in `tune_cache` and reused by later builds;
4. export: a shared library (host, or a cross target whose Debian cross toolchain is
   installed), else a tar of object files plus a note how to link it;
5. verification: the host library is loaded back and checked against onnxruntime on the
   original model with graphopt's property-based checker (float contract). With `remote`
   (--rpc / --rpc-tracker, graphopt.device) the library is uploaded to the device, checked
   and timed there, and tuning measures there. Otherwise a cross artifact cannot run here,
   so the same Relax module is built for the host and that build is checked — the result
   says so.

Nothing is written unless every step succeeded; errors a user can cause (unknown arch,
TVM missing, an op TVM cannot import) are one-line `GraphoptError`s.

This module holds the named archs (`Target`, `resolve_target`) and the driver; the TVM
steps themselves (import, build, export, the runner) are in graphopt.tvm_build.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from .errors import GraphoptError, VerificationError
from .tuning import DEFAULT_TUNE_SHARE, TuneInfo  # noqa: F401 - part of this module's API
# the TVM steps (graphopt.tvm_build); these names are also used from here by graphopt.tuning,
# graphopt.device and the tests
from .tvm_build import (INSTALL_HINT, TVMRunner, build, cross_compiler, export, flatten_outputs,  # noqa: F401
                        import_onnx, link_hint, quiet_tvm, require_linker, require_tvm)

log = logging.getLogger(__name__)

# The default front end for TVM: static shapes first (TVM's importer needs constant
# Reshape targets), then the usual cleanup and fusion with TVM-compatible ops only.
DEFAULT_SPEC = "static-shapes,clean,fuse"


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A named edge target: a TVM target dict, the cross toolchain that links for it
    (a Debian gcc triplet), the qemu-user binary that could run it, its ELF machine."""

    name: str
    description: str
    tvm: dict
    toolchain: str | None = None      # e.g. "aarch64-linux-gnu" -> aarch64-linux-gnu-gcc
    apt_package: str | None = None    # the Debian package providing the toolchain
    qemu: str | None = None           # e.g. "qemu-aarch64"
    machine: str = "x86-64"           # ELF e_machine as `file` names it
    libc_package: str | None = None   # the Debian package with the target's crt files and libc
    cpu_features: tuple[str, ...] = ()  # for x86-64 presets: what the host must have to run it

    @property
    def is_host(self) -> bool:
        return self.toolchain is None

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.tvm)


_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
_A64 = ("aarch64-linux-gnu", "gcc-aarch64-linux-gnu", "qemu-aarch64", "aarch64", "libc6-dev-arm64-cross")
_RV = ("riscv64-linux-gnu", "gcc-riscv64-linux-gnu", "qemu-riscv64", "riscv", "libc6-dev-riscv64-cross")
_RV64 = {"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mcpu": "generic-rv64",
         "mattr": ["+64bit", "+m", "+a", "+f", "+d", "+c"], "mabi": "lp64d"}

_PRESETS = [
    Target("x86-64", "generic x86-64 (SSE2 baseline)",
           {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}),
    Target("x86-64-v3", "x86-64 with AVX2 and FMA (Haswell and later, Zen)",
           {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},
           cpu_features=("avx2", "fma")),
    Target("x86-64-avx512", "x86-64 with AVX-512 (Skylake-SP and later, Zen 4)",
           {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"},
           cpu_features=("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    Target("aarch64", "64-bit Arm (ARMv8-A) with NEON", dict(_AARCH64),
           *_A64),
    Target("aarch64-cortex-a53", "Cortex-A53 (Raspberry Pi 3, many SoCs), NEON",
           {**_AARCH64, "mcpu": "cortex-a53"},
           *_A64),
    Target("aarch64-cortex-a72", "Cortex-A72 (Raspberry Pi 4), NEON",
           {**_AARCH64, "mcpu": "cortex-a72"},
           *_A64),
    Target("aarch64-cortex-a76", "Cortex-A76 (Raspberry Pi 5), NEON with dot product and fp16",
           {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
           *_A64),
    Target("armv7a", "32-bit ARMv7-A, hard-float ABI with NEON/VFPv4",
           {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon", "+vfp4"],
            "mfloat-abi": "hard"},
           "arm-linux-gnueabihf", "gcc-arm-linux-gnueabihf", "qemu-arm", "arm", "libc6-dev-armhf-cross"),
    Target("riscv64", "RISC-V RV64GC (lp64d), no vector extension", dict(_RV64),
           *_RV),
    Target("riscv64-rvv", "RISC-V RV64GCV (lp64d) with the vector extension 1.0",
           {**_RV64, "mattr": _RV64["mattr"] + ["+v"]},
           *_RV),
]


def _host_target() -> Target:
    import tvm  # noqa: F401 - llvm_get_system_cpu needs the runtime
    from tvm.target import codegen as tcg

    machine = platform.machine().lower()
    triple = {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu",
              "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}.get(machine)
    spec: dict[str, Any] = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
    try:
        spec["mcpu"] = str(tcg.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - an old LLVM: generic code
        pass
    if triple:
        spec["mtriple"] = triple
    return Target("host", f"this machine ({spec.get('mcpu', machine)})", spec,
                  machine={"x86_64": "x86-64", "amd64": "x86-64"}.get(machine, machine))


def target_names() -> list[str]:
    return ["host"] + [t.name for t in _PRESETS]


def describe_targets() -> list[tuple[str, str, str]]:
    """(name, description, TVM target dict as text) for every named target."""
    out = [("host", "this machine: LLVM's detected CPU, all its cores",
            '{"kind": "llvm", "mcpu": <detected>, "num-cores": <cpus>}')]
    for t in _PRESETS:
        out.append((t.name, t.description, str(t.tvm)))
    return out


def resolve_target(name: str) -> Target:
    """The named target; GraphoptError listing the names when unknown."""
    if name == "host":
        require_tvm()
        return _host_target()
    for t in _PRESETS:
        if t.name == name:
            return t
    raise GraphoptError(f"unknown arch '{name}' (archs: {', '.join(target_names())})")


def host_can_run(target: Target) -> bool:
    """Whether binaries for `target` run natively on this machine."""
    if target.name == "host":
        return True
    if target.toolchain is not None or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        return all(f in flags for f in target.cpu_features)
    except OSError:
        return False


# ---------------------------------------------------------------------------- import


def static_input_shapes(model: onnx.ModelProto, given: dict | None = None, batch: int = 1) -> dict[str, tuple]:
    """Concrete shapes of every graph input: `given` first, leading symbolic dims bound to
    `batch`. GraphoptError naming the input when a dim stays unknown."""
    from .analysis.shapes import resolve_input_shapes

    bound, _ = resolve_input_shapes(model, given or {}, batch=batch)
    for name, shape in bound.items():
        if shape is None or not all(isinstance(d, int) for d in shape):
            shown = "unknown rank" if shape is None else "[" + ", ".join(
                str(d) if isinstance(d, int) else "?" for d in shape) + "]"
            raise GraphoptError(
                f"input '{name}' has no static shape ({shown}); TVM builds for static shapes: "
                f"give --input-shape {name}=" + ("1x3x224x224" if shape is None else
                                                 "x".join(str(d) if isinstance(d, int) else "N"
                                                          for d in shape)))
    return {k: tuple(v) for k, v in bound.items()}


# ---------------------------------------------------------------------------- the driver


@dataclass
class CompileResult:
    output: str
    kind: str                         # "shared library" | "object archive"
    target: str
    target_spec: dict
    input_shapes: dict[str, tuple]
    verification: str = ""           # one line: what was checked and how
    verified: str = "no"             # "device" | "artifact" | "host build" | "no"
    device: dict | None = None       # with --rpc: where it ran, upload time, latency there
    link_hint: str = ""
    tuning: TuneInfo | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    report: Any = None               # the pass pipeline's Report
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(output=self.output, kind=self.kind, target=self.target,
                 target_spec=self.target_spec,
                 input_shapes={k: list(v) for k, v in self.input_shapes.items()},
                 verified=self.verified, verification=self.verification,
                 seconds={k: round(v, 3) for k, v in self.seconds.items()},
                 nodes_before=self.nodes_before, nodes_after=self.nodes_after, notes=self.notes)
        if self.link_hint:
            d["link_hint"] = self.link_hint
        if self.tuning is not None:
            d["tuning"] = self.tuning.as_dict()
        if self.device is not None:
            d["device"] = self.device
        if self.report is not None:
            d["pipeline"] = self.report.as_dict()
        return d


def front_end(model: onnx.ModelProto, spec: str, input_shapes: dict[str, tuple], *,
              verify: bool = True, verify_options: dict | None = None, seed: int = 0,
              input_ranges: dict | None = None, samples: list | None = None, progress=None):
    """Run graphopt's passes for TVM: (optimized proto, report)."""
    from .driver import pass_manager, run_pipeline
    from .pipeline import PassContext

    ctx = PassContext(target="tvm", input_shapes=dict(input_shapes), seed=seed,
                      input_ranges=dict(input_ranges or {}), samples=samples)
    manager = pass_manager(spec, ctx, verify=verify, verify_options=verify_options, progress=progress)
    out, _, report = run_pipeline(model, manager)
    return out, report


def compile_model(
    model: onnx.ModelProto | str | os.PathLike,
    target: str,
    output: str | os.PathLike,
    *,
    spec: str | None = None,
    input_shapes: dict | None = None,
    input_ranges: dict | None = None,
    samples: list | str | os.PathLike | None = None,
    tune_trials: int = 0,
    tune_cache: str | os.PathLike | None = None,
    tune_share: float = DEFAULT_TUNE_SHARE,
    verify: bool = True,
    verify_passes: bool = True,
    examples: int = 8,
    seed: int = 0,
    archive: bool = False,
    remote=None,
    progress: Callable[[str], None] | None = None,
) -> CompileResult:
    """Compile an ONNX model with TVM for a named target and write the library to
    `output` (see the module docstring). Raises GraphoptError (exit 2) for bad input and
    VerificationError (exit 1) when the compiled module disagrees with onnxruntime.

    With `remote` (graphopt.device.Remote: --rpc / --rpc-tracker) the library is uploaded
    to the device, verified there against onnxruntime on this machine, and timed there
    with TVM's time evaluator; tuning then measures on the device too."""
    from . import io

    times: dict[str, float] = {}
    tgt = resolve_target(target)     # unknown target: fail before loading anything
    require_tvm()
    if tune_trials < 0:
        raise GraphoptError("--tune-trials must be 0 or more")
    if not 0.0 < tune_share <= 1.0:
        raise GraphoptError("--tune-share must be in (0, 1]")
    if tune_trials and remote is None and "num-cores" not in tgt.tvm and host_can_run(tgt):
        import dataclasses

        tgt = dataclasses.replace(tgt, tvm={**tgt.tvm, "num-cores": os.cpu_count() or 1})
    if tune_trials and remote is None and not host_can_run(tgt):
        raise GraphoptError(
            f"tuning measures candidates by running them: target '{tgt.name}' does not run on "
            "this machine (tune on the device: --rpc HOST:PORT or --rpc-tracker HOST:PORT "
            "--rpc-key KEY, or build untuned)")
    if remote is not None:
        if archive:
            raise GraphoptError("--archive writes object files, which cannot be run on the device: "
                                "drop --archive to use --rpc")
        if tgt.toolchain is not None:
            require_linker(tgt)   # the device loads a shared library linked here
        from . import device

        if progress:
            progress(f"connecting to {remote.where}")
        about = device.probe(remote)   # a bad address fails now, not after the build
        if tune_trials and "num-cores" not in tgt.tvm:  # MetaSchedule wants the device's cores
            import dataclasses

            tgt = dataclasses.replace(tgt, tvm={**tgt.tvm, "num-cores": about["threads"]})
    src_paths: tuple = ()
    if not isinstance(model, onnx.ModelProto):
        src_paths = (model,)
        model = io.load(model)
    out = Path(output)
    io.check_destination(out, protect=src_paths)
    # one loader and one check for samples (graphopt.samples): a path is loaded, names,
    # dtypes and ranks are checked against the model, extra arrays dropped with a note
    from .samples import prepare_samples

    samples = prepare_samples(samples, model)
    t0 = time.perf_counter()
    shapes = static_input_shapes(model, input_shapes)
    from .samples import fit_samples

    samples = fit_samples(samples, shapes)   # a batch of 64 rows is 64 samples at batch 1
    spec = DEFAULT_SPEC if spec is None else spec
    if spec.strip():
        optimized, report = front_end(model, spec, shapes, verify=verify and verify_passes,
                                      verify_options={"seed": seed}, seed=seed,
                                      input_ranges=input_ranges, samples=samples, progress=progress)
    else:
        optimized, report = model, None
    times["passes"] = time.perf_counter() - t0
    if progress:
        progress("importing into TVM")
    t0 = time.perf_counter()
    hint = ""
    if report is None or not any(r.name == "bind-shapes" for r in report.records):
        hint = f" (hint: run graphopt's static-shapes passes first, e.g. -p {DEFAULT_SPEC})"
    mod = import_onnx(optimized, shapes, hint=hint)
    times["import"] = time.perf_counter() - t0
    if progress:
        progress(f"building for {tgt.name}")
    t0 = time.perf_counter()
    ex, tune = build(mod, tgt, tune_trials=tune_trials, tune_cache=tune_cache, tune_share=tune_share,
                     progress=progress, remote=remote)
    times["build"] = time.perf_counter() - t0

    result = CompileResult(output=str(out), kind="", target=tgt.name, target_spec=dict(tgt.tvm),
                           input_shapes=shapes, tuning=tune, report=report,
                           nodes_before=len(model.graph.node), nodes_after=len(optimized.graph.node))
    in_names = list(shapes)
    out_names = [o.name for o in optimized.graph.output]
    with tempfile.TemporaryDirectory(prefix=".graphopt-compile-", dir=str(out.parent if str(out.parent) else ".")) as tmp:
        t0 = time.perf_counter()
        written, kind, link = export(ex, tgt, Path(tmp) / out.name, archive=archive)
        times["export"] = time.perf_counter() - t0
        result.kind, result.link_hint = kind, link
        if remote is not None:
            _on_device(remote, written, model, optimized, shapes, in_names, out_names, verify=verify,
                       examples=examples, seed=seed, result=result, times=times,
                       input_ranges=input_ranges, samples=samples, progress=progress)
        elif verify:
            if progress:
                progress("verifying against onnxruntime")
            t0 = time.perf_counter()
            if host_can_run(tgt) and kind == "shared library":
                runner = TVMRunner.load(written, in_names, out_names)
                what, result.verified = "the compiled library", "artifact"
            else:
                host_ex, _ = build(mod, _host_target())
                runner = TVMRunner(host_ex, in_names, out_names)
                what, result.verified = "the host build of the same module", "host build"
            _check(model, optimized, runner, shapes, examples=examples, seed=seed, result=result,
                   what=what, input_ranges=input_ranges, samples=samples)
            times["verify"] = time.perf_counter() - t0
            if result.verified == "host build":
                result.verification += "; " + _emulation_note(tgt)
        else:
            result.verification = "not verified (--no-verify)"
        final = out if written.suffix == out.suffix or kind == "shared library" else out.with_suffix(".tar")
        if final != out:
            io.check_destination(final, protect=src_paths)
        os.replace(written, final)
        result.output = str(final)
    if result.kind == "object archive":
        result.link_hint = link_hint(tgt, final, link)
    if tune is not None and tune.tasks_failed:
        result.notes.append(
            f"tuning measured nothing for {tune.tasks_failed} of {tune.tasks_tuned} tasks (every trial "
            f"failed; they keep TVM's default schedules, nothing was recorded, the next build tunes "
            f"them again): {tune.failures[0]}")
    if tune is not None and remote is not None:
        result.notes.append("schedules were ranked by times measured on the device; times from an "
                            "emulated board (qemu) do not reflect real hardware")
    result.seconds = times
    return result


def _on_device(remote, library: Path, model, optimized, shapes, in_names, out_names, *, verify: bool,
               examples: int, seed: int, result: CompileResult, times: dict, input_ranges=None,
               samples=None, progress=None) -> None:
    """Upload the library to the device, check it there against onnxruntime, time it there."""
    from . import device

    t0 = time.perf_counter()
    if progress:
        progress(f"uploading to {remote.where}")
    with device.connect(remote) as sess:
        runner = sess.load(library, in_names, out_names)
        times["upload"] = time.perf_counter() - t0
        info = dict(remote.as_dict(), upload_load_s=round(runner.load_seconds, 3),
                    connect_s=round(sess.connect_seconds, 3))
        if verify:
            if progress:
                progress(f"verifying on {remote.where} against onnxruntime")
            t0 = time.perf_counter()
            result.verified = "device"   # _check sets "no" when nothing could be checked
            _check(model, optimized, runner, shapes, examples=examples, seed=seed, result=result,
                   what=f"the compiled library on {remote.where}", input_ranges=input_ranges,
                   samples=samples)
            times["verify"] = time.perf_counter() - t0
            info["runs_checked"] = runner.runs
        else:
            result.verification = f"not verified (--no-verify); ran on {remote.where}"
        if progress:
            progress(f"timing on {remote.where}")
        t0 = time.perf_counter()
        from .runtime import random_inputs

        feeds = random_inputs(model, seed=seed, shapes=shapes, normal=True)[0]  # floats standard normal
        info["latency"] = {k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in runner.latency(feeds).items()}
        times["device_timing"] = time.perf_counter() - t0
    info["checked_on"] = "device" if result.verified == "device" else "not checked"
    result.device = info


def _check(reference: onnx.ModelProto, optimized: onnx.ModelProto, runner: TVMRunner,
           shapes: dict, *, examples: int, seed: int, result: CompileResult, what: str,
           input_ranges: dict | None = None, samples: list | None = None) -> None:
    from .verify import compare

    cmp = compare(reference, optimized, "float", examples=examples, seed=seed,
                  input_shapes=shapes, input_ranges=input_ranges, samples=samples, runner_b=runner,
                  label=f"verifying {what}")
    if cmp.skipped:
        result.verification = f"{what}: not verified ({cmp.reason})"
        result.verified = "no"
        return
    if not cmp.ok:
        raise VerificationError(cmp.message(f"TVM's {what} differs from onnxruntime"))
    result.verification = f"{what} vs onnxruntime (float contract): {cmp.summary}"


def _emulation_note(target: Target) -> str:
    hint = " (tools/emulated-aarch64.sh start, or a board)" if target.machine == "aarch64" else ""
    return (f"not run on {target.machine}: give --rpc HOST:PORT, a TVM RPC server on the "
            f"device{hint}, to check the library itself there")
