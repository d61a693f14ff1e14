"""Normalisation layers: per-channel ones follow the channels; ones that mix channels block them."""
from __future__ import annotations

from onnx import NodeProto

from . import applies, attr, propagates

_PARAM_ROLES = {
    "BatchNormalization": ("norm", "bias", "bias", "bias"),  # scale, B, mean, var
    "InstanceNormalization": ("norm", "bias"),  # scale, B
}


@propagates("BatchNormalization", "InstanceNormalization")
def per_channel_norm(i: int, node: NodeProto, ctx) -> None:
    lx = ctx.labeled(node.input[0])
    if lx is None:
        return
    label = f"{node.op_type} {ctx.node_label(i)}"
    if lx.axis != 1:
        ctx.block(lx.atoms, f"{label} normalises axis 1, channels are on axis {lx.axis}")
        return
    used_extra = [o for o in node.output[1:] if o]
    if used_extra:
        ctx.block(lx.atoms, f"{label} is in training mode")
        return
    params = node.input[1:]
    if not all(ctx.graph.is_const(p) for p in params if p):
        ctx.block(lx.atoms, f"{label} has non-constant parameters")
        return
    for p, role in zip(params, _PARAM_ROLES[node.op_type]):
        if p:
            ctx.weight(p, lx.atoms, role, i)
    ctx.set(node.output[0], 1, lx.atoms)


@applies("BatchNormalization", "InstanceNormalization")
def per_channel_norm_apply(i: int, node: NodeProto, rw) -> None:
    keep = rw.keep(node.input[0])
    if keep is None:
        return
    for port in range(1, len(node.input)):
        if node.input[port]:
            rw.set_input(i, port, rw.const(node.input[port])[keep])


@propagates("LayerNormalization", "MeanVarianceNormalization", "LpNormalization", "GroupNormalization", "LRN")
def axis_norm(i: int, node: NodeProto, ctx) -> None:
    """Passes channels when they lie outside the normalised axes; blocks them when the statistics mix them."""
    lx = ctx.labeled(node.input[0])
    if lx is None:
        return
    rank = ctx.graph.rank(node.input[0])
    label = f"{node.op_type} {ctx.node_label(i)}"
    if rank is None:
        ctx.block(lx.atoms, f"{label}: input rank unknown")
        return
    if node.op_type == "LayerNormalization":
        start = int(attr(node, "axis", -1)) % rank
        mixed = lx.axis >= start
    elif node.op_type == "MeanVarianceNormalization":
        axes = [a % rank for a in attr(node, "axes", [0, 2, 3])]
        mixed = lx.axis in axes
    elif node.op_type == "LpNormalization":
        mixed = int(attr(node, "axis", -1)) % rank == lx.axis
    else:  # GroupNormalization and LRN mix neighbouring channels
        mixed = True
    if mixed:
        ctx.block(lx.atoms, f"{label} mixes the channels it normalises")
        return
    ctx.set(node.output[0], lx.axis, lx.atoms)
