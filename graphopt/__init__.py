"""graphopt: a compiler-style, verified graph optimizer for ONNX models.

    import graphopt
    optimized = graphopt.optimize("model.onnx", "clean,fuse")

See README.md for the CLI, the pipeline spec language and writing custom passes.
"""

from .api import optimize
from .errors import GraphoptError, VerificationError
from .io import load, save
from .ir import Model
from .pipeline import (
    Instrument,
    Pass,
    PassContext,
    PassManager,
    PassRecord,
    PassResult,
    Report,
    groups,
    list_passes,
    register_group,
    register_pass,
)
from .spec import Option

__version__ = "0.1.0"

__all__ = [
    "GraphoptError", "Instrument", "Model", "Option", "Pass", "PassContext", "PassManager",
    "PassRecord", "PassResult", "Report", "VerificationError", "groups", "list_passes", "load",
    "optimize", "register_group", "register_pass", "save",
]
