"""Conv and ConvTranspose: plain, grouped and depthwise, 1-D to 3-D, with or without bias."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.errors import ModelError
from onnxprune.ops import applies, attr, propagates


def _grouped_in_view(groups: int):
    """Rows = input channels of a grouped conv weight [M, C/g, k...] (each row gathers its group's filters)."""
    def view(w: np.ndarray) -> np.ndarray:
        m, cg = w.shape[0], w.shape[1]
        r = w.reshape(groups, m // groups, cg, -1).transpose(0, 2, 1, 3)
        return r.reshape(groups * cg, -1)
    return view


def fixed_output(i: int, node: NodeProto, ctx, reason: str) -> None:
    """Show the channels of an output onnxprune cannot cut as a blocked group (when their count is known)."""
    shape = ctx.graph.shape(node.output[0])
    if shape is not None and len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 0:
        ctx.set(node.output[0], 1, ctx.fixed(i, node.output[0], shape[1], reason))


def _check_groups(ctx, i: int, groups: int, filters: int, in_channels: int, lx) -> None:
    """A conv whose group count does not divide its channels is an invalid model, not a pruning problem."""
    if groups < 1 or filters % groups or in_channels % groups or (lx is not None and lx.size != in_channels):
        raise ModelError(f"the input model is not valid: {ctx.node_label(i)} has group={groups} for "
                         f"{in_channels} input channels and {filters} filters")


def _read_conv(i: int, node: NodeProto, ctx):
    """(weight, bias, output, weight shape, input labels) of a Conv/ConvTranspose, or None when it blocks."""
    x, w_name = node.input[0], node.input[1]
    b_name = node.input[2] if len(node.input) > 2 else ""
    w = ctx.graph.const_shape(w_name)
    lx = ctx.labeled(x)
    label = f"{node.op_type} {ctx.node_label(i)}"
    if w is None or (b_name and not ctx.graph.is_const(b_name)):
        reason = f"{label} has non-constant weights (quantized or computed)"
        ctx.block_inputs(i, reason)
        fixed_output(i, node, ctx, reason)
        return None
    if lx is not None and lx.axis != 1:
        ctx.block(lx.atoms, f"{label} reads channels on axis {lx.axis}")
        lx = None
    return w_name, b_name, node.output[0], w, lx


@propagates("Conv")
def conv(i: int, node: NodeProto, ctx) -> None:
    read = _read_conv(i, node, ctx)
    if read is None:
        return
    w_name, b_name, y, w, lx = read
    g = int(attr(node, "group", 1))
    m, cg = int(w[0]), int(w[1])
    _check_groups(ctx, i, g, m, cg * g, lx)
    if g > 1 and cg == 1:  # depthwise, channel multiplier m // g
        if lx is None:
            return
        out = np.repeat(lx.atoms, m // g)
        ctx.set(y, 1, out)
        ctx.weight(w_name, out, "out", i)
        if b_name:
            ctx.weight(b_name, out, "bias", i)
        return
    out = ctx.source(i, y, 1, m)
    ctx.weight(w_name, out, "out", i)
    if b_name:
        ctx.weight(b_name, out, "bias", i)
    if g > 1:
        ctx.constrain(out.reshape(g, m // g))
    if lx is not None:
        if g > 1:
            ctx.constrain(lx.atoms.reshape(g, cg))
            ctx.weight(w_name, lx.atoms, "in", i, view=_grouped_in_view(g))
        else:
            ctx.weight(w_name, lx.atoms, "in", i, axis=1)


@applies("Conv")
def conv_apply(i: int, node: NodeProto, rw) -> None:
    x, w_name, y = node.input[0], node.input[1], node.output[0]
    kin, kout = rw.keep(x), rw.keep(y)
    if kin is None and kout is None:
        return
    w = rw.const(w_name)
    g = int(attr(node, "group", 1))
    cg = int(w.shape[1])
    if g > 1 and cg == 1:  # depthwise: input and output shrink together
        w = w[kout]
        rw.set_attr(i, "group", len(rw.keep_or_all(x)))
    else:
        if kin is not None:
            if g > 1:
                w = _slice_grouped_in(w, kin, g)
            else:
                w = w[:, kin]
        if kout is not None:
            w = w[kout]
    rw.set_input(i, 1, w)
    if len(node.input) > 2 and node.input[2] and kout is not None:
        rw.set_input(i, 2, rw.const(node.input[2])[kout])


def _slice_grouped_in(w: np.ndarray, kin: np.ndarray, groups: int) -> np.ndarray:
    """Keep, in every group's filters, the kept input channels of that group (equal counts per group)."""
    m, cg = w.shape[0], w.shape[1]
    local = kin.reshape(groups, -1) - (np.arange(groups) * cg)[:, None]  # constraint: same count per group
    r = w.reshape(groups, m // groups, cg, *w.shape[2:])
    idx = local.reshape(groups, 1, -1, *([1] * (w.ndim - 2)))
    r = np.take_along_axis(r, idx, axis=2)
    return r.reshape(m, local.shape[1], *w.shape[2:])


@propagates("ConvTranspose")
def conv_transpose(i: int, node: NodeProto, ctx) -> None:
    read = _read_conv(i, node, ctx)
    if read is None:
        return
    w_name, b_name, y, w, lx = read
    g = int(attr(node, "group", 1))
    c, mg = int(w[0]), int(w[1])
    _check_groups(ctx, i, g, c, c, lx)
    if g > 1 and mg == 1 and g == c:  # depthwise
        if lx is None:
            return
        ctx.set(y, 1, lx.atoms)
        ctx.weight(w_name, lx.atoms, "out", i)
        if b_name:
            ctx.weight(b_name, lx.atoms, "bias", i)
        return
    if g > 1:
        ctx.block_inputs(i, f"grouped ConvTranspose {ctx.node_label(i)} is not supported")
        return
    out = ctx.source(i, y, 1, mg)
    ctx.weight(w_name, out, "out", i, axis=1)
    if b_name:
        ctx.weight(b_name, out, "bias", i)
    if lx is not None:
        ctx.weight(w_name, lx.atoms, "in", i, axis=0)


@applies("ConvTranspose")
def conv_transpose_apply(i: int, node: NodeProto, rw) -> None:
    x, y = node.input[0], node.output[0]
    kin, kout = rw.keep(x), rw.keep(y)
    if kin is None and kout is None:
        return
    w = rw.const(node.input[1])
    g = int(attr(node, "group", 1))
    if g > 1:  # depthwise
        w = w[kin]
        rw.set_attr(i, "group", len(kin))
    else:
        if kin is not None:
            w = w[kin]
        if kout is not None:
            w = w[:, kout]
    rw.set_input(i, 1, w)
    if len(node.input) > 2 and node.input[2] and kout is not None:
        rw.set_input(i, 2, rw.const(node.input[2])[kout])
