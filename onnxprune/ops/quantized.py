"""Quantized ops: their channels are shown as blocked groups, never cut (prune the float model first)."""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, register
from onnxprune.ops.conv import fixed_output


@register
class Quantized(Handler):
    op_types = ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        reason = f"quantized op {node.op_type} ({ctx.node_label(i)}): prune the float model before quantizing"
        ctx.block_inputs(i, reason)
        fixed_output(i, node, ctx, reason)
