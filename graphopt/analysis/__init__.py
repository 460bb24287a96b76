"""Model analysis: FLOPs/MACs, parameters, memory and latency (what `graphopt profile` shows).

    from graphopt.analysis import count_macs, profile_model
    count_macs(model, {"input": (1, 3, 224, 224)}).total     # multiply-accumulates
"""

from .flops import MacCount, NodeCost, count_macs
from .latency import LatencyResult, measure_latency
from .memory import (ActivationMemory, MeasuredMemory, ParamCount, count_params,
                     estimate_activation_memory, measure_session_memory)
from .profile import BatchProfile, Profile, profile_model
from .shapes import ShapeInfo, infer_shapes, resolve_input_shapes

__all__ = [
    "ActivationMemory", "BatchProfile", "LatencyResult", "MacCount", "MeasuredMemory", "NodeCost",
    "ParamCount", "Profile", "ShapeInfo", "count_macs", "count_params", "estimate_activation_memory",
    "infer_shapes", "measure_latency", "measure_session_memory", "profile_model",
    "resolve_input_shapes",
]
