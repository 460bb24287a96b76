"""Numerical verification of passes: property-based equivalence checking.

    from graphopt.verify import compare
    result = compare(model_a, model_b, contract="float", examples=8, seed=0)
    result.ok, result.summary, result.counterexample

`VerifyInstrument` runs the same check after every pass that changed the graph (on by
default in graphopt.optimize and the CLI). See contracts.py for the contracts and their
default tolerances, inputs.py for how inputs are drawn.
"""

from .compare import CompareResult, SignatureMismatch, compare, save_repro
from .contracts import DEFAULT_ATOL, DEFAULT_BUDGET, DEFAULT_RTOL, METRICS, Contract
from .inputs import InputSpace
from .instrument import VerifyInstrument
from .runner import Runner, RunnerUnavailable

__all__ = [
    "CompareResult", "Contract", "DEFAULT_ATOL", "DEFAULT_BUDGET", "DEFAULT_RTOL", "InputSpace",
    "METRICS", "Runner", "RunnerUnavailable", "SignatureMismatch", "VerifyInstrument", "compare",
    "save_repro",
]
