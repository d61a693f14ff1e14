"""Ops along other axes than the channels: pooling, Resize/Upsample, reductions, Pad and Softmax."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register, same_rank
from onnxprune.ops.common import _axes_of, _pass, value_ints


# -- spatial ops -----------------------------------------------------------------------------------------------
@register
class Spatial(Handler):
    op_types = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
                "Upsample", "Resize")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        label = f"{node.op_type} {ctx.node_label(i)}"
        if any(ctx.labeled(n) for n in node.input[1:]):
            ctx.block_inputs(i, f"{label} takes channels in a parameter input")
            return
        if lx.axis != 1 and node.op_type not in ("Resize", "Upsample"):
            ctx.block(lx.atoms, f"{label} pools axis 1, channels are on axis {lx.axis}")
            return
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            ctx.block(lx.atoms, f"{label} returns indices that count channels")
            return
        if node.op_type in ("Resize", "Upsample"):
            scales = _resize_param(ctx, node, "scales")
            sizes = _resize_param(ctx, node, "sizes")
            if scales is not None and len(scales) > lx.axis and scales[lx.axis] != 1:
                ctx.block(lx.atoms, f"{label} scales the channel axis")
                return
            if scales is None and sizes is None:
                ctx.block(lx.atoms, f"{label}: scales/sizes are not constant")
                return
        _pass(ctx, node, lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        if node.op_type != "Resize":
            return
        keep = rw.keep(node.output[0])
        if keep is None or len(node.input) < 4 or not node.input[3]:
            return
        sizes = np.array(rw.const(node.input[3]), dtype=np.int64).copy()
        if sizes.size:
            sizes[rw.label(node.output[0]).axis] = len(keep)
            rw.set_input(i, 3, sizes)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


def _resize_param(ctx, node: NodeProto, which: str) -> list[float] | None:
    if node.op_type == "Upsample":
        port = 1
        if which == "sizes":
            return None
    else:
        port = {"scales": 2, "sizes": 3}[which] if ctx.graph.opset() >= 11 else 1
        if ctx.graph.opset() < 11 and which == "sizes":
            return None
    if len(node.input) > port and node.input[port]:
        v = ctx.graph.const(node.input[port])
        return None if v is None or v.size == 0 else [float(x) for x in v.ravel()]
    if which == "scales" and attr(node, "scales") is not None:
        return [float(x) for x in attr(node, "scales")]
    return None


REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


@register
class Reduce(Handler):
    op_types = REDUCE

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        label = f"{node.op_type} {ctx.node_label(i)}"
        if node.op_type in ("ArgMax", "ArgMin"):
            axes: list[int] | None = [int(attr(node, "axis", 0))]
        else:
            axes = _axes_of(ctx, node) if len(node.input) > 1 else attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                ctx.block(lx.atoms, f"{label}: axes are not constant")
                return
        if rank is None:
            ctx.block(lx.atoms, f"{label}: rank unknown")
            return
        if not axes:
            axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = [a % rank for a in axes]
        if lx.axis in axes:
            if node.op_type not in SUMS:
                ctx.block(lx.atoms, f"{label} reduces over the channel axis")
            elif rank == 3 and lx.axis == 2:
                ctx.tag(lx.atoms, "hidden")  # an RMSNorm's mean square over a transformer's hidden width
            return  # a sum over the channels: removed (zero) channels add nothing; the result carries none
        keepdims = int(attr(node, "keepdims", 1))
        axis = lx.axis if keepdims else lx.axis - sum(1 for a in axes if a < lx.axis)
        _pass(ctx, node, axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """A mean over the channels keeps dividing by the original count: mean(kept) * kept / all."""
        x = node.input[0]
        keep = rw.keep(x)
        if keep is None or node.op_type != "ReduceMean" or rw.labeled(node.output[0]) is not None:
            return
        dtype = helper.tensor_dtype_to_np_dtype(rw.graph.elem_type(x) or TensorProto.FLOAT)
        partial, factor = rw.fresh(f"{node.output[0]}_kept_mean"), rw.fresh(f"{node.output[0]}_kept_share")
        mean = NodeProto()
        mean.CopyFrom(node)
        mean.output[0] = partial
        share = helper.make_node("Mul", [partial, factor], [node.output[0]], name=rw.fresh(f"{node.name}_share"))
        rw.replace_node(i, [mean, share], {factor: np.array(len(keep) / rw.label(x).size, dtype=dtype)})


#: Reductions that stay exact over the kept channels when the removed ones are zero (the mean is rescaled).
SUMS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceMean")


@register
class Pad(Handler):
    op_types = ("Pad",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        if len(node.input) > 1:  # pads computed from constants alone (Swin's window padding) count as known
            pads = value_ints(ctx.graph, node.input[1])
            axes = value_ints(ctx.graph, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        else:
            pads, axes = attr(node, "pads"), None
        if pads is None or rank is None:
            ctx.block(lx.atoms, f"Pad {ctx.node_label(i)}: pads are not constant")
            return
        axes = [a % rank for a in axes] if axes is not None else list(range(rank))
        n = len(axes)
        for k, a in enumerate(axes):
            if a == lx.axis and (pads[k] != 0 or pads[k + n] != 0):
                ctx.block(lx.atoms, f"Pad {ctx.node_label(i)} pads the channel axis")
                return
        if len(node.input) > 2 and ctx.labeled(node.input[2]):
            ctx.block_inputs(i, f"Pad {ctx.node_label(i)} takes channels as its pad value")
            return
        _pass(ctx, node, lx.axis, lx.atoms)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


@register
class Softmax(Handler):
    op_types = ("Softmax", "LogSoftmax", "Hardmax")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        if rank is None:
            ctx.block(lx.atoms, f"{node.op_type} {ctx.node_label(i)}: rank unknown")
            return
        new_semantics = ctx.graph.opset() >= 13
        axis = int(attr(node, "axis", -1 if new_semantics else 1)) % rank
        if axis == lx.axis or (not new_semantics and lx.axis >= axis):
            ctx.block(lx.atoms, f"{node.op_type} {ctx.node_label(i)} normalises over the channel axis")
            return
        _pass(ctx, node, lx.axis, lx.atoms)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)
