"""com.microsoft attention ops that onnxruntime's transformer optimizer writes (``Attention`` with its packed QKV
weight, ``MultiHeadAttention``, ``GroupQueryAttention``): their heads are not cut yet, so every channel they read
is blocked with that reason. What they give the rest of the graph is their output's rank (the input's: [batch,
sequence, hidden]), so that the MLP after them is analysed instead of blocked for an unknown rank. (Their
optional ``present`` key/value outputs have other ranks; decoders return them as graph outputs, which block.)
"""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, register, same_rank


@register
class FusedAttention(Handler):
    op_types = ("Attention", "MultiHeadAttention", "GroupQueryAttention")
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        ctx.block_inputs(i, f"{node.op_type} {ctx.node_label(i)}: attention heads are not cut yet")

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)
