"""com.microsoft attention ops that onnxruntime's transformer optimizer writes.

``Attention`` holds the Q, K and V projections in one packed weight ``[hidden, 3 * D]`` (and bias ``[3 * D]``)
and returns the merged heads ``[batch, sequence, D]``: its output channels are created here, head_dim at a time,
so whole heads are the units; cutting heads slices the same columns of Q, K and V and lowers ``num_heads``
(head_dim, hence the default scale, stays). The hidden width it reads is the packed weight's rows. Heads of an
Attention with a KV cache (``past``/``present``) stay; unequal ``qkv_hidden_sizes`` block what it reads. It gives
its output's rank and an ai.onnx stand-in for shape inference, so the MLP after it is analysed.
(``MultiHeadAttention``, ``RotaryEmbedding`` and ``GroupQueryAttention``: :mod:`onnxprune.ops.contrib_heads`.)
"""
from __future__ import annotations

from onnx import NodeProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import (
    AnalysisContext,
    Handler,
    RankOf,
    RewriteContext,
    Shapes,
    attr,
    register,
    same_rank,
)
from onnxprune.ops.common import tie_heads


def packed_width(node: NodeProto, graph: Graph) -> tuple[int, int] | None:
    """(D, head_dim) of an Attention whose packed weight holds equal Q, K and V widths, else ``None``."""
    w = graph.const_shape(node.input[1]) if len(node.input) > 1 else None
    heads = int(attr(node, "num_heads", 0))
    sizes = attr(node, "qkv_hidden_sizes")
    if w is None or len(w) != 2 or w[1] % 3 or heads <= 0 or (w[1] // 3) % heads:
        return None
    if sizes is not None and len(set(int(s) for s in sizes)) != 1:
        return None
    return w[1] // 3, w[1] // 3 // heads


@register
class PackedAttention(Handler):
    op_types = ("Attention",)
    domain = "com.microsoft"

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        label = f"Attention {ctx.node_label(i)}"
        width = packed_width(node, ctx.graph)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if width is None or (bias and not ctx.graph.is_const(bias)) or not ctx.graph.is_const(node.input[1]):
            ctx.block_inputs(i, f"{label} has computed, unequal or uneven Q/K/V weights")
            return  # the output's channels stay: nothing here creates them in heads
        lx, rank = ctx.labeled(node.input[0]), ctx.graph.rank(node.input[0])
        for name in node.input[3:]:
            if ctx.labeled(name) is not None:
                ctx.block_inputs(i, f"{label} reads channels in its mask or cache inputs")
                return
        if lx is not None and lx.axis == (rank or 0) - 1:
            ctx.weight(node.input[1], lx.atoms, "in", i, axis=0)  # the hidden width: rows of the packed weight
        elif lx is not None:
            ctx.block(lx.atoms, f"{label} reads channels on another axis than its hidden width")
        d, head_dim = width
        atoms = ctx.source(i, node.output[0], 2, d)
        tie_heads(ctx, atoms, head_dim)
        ctx.tag(atoms, "head")
        cache = (len(node.input) > 4 and node.input[4]) or (len(node.output) > 1 and node.output[1])
        if cache:
            ctx.block(atoms, f"{label} has a KV cache (past/present): its heads stay")
            return
        ctx.weight(node.input[1], atoms, "out", i,
                   view=lambda w: w.reshape(w.shape[0], 3, -1).transpose(2, 1, 0).reshape(w.shape[1] // 3, -1))
        if bias:
            ctx.weight(bias, atoms, "bias", i, view=lambda b: b.reshape(3, -1).T)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep = rw.keep(node.output[0])
        width = packed_width(node, rw.graph)
        if (keep is None and rw.keep(node.input[0]) is None) or width is None:
            return
        d, head_dim = width
        w = rw.const(node.input[1])
        kin = rw.keep(node.input[0])
        if kin is not None:
            w = w[kin]
        if keep is None:
            rw.set_input(i, 1, w)
            return
        rw.set_input(i, 1, w.reshape(w.shape[0], 3, d)[:, :, keep].reshape(w.shape[0], 3 * len(keep)))
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(i, 2, rw.const(node.input[2]).reshape(3, d)[:, keep].reshape(-1))
        rw.set_attr(i, "num_heads", len(keep) // head_dim)
        if attr(node, "qkv_hidden_sizes") is not None:
            rw.set_attr(i, "qkv_hidden_sizes", [len(keep)] * 3)

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        """The QKV projection and the two attention products: B*S*hidden*3D + 2*B*S*S*D."""
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x or len(x) != 3 or not w or len(w) != 2:
            return 0
        batch, seq, hidden = (int(v) for v in x)
        d = int(w[1]) // 3
        return batch * seq * hidden * 3 * d + 2 * batch * seq * seq * d

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        return (node.input[0], node.output[0])  # exact for the projection, which dominates

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """The first third of input x packed weight: [batch, sequence, D] (equal Q, K, V widths only)."""
        sizes = attr(node, "qkv_hidden_sizes")
        if sizes is not None and len(set(int(v) for v in sizes)) != 1:
            return None
        packed = f"{node.output[0]}__proxy_qkv"
        parts = [node.output[0], f"{packed}_k", f"{packed}_v"]
        split = (helper.make_node("Split", [packed], parts, axis=-1, num_outputs=3) if opset >= 18
                 else helper.make_node("Split", [packed], parts, axis=-1))
        return [helper.make_node("MatMul", [node.input[0], node.input[1]], [packed]), split]
