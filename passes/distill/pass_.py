"""Pass `distill`: fine-tune the model's weights so that its outputs match a teacher's.

The teacher is, by default, the model as it entered the pipeline's first lossy pass (the
PassManager keeps that copy in `PassContext.teacher` when the pipeline has a `distill`),
or `teacher=PATH`. Only the float weights and biases of Conv/Gemm/MatMul are trained
(BatchNormalization runs with its running statistics); the trained values are written
back into the same initializers (or Constant nodes), so the graph is unchanged except for
those values. Needs torch: `pip install 'graphopt[distill]'`. See docs/distill.md.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import GraphoptError, Model, Option, Pass, PassContext, PassResult, register_pass
from graphopt.pipeline import budget_options

log = logging.getLogger("graphopt.passes.distill")


@register_pass("distill")
class Distill(Pass):
    """Knowledge distillation: fine-tune Conv/Gemm/MatMul weights towards a teacher on the samples (torch)."""

    contract = "lossy"
    # Judged by the verifier against the model before this pass (which the training moves
    # away from, towards the teacher): a loose bound that separates "fine-tuned" from
    # "destroyed"; the pass itself judges against the teacher on held-out samples and
    # keeps the weights when training did not help there.
    budget = {"cosine": 0.5}
    wants_teacher = True  # the PassManager keeps the pipeline's pre-lossy model for us
    options = {
        "teacher": Option(str, "", "teacher model path (default: the model as it entered the pipeline's "
                          "first lossy pass)"),
        "steps": Option(int, 1000, "optimizer steps (time_limit may stop earlier)"),
        "lr": Option(float, 5e-4, "Adam learning rate (cosine decay to 0); 1e-4..1e-3 worked"),
        "temperature": Option(float, 4.0, "softening temperature of the KL term for classifier outputs"),
        "batch": Option(int, 16, "samples per step"),
        "time_limit": Option(float, 300.0, "stop training after this many seconds"),
        "holdout": Option(float, 0.2, "fraction of the sample rows held out to judge the result"),
        "augment": Option(bool, True, "shift (images) and noise augmentation of the samples"),
        **budget_options(budget),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        if self.steps < 1 or self.batch < 1:
            raise GraphoptError("pass 'distill': steps and batch must be >= 1")
        if not 1e-7 <= self.lr <= 1.0:
            raise GraphoptError(f"pass 'distill': lr {self.lr} is out of range (1e-7..1)")
        if self.temperature <= 0 or self.time_limit <= 0:
            raise GraphoptError("pass 'distill': temperature and time_limit must be > 0")
        if not 0.0 <= self.holdout < 1.0:
            raise GraphoptError("pass 'distill': holdout must be in [0, 1)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not ctx.samples:
            raise GraphoptError("distill needs samples (--samples): the inputs it fine-tunes on")
        student = model.to_onnx()
        if self.teacher:
            from graphopt import io

            teacher = io.load(self.teacher)
        else:
            teacher = ctx.teacher
            if teacher is None or teacher.SerializeToString() == student.SerializeToString():
                log.info("distill: no teacher (distill is the first lossy pass); give teacher=PATH")
                return PassResult(False, {"reason": "no teacher: the model is the pipeline's input to lossy passes"})
        if [i.name for i in teacher.graph.input] != [i.name for i in student.graph.input]:
            raise GraphoptError("distill: the teacher's inputs differ from the model's")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise GraphoptError("pass 'distill' needs torch: pip install 'graphopt[distill]'") from None
        from .train import Settings, distill

        cfg = Settings(steps=self.steps, lr=self.lr, temperature=self.temperature, batch=self.batch,
                       time_limit=self.time_limit, holdout=self.holdout, augment=self.augment, seed=ctx.seed)
        trained, stats = distill(student, teacher, ctx.samples, cfg)
        if trained is None:
            return PassResult(False, stats)
        write_back(model, trained)
        return PassResult(True, stats)


def write_back(model: Model, weights: dict[str, np.ndarray]) -> None:
    """Put trained values into the tensors of the same name (shape and dtype unchanged)."""
    tensors = model.graph.tensors()
    for name, value in weights.items():
        t = tensors.get(name)
        if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
            t = t.inputs[0].attrs["value"]
        if not isinstance(t, gs.Constant):
            raise GraphoptError(f"internal: distill cannot write back '{name}'")
        old = np.asarray(t.values)
        if old.shape != value.shape or old.dtype != value.dtype:
            raise GraphoptError(f"internal: distill changed '{name}' from {old.shape}/{old.dtype} "
                                f"to {value.shape}/{value.dtype}")
        t.values = np.ascontiguousarray(value)
