"""Numerical verification of passes: property-based equivalence checking.

    from graphopt.verify import compare
    result = compare(model_a, model_b, contract="float", examples=8, seed=0)
    result.ok, result.summary, result.counterexample

`VerifyInstrument` (graphopt.instruments.verify) runs the same check after every pass
that changed the graph (on by default in graphopt.optimize and the CLI). See contracts.py for the contracts and their
default tolerances, inputs.py for how inputs are drawn.
"""

from .compare import CompareResult, SignatureMismatch, compare, save_repro
from .contracts import DEFAULT_ATOL, DEFAULT_BUDGET, DEFAULT_RTOL, METRICS, Contract
from .inputs import InputSpace
from .runner import Runner, RunnerUnavailable

__all__ = [
    "CompareResult", "Contract", "DEFAULT_ATOL", "DEFAULT_BUDGET", "DEFAULT_RTOL", "InputSpace",
    "METRICS", "Runner", "RunnerUnavailable", "SignatureMismatch", "VerifyInstrument", "compare",
    "save_repro",
]


def __getattr__(name: str):
    # VerifyInstrument lives in graphopt.instruments.verify, which imports this package's
    # modules: it is looked up on first use so either package may be imported first
    if name == "VerifyInstrument":
        from ..instruments.verify import VerifyInstrument

        return VerifyInstrument
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
