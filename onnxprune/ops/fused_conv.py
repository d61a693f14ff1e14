"""com.microsoft FusedConv (onnxruntime's Conv + activation, with an optional residual input Z added before the
activation): a Conv whose output channels are also tied to Z's, like a residual ``Add``."""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, register
from onnxprune.ops.conv import Conv


@register
class FusedConv(Conv):
    op_types = ("FusedConv",)
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        super().propagate(i, node, ctx)
        z = node.input[3] if len(node.input) > 3 else ""
        out = ctx.labeled(node.output[0])
        if not z or out is None:
            return
        lz = ctx.labeled(z)
        if lz is None or lz.axis != 1 or lz.size != out.size:
            ctx.block(out.atoms, f"FusedConv {ctx.node_label(i)} adds a sum input Z whose channels cannot follow")
            return
        ctx.tie(out.atoms, lz.atoms)
