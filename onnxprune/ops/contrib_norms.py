"""com.microsoft normalisations that onnxruntime's transformer optimizer writes on the residual stream:
``SkipLayerNormalization(input, skip, gamma, beta?, bias?)`` = LayerNorm(input + skip + bias) over the last axis,
and ``SkipSimplifiedLayerNormalization`` (RMSNorm of the sum); outputs: the normalised tensor, optional mean and
inverse standard deviation (last axis kept as 1) and optional ``input + skip + bias``.

They normalise over the hidden width, so the channels they read are blocked (cutting the hidden width, with the
statistics rewritten to keep dividing by the original width, is the transformer issue's work). What they give
the rest of the graph is their outputs' rank (every output has the input's rank), so that a MatMul reading them
(an MLP up-projection, an attention projection) is analysed instead of blocked for an unknown rank.
"""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, register, same_rank


@register
class SkipNorm(Handler):
    op_types = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        ctx.block_inputs(i, f"{node.op_type} {ctx.node_label(i)} normalises over the hidden width "
                            "(hidden-width pruning is not supported yet)")

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)
