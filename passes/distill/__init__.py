"""Knowledge distillation (pass `distill`) behind the optional `distill` extra (torch).

interp: the ONNX -> torch interpreter; train: the teacher/student loop; pass_: the
pass. torch is imported only when the pass runs.
"""

from . import pass_  # noqa: F401  (registers `distill`)
