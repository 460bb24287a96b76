"""LiteRT (TensorFlow Lite): onnx2tf converts, ai-edge-litert's Interpreter runs.

onnx2tf runs in its own tool environment (graphopt.export.toolenv: its pins would
downgrade graphopt's onnx, onnxruntime and numpy), as a subprocess. Before it runs:
- node names are sanitized (TensorFlow refuses names like `Softmax@0` of Paddle exports);
- the calibration sample onnx2tf downloads for 3-channel 4-D inputs is written locally
  (seeded uniform [0, 1) data: onnx2tf uses it for its own dummy inference);
- INT8: calibration data (the real samples, else drawn inputs) is written in TF layout
  and onnx2tf's full-integer quantization (int8 weights and activations, int8 I/O)
  is used; the runner quantizes inputs and dequantizes outputs with the model's scales.

Layout: onnx2tf turns NCHW (rank >= 3) inputs and outputs into channel-last. The runner
transposes by the shapes it finds (NCHW -> NHWC in, back out) and names what it did.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .common import ConversionError, TargetRunner

log = logging.getLogger(__name__)

NAME = "tflite"
SUFFIXES = (".tflite",)
DEFAULT_SPEC = "static-shapes,clean,fuse"
INT8_SPEC = DEFAULT_SPEC  # onnx2tf quantizes itself (full integer) from the FP32 model
DRIVER = Path(__file__).with_name("_onnx2tf_driver.py")
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TIMEOUT = 1800
PSEUDO_OPS = {"Erf"}
_BAD = re.compile(r"[^A-Za-z0-9_./-]")


def available() -> str | None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return "ai-edge-litert is not installed: pip install 'graphopt[tflite]'"
    return None


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose node names TensorFlow accepts (unique, [A-Za-z0-9_./-] only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(out.graph.node):
        name = _BAD.sub("_", node.name) or f"{node.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        if name != node.name:
            renamed += 1
            node.name = name
    if renamed:
        log.info("renamed %d node(s) to names TensorFlow accepts", renamed)
    return out


def channel_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else tuple(shape)


def convert(onnx_path: Path, out_dir: Path, stem: str, *, int8: bool = False, fp16: bool = False,
            calib: list[dict] | None = None, **_: object) -> list[Path]:
    from . import toolenv

    why = available()
    if why:
        raise ConversionError(why)
    py = toolenv.python_of("onnx2tf")
    work = Path(tempfile.mkdtemp(prefix="graphopt-onnx2tf-", dir=out_dir))
    rng = np.random.default_rng(0)
    np.save(work / SAMPLE_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))
    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    # Erf has no LiteRT builtin (TF's Erf becomes a Flex op the interpreter cannot run):
    # onnx2tf's pseudo Erf is made of builtins; the verification judges its accuracy.
    pseudo = sorted(op.lower() for op in ops & PSEUDO_OPS)  # onnx2tf matches lowercase names
    if pseudo:
        log.info("onnx2tf replaces %s by builtin-only approximations", ", ".join(pseudo))
    job: dict = {"onnx": str(onnx_path), "out": str(work / "out"), "int8": int8, "calib": {}, "pseudo": pseudo}
    if int8:
        if not calib:
            raise ConversionError("INT8 LiteRT export needs calibration inputs")
        for name in calib[0]:
            arr = np.concatenate([np.asarray(c[name], np.float32) for c in calib])
            path = work / f"calib_{len(job['calib'])}.npy"
            np.save(path, np.transpose(arr, _perm(arr.ndim)) if arr.ndim >= 3 else arr)
            job["calib"][name] = str(path)
    (work / "job.json").write_text(json.dumps(job))
    env = {"PATH": f"{py.parent}:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(work)}
    try:
        proc = subprocess.run([str(py), str(DRIVER), str(work / "job.json")], cwd=work, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"onnx2tf did not finish in {TIMEOUT} s") from None
    text = (proc.stdout or "") + (proc.stderr or "")
    (out_dir / "onnx2tf.log").write_text(text)
    suffix = "full_integer_quant" if int8 else ("float16" if fp16 else "float32")
    made = work / "out" / f"{Path(onnx_path).stem}_{suffix}.tflite"
    if proc.returncode != 0 or not made.exists():
        raise ConversionError(f"onnx2tf cannot convert the model: {_reason(text)}")
    dst = out_dir / f"{stem}.tflite"
    made.replace(dst)
    return [dst]


def _perm(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim), 1)


def _reason(text: str) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    op = next((line for line in lines if "onnx_op_name" in line), "")
    err = next((line for line in reversed(lines) if line.startswith(("ERROR", "Error")) or "Error:" in line), "")
    parts = [p for p in (op, err) if p]
    return ("; ".join(parts) or (lines[-1] if lines else "no output"))[:400]


class _PlainRunner:
    """The signature runner's interface over the interpreter's tensor API: inputs keyed
    by their names without TF's `serving_default_` prefix and `:0` suffix; outputs keyed
    by position (their TF names say nothing), sorted as onnx2tf wrote them."""

    def __init__(self, interp) -> None:
        interp.allocate_tensors()
        self.interp = interp
        self.ins = {self._clean(d["name"]): d for d in interp.get_input_details()}
        self.outs = {f"output_{i:04d}": d for i, d in enumerate(interp.get_output_details())}

    @staticmethod
    def _clean(name: str) -> str:
        return re.sub(r":\d+$", "", name.removeprefix("serving_default_"))

    def get_input_details(self):
        return self.ins

    def get_output_details(self):
        return self.outs

    def __call__(self, **feeds):
        for k, v in feeds.items():
            self.interp.set_tensor(self.ins[k]["index"], v)
        self.interp.invoke()
        return {k: self.interp.get_tensor(d["index"]) for k, d in self.outs.items()}


def _norm(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).strip("_").lower()


class Runner(TargetRunner):
    backend = "litert"

    def __init__(self, path: Path, input_shapes: dict[str, tuple], output_names: list[str],
                 output_dtypes: list[np.dtype], threads: int = 2) -> None:
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter

        flex = sorted(set(re.findall(rb"Flex[A-Z][A-Za-z0-9]*", path.read_bytes())))
        if flex:
            raise ConversionError(
                f"the LiteRT model needs TensorFlow ops that LiteRT's builtin interpreter cannot run: "
                f"{', '.join(f.decode()[4:] for f in flex)} (onnx2tf emitted them as {', '.join(f.decode() for f in flex)})")
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            sigs = self.interp.get_signature_list()
            if sigs:
                key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
                self.sig = self.interp.get_signature_runner(key)
            else:  # no signature (onnx2tf writes none for some models): the plain tensor API
                self.sig = _PlainRunner(self.interp)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConversionError(f"LiteRT cannot load {path.name}: {first[:300]}") from e
        ins, outs = self.sig.get_input_details(), self.sig.get_output_details()
        self.inputs: dict[str, tuple[str, bool, dict]] = {}   # onnx name -> (tf name, transpose, details)
        notes = []
        by_norm = {_norm(k): k for k in ins}
        for name, shape in input_shapes.items():
            tf_name = name if name in ins else by_norm.get(_norm(name))
            if tf_name is None:
                raise ConversionError(f"the LiteRT model has no input '{name}' (it has {', '.join(ins)})")
            tf_shape = tuple(int(d) for d in ins[tf_name]["shape"])
            transpose = tf_shape != tuple(shape) and tf_shape == channel_last(tuple(shape))
            if tf_shape != tuple(shape) and not transpose:
                raise ConversionError(f"LiteRT input '{name}' has shape {list(tf_shape)}, expected {list(shape)}")
            if transpose:
                notes.append(f"input '{name}' channel-first -> channel-last {list(tf_shape)}")
            self.inputs[name] = (tf_name, transpose, ins[tf_name])
        out_norm = {_norm(k): k for k in outs}
        keys = []
        for i, name in enumerate(output_names):
            k = name if name in outs else out_norm.get(_norm(name))
            keys.append(k)
        if None in keys:  # onnx2tf renamed them: fall back to order
            keys = sorted(outs, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
            if len(keys) != len(output_names):
                raise ConversionError(f"the LiteRT model has {len(keys)} outputs, the ONNX model {len(output_names)}")
        self.outputs = [(k, outs[k]) for k in keys]
        self.output_dtypes = list(output_dtypes)
        self.layout = "; ".join(notes) or "inputs in the ONNX layout"
        self.quantized = any(np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] for _, _, d in self.inputs.values())

    def _feed(self, feeds):
        out = {}
        for name, (tf_name, transpose, det) in self.inputs.items():
            a = np.asarray(feeds[name])
            if transpose:
                a = np.transpose(a, _perm(a.ndim))
            scale, zp = det["quantization"]
            dt = np.dtype(det["dtype"])
            if scale and dt.kind in "iu" and a.dtype.kind == "f":
                info = np.iinfo(dt)
                a = np.clip(np.round(a / scale + zp), info.min, info.max)
            out[tf_name] = np.ascontiguousarray(a.astype(dt, copy=False))
        return out

    def _execute(self, feeds):
        res = self.sig(**self._feed(feeds))
        result = []
        for (k, det), dt in zip(self.outputs, self.output_dtypes):
            a = np.asarray(res[k])
            scale, zp = det["quantization"]
            if scale and a.dtype.kind in "iu" and np.dtype(dt).kind == "f":
                a = (a.astype(np.float32) - zp) * scale
            result.append(a.astype(dt, copy=False))
        return result

    def restore_layout(self, outs: list[np.ndarray], shapes: list[tuple]) -> list[np.ndarray]:
        """Outputs back to the ONNX layout, by shape (channel-last -> channel-first)."""
        fixed = []
        for a, want in zip(outs, shapes):
            want = tuple(want)
            if a.shape != want and a.ndim >= 3 and a.shape == channel_last(want):
                a = np.transpose(a, (0, a.ndim - 1, *range(1, a.ndim - 1)))
            fixed.append(a)
        return fixed

    def timed_call(self, feeds):
        prepared = self._feed(feeds)
        return lambda: self.sig(**prepared)


class LayoutRunner(Runner):
    """Runner that also brings outputs back to the ONNX output shapes."""

    def __init__(self, *a, output_shapes: list[tuple] | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.output_shapes = output_shapes

    def _execute(self, feeds):
        outs = super()._execute(feeds)
        if self.output_shapes:
            before = [o.shape for o in outs]
            outs = self.restore_layout(outs, self.output_shapes)
            if any(o.shape != b for o, b in zip(outs, before)) and "outputs" not in self.layout:
                self.layout += "; outputs channel-last -> channel-first"
        return outs


def runner(path: Path, input_shapes: dict[str, tuple], output_names: list[str], output_dtypes: list[np.dtype],
           output_shapes: list[tuple] | None = None, threads: int = 2) -> LayoutRunner:
    return LayoutRunner(path, input_shapes, output_names, output_dtypes, threads=threads, output_shapes=output_shapes)
