"""com.microsoft ``EmbedLayerNormalization`` (onnxruntime's fused BERT embeddings): LayerNorm(word[input_ids] +
position[position_ids] + segment[segment_ids]) * gamma + beta, with an optional mask index and the sum of the
embeddings as further outputs.

Its output starts the residual stream, so its channels are the hidden width; they stay whole, with the reason.
The plan's contract masks the op's *output*, whose LayerNorm statistics run over every column of the tables
inside the fused kernel, and the removed columns' share of the variance (cross terms between word, position and
segment rows) cannot be rebuilt from the kept ones. Heads and MLP width downstream prune as usual; an unfused
export (Gather, Add, LayerNormalization) cuts the hidden width exactly.
"""
from __future__ import annotations

from onnx import NodeProto, helper

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, register


@register
class EmbedLayerNormalization(Handler):
    op_types = ("EmbedLayerNormalization",)
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        if any(ctx.labeled(n) is not None for n in node.input if n):
            ctx.block_inputs(i, f"EmbedLayerNormalization {ctx.node_label(i)} reads channels as ids or mask")
            return
        word = ctx.graph.const_shape(node.input[2]) if len(node.input) > 2 else None
        shape = ctx.graph.shape(node.output[0])
        width = word[1] if word is not None and len(word) == 2 else shape[-1] if shape else None
        if not isinstance(width, int):
            return
        reason = (f"EmbedLayerNormalization {ctx.node_label(i)} normalises the hidden width inside the fused op "
                  "(statistics over every table column): prune the unfused export to cut it")
        atoms = ctx.fixed(i, node.output[0], width, reason)
        if len(node.output) > 2 and node.output[2]:
            ctx.set(node.output[2], 2, atoms)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return 3

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """[batch, sequence] ids -> [batch, sequence, hidden]: a Gather of the word table."""
        nodes = [helper.make_node("Gather", [node.input[2], node.input[0]], [node.output[0]], axis=0)]
        if len(node.output) > 2 and node.output[2]:
            nodes.append(helper.make_node("Identity", [node.output[0]], [node.output[2]]))
        return nodes
