"""Fusion passes (group `fuse`): folds, activation and transformer fusions, onnxruntime contrib
fusions, layout merges and the opset upgrade they may need.

Each rule is declared once (`rule.Rule`): the ops it anchors on, `match` (None when the
pattern's first level does not start at a node, a short human reason when a candidate is
refused), `rewrite`, and `emits`, the targets and opsets it may emit for. The pass reports
how many times it fired and why candidates were refused:
`{"fused": 0, "refused": 2, "reasons": {"scores not scaled by 1/sqrt(head size)": 2}}`.

Families: `fold` (BatchNorm, affine, Gemm, Pad), `activation` (HardSwish, Gelu, Relu/Clip),
`transformer` (LayerNorm, BiasGelu, SkipLayerNorm) and `attention`, `ort` (FusedConv /
FusedGemm), `layout` (Transpose / Reshape merges), `opset` (upgrade-opset).

Targets: 'onnx' and 'tvm' get standard ops only, and only those the model's opset has
(HardSwish >= 14, LayerNormalization >= 17, Gelu >= 20); 'ort' additionally gets
com.microsoft FusedConv / FusedGemm / Gelu / BiasGelu / SkipLayerNormalization / Attention.

Why not onnxscript's rewriter: its rules (pattern / check returning MatchResult.fail(reason)
/ rewrite) are the model for ours, but it works on onnx_ir, while graphopt's IR, its scope
rules (names subgraphs read, graph outputs) and every other pass are onnx-graphsurgeon; our
checks are walks a dataflow pattern does not express (exporters' Shape/Gather/Concat
reshape spellings, inferred symbolic shapes, the closure of shape nodes an Attention
match absorbs), and adopting it would add onnxscript + onnx_ir and a conversion per pass.
"""

from graphopt import register_group

from .activation import FuseClip, FuseGelu, FuseHardSwish
from .attention import FuseAttention
from .fold import FoldAffine, FoldBatchNorm, FoldPad, FuseGemm
from .layout import MergeReshape, MergeTranspose
from .opset import UpgradeOpset
from .ort import FuseOrtActivation
from .rule import Rule
from .transformer import FuseBiasGelu, FuseLayerNorm, FuseSkipLayerNorm

__all__ = ["FoldAffine", "FoldBatchNorm", "FoldPad", "FuseAttention", "FuseBiasGelu", "FuseClip", "FuseGelu",
           "FuseGemm", "FuseHardSwish", "FuseLayerNorm", "FuseOrtActivation", "FuseSkipLayerNorm", "MergeReshape",
           "MergeTranspose", "Rule", "UpgradeOpset"]

register_group(
    "fuse",
    ["upgrade-opset", "fold-pad", "fold-bn", "fold-affine", "fuse-gemm", "fuse-clip", "fuse-hardswish",
     "fuse-gelu", "fuse-layernorm", "merge-transpose", "merge-reshape", "fuse-ort-activation",
     "fuse-bias-gelu", "fuse-skip-layernorm", "fuse-attention"],
    "fold BatchNorm into Conv/Gemm, fuse activations", fixed_point=True,
)
