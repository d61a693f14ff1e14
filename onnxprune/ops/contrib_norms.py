"""com.microsoft normalisations that onnxruntime's transformer optimizer writes on the residual stream:
``SkipLayerNormalization(input, skip, gamma, beta?, bias?)`` = LayerNorm(input + skip + bias) over the last axis,
and ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`` (RMSNorm of the sum); outputs: the normalised
tensor, optional mean and inverse standard deviation, and optional ``input + skip + bias``.

The hidden width they normalise is cut like a LayerNorm's: input and skip are tied, gamma/beta/bias follow the
channels. SkipLayerNormalization is written out (the sum, then :func:`onnxprune.ops.norm.exact_norm`) so the
statistics keep dividing by the original width -- exact, at the price of the fused kernel; the RMS form stays one
fused node with a rescaled epsilon and gamma (:func:`onnxprune.ops.norm.rescaled_rms`), exact too. A graph that
reads the mean or inverse standard deviation outputs blocks the channels. Every output has the input's rank.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto
from onnx import helper as h

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register, same_rank
from onnxprune.ops.norm import exact_norm, rescaled_rms


def _ports(node: NodeProto) -> tuple[str, str, str]:
    """(gamma, beta, bias) input names ("" where absent)."""
    inputs = list(node.input) + [""] * 5
    if node.op_type == "SkipSimplifiedLayerNormalization":
        return inputs[2], "", inputs[3]
    return inputs[2], inputs[3], inputs[4]


@register
class SkipNorm(Handler):
    op_types = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx, ls = ctx.labeled(node.input[0]), ctx.labeled(node.input[1])
        if lx is None and ls is None:
            return
        label = f"{node.op_type} {ctx.node_label(i)}"
        rank = ctx.graph.rank(node.input[0])
        if lx is None or ls is None or rank is None or lx.axis != rank - 1 or ls.axis != lx.axis \
                or lx.size != ls.size:
            ctx.block_inputs(i, f"{label} adds the channels to a fixed operand")
            return
        if any(ctx.graph.consumer_nodes(o) for o in node.output[1:3] if o):
            ctx.block_inputs(i, f"{label}: its mean or inverse standard deviation is read")
            return
        gamma, beta, bias = _ports(node)
        if not all(ctx.graph.is_const(p) for p in (gamma, beta, bias) if p):
            ctx.block_inputs(i, f"{label} has computed parameters")
            return
        ctx.tie(lx.atoms, ls.atoms)
        for name, role in ((gamma, "norm"), (beta, "bias"), (bias, "const")):
            if name:
                ctx.weight(name, lx.atoms, role, i, axis=len(ctx.graph.shape(name) or (0,)) - 1)
        ctx.tag(lx.atoms, "hidden")
        for out in (node.output[0], node.output[3] if len(node.output) > 3 else ""):
            if out:
                ctx.set(out, lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        gamma, beta, bias = _ports(node)
        size = rw.label(node.input[0]).size
        removed = rw.const(bias).reshape(-1)[np.setdiff1d(np.arange(size), keep)] if bias else None
        if node.op_type == "SkipSimplifiedLayerNormalization":  # inside the op, the bias is not masked
            epsilon, scale = rescaled_rms(rw.const(gamma), keep, size, float(attr(node, "epsilon", 1e-12)), removed)
            rw.set_attr(i, "epsilon", epsilon)
            rw.set_input(i, 2, scale)
            if bias:
                rw.set_input(i, 3, rw.const(bias)[..., keep])
            return
        base = (node.name or f"{node.op_type}_{i}").replace("/", "_")
        total = node.output[3] if len(node.output) > 3 and node.output[3] else rw.fresh(f"{base}_sum")
        summed = rw.fresh(f"{base}_input_skip") if bias else total
        nodes = [h.make_node("Add", [node.input[0], node.input[1]], [summed])]
        constants = {}
        if bias:
            kept_bias = rw.fresh(f"{base}_bias_kept")
            constants[kept_bias] = rw.const(bias)[..., keep]
            nodes.append(h.make_node("Add", [summed, kept_bias], [total]))
        norm_nodes, norm_constants = exact_norm(rw, base, total, node.output[0], keep, size, gamma, beta or None,
                                                float(attr(node, "epsilon", 1e-12)), removed=removed)
        rw.replace_node(i, nodes + norm_nodes, {**constants, **norm_constants})

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """input + skip: the shape of the normalised output and of the sum (the statistics are left out)."""
        nodes = [h.make_node("Add", [node.input[0], node.input[1]], [node.output[0]])]
        if len(node.output) > 3 and node.output[3]:
            nodes.append(h.make_node("Identity", [node.output[0]], [node.output[3]]))
        return nodes
