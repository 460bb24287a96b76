"""The instruments that ship with graphopt: hooks the pass manager calls around every
pass (graphopt.pipeline.Instrument; LLVM's pass instrumentation, TVM's PassInstrument).

    verify   VerifyInstrument: checks each pass that changed the model under its contract
             (on by default; graphopt.driver puts it first)
    stages   StageProfiler: MACs/FLOPs and latency of the model after each change (--report)
    dump     DumpAfter: saves the model after the named passes (--dump-after)
    counts   WeightCount (weight bytes around each pass), FusionHints (hints after the run)

Timing and statistics need no instrument: the pass manager records each pass's seconds,
node and weight counts and its stats in the report. The verifier and the profiler import
heavy parts (hypothesis, onnxruntime), so they are imported from their modules, e.g.
``from graphopt.instruments.verify import VerifyInstrument``.
"""

from .dump import DumpAfter

__all__ = ["DumpAfter"]
