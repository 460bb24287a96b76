"""Reproducers of a failed check: the two models, the counterexample and the command
that re-checks them, in a folder of their own."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import numpy as np
import onnx

from .result import CompareResult


def unique_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new folder `parent/<UTC date-time>-<name>` (with -2, -3... if taken), created
    here: a later run never writes into an earlier run's reproducer."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for k in range(1, 10000):
        d = parent / (f"{stamp}-{name}" if k == 1 else f"{stamp}-{name}-{k}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise OSError(f"no free reproducer folder name under {parent}")


def save_repro(
    directory: str | os.PathLike, model_a: onnx.ModelProto, model_b: onnx.ModelProto,
    result: CompareResult, *, title: str = "", extra_args: str = "",
) -> Path:
    """Write before.onnx, after.onnx, inputs.npz and README.txt to `directory`."""
    from .. import io

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    io.save(model_a, d / "before.onnx")
    io.save(model_b, d / "after.onnx")
    if result.counterexample is not None:
        arrays = {k: v for k, v in result.counterexample.items() if isinstance(v, np.ndarray)}
        np.savez(d / "inputs.npz", **arrays)
        if len(arrays) < len(result.counterexample):
            import pickle

            with open(d / "inputs.pkl", "wb") as f:   # sequences: not expressible in .npz
                pickle.dump(result.counterexample, f)
    c = result.contract
    args = [f"--contract {c.kind}"]
    if c.kind == "lossy":
        args += [f"--budget {m}={v:g}" for m, v in c.budget.items()]
    elif c.kind == "float":
        args += [f"--rtol {c.rtol:g}", f"--atol {c.atol:g}"]
    cmd = f"graphopt verify {shlex.quote(str(d / 'before.onnx'))} {shlex.quote(str(d / 'after.onnx'))} " \
          f"--samples {shlex.quote(str(d / 'inputs.npz'))} " + " ".join(args) + (f" {extra_args}" if extra_args else "")
    text = [title or "graphopt verification failure", "",
            result.message("verification failed"), "",
            "before.onnx  the model before the pass", "after.onnx   the model after the pass",
            "inputs.npz   the (shrunk) counterexample inputs, keyed by input name", "",
            "Re-check with:", f"    {cmd}", ""]
    (d / "README.txt").write_text("\n".join(text))
    result.repro = str(d)
    return d
