"""Conv and ConvTranspose: plain, grouped and depthwise, 1-D to 3-D, with or without bias."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import NodeProto

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import (
    AnalysisContext,
    BenchSpec,
    Handler,
    LinearForm,
    RankOf,
    RewriteContext,
    Shapes,
    attr,
    node_attrs,
    register,
    same_rank,
)
from onnxprune.errors import ModelError


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


@register
class Conv(Handler):
    op_types = ("Conv",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
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

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
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
        elif g > 1:
            if kin is not None:
                w = _slice_grouped_in(w, kin, g)
            if kout is not None:
                w = w[kout]
        else:  # filters first: reads only the kept filters' (contiguous) bytes of a mapped weight
            if kout is not None:
                w = w[kout]
            if kin is not None:
                w = w[:, kin]
        rw.set_input(i, 1, w)
        _slice_bias(i, node, rw, kout)

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
        if w is None or out is None:
            return 0
        return int(np.prod(out)) * int(np.prod(w[1:]))

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        w = graph.const_shape(node.input[1])
        return _scaling(node, int(attr(node, "group", 1)) > 1 and w is not None and w[1] == 1)

    def linear(self, node: NodeProto, graph: Graph) -> LinearForm | None:
        return ConvForm(node, graph)

    def bench(self, node: NodeProto, graph: Graph, x: list[int], y: list[int], x_full: Sequence[int]
              ) -> BenchSpec | None:
        w = graph.const_shape(node.input[1])
        if w is None:
            return None
        group = _bench_group(node, x, x_full)
        return BenchSpec([y[1], x[1] // group, *w[2:]], _with_group(node, group), bias_port=2)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


def _slice_grouped_in(w: np.ndarray, kin: np.ndarray, groups: int) -> np.ndarray:
    """Keep, in every group's filters, the kept input channels of that group (equal counts per group)."""
    m, cg = w.shape[0], w.shape[1]
    local = kin.reshape(groups, -1) - (np.arange(groups) * cg)[:, None]  # constraint: same count per group
    r = w.reshape(groups, m // groups, cg, *w.shape[2:])
    idx = local.reshape(groups, 1, -1, *([1] * (w.ndim - 2)))
    r = np.take_along_axis(r, idx, axis=2)
    return r.reshape(m, local.shape[1], *w.shape[2:])


@register
class ConvTranspose(Handler):
    op_types = ("ConvTranspose",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
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

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        x, y = node.input[0], node.output[0]
        kin, kout = rw.keep(x), rw.keep(y)
        if kin is None and kout is None:
            return
        w = rw.const(node.input[1])
        g = int(attr(node, "group", 1))
        if g > 1:  # depthwise
            kin = rw.keep_or_all(x)
            w = w[kin]
            rw.set_attr(i, "group", len(kin))
        else:
            if kin is not None:
                w = w[kin]
            if kout is not None:
                w = w[:, kout]
        rw.set_input(i, 1, w)
        _slice_bias(i, node, rw, kout)

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        w, x = shapes.get(node.input[1]), shapes.get(node.input[0])
        if w is None or x is None:
            return 0
        return int(np.prod(x)) * int(np.prod(w[1:]))

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        w = graph.const_shape(node.input[1])
        group = int(attr(node, "group", 1))
        return _scaling(node, group > 1 and w is not None and w[1] == 1 and w[0] == group)

    def bench(self, node: NodeProto, graph: Graph, x: list[int], y: list[int], x_full: Sequence[int]
              ) -> BenchSpec | None:
        w = graph.const_shape(node.input[1])
        if w is None:
            return None
        group = _bench_group(node, x, x_full)
        return BenchSpec([x[1], y[1] // group, *w[2:]], _with_group(node, group), bias_port=2)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


def _slice_bias(i: int, node: NodeProto, rw: RewriteContext, kout: np.ndarray | None) -> None:
    if len(node.input) > 2 and node.input[2] and kout is not None:
        rw.set_input(i, 2, rw.const(node.input[2])[kout])


def _scaling(node: NodeProto, depthwise: bool) -> tuple[str, ...]:
    """A depthwise conv's MACs scale with its output channels only (its input shrinks with them)."""
    return (node.output[0],) if depthwise else (node.input[0], node.output[0])


def _bench_group(node: NodeProto, x: list[int], x_full: Sequence[int]) -> int:
    """The micro-benchmark's group count: a depthwise conv follows its input's (cut) width."""
    group = int(attr(node, "group", 1))
    return x[1] if group > 1 and group == x_full[1] else group


def _with_group(node: NodeProto, group: int) -> dict[str, Any]:
    attrs = node_attrs(node)
    if "group" in attrs:
        attrs["group"] = group
    return attrs


class ConvForm(LinearForm):
    """A 2-D (grouped) convolution as a linear map of its input patches (im2col), for recovery."""

    spatial = True

    def __init__(self, node: NodeProto, graph: Graph) -> None:
        self.node = node
        w = graph.const_shape(node.input[1])
        self.groups = int(attr(node, "group", 1))
        self.kernel = tuple(int(k) for k in w[2:]) if w is not None else ()
        self.depthwise = self.groups > 1 and w is not None and w[1] == 1
        self.refit = (not self.depthwise and w is not None and len(w) == 4
                      and attr(node, "auto_pad", "NOTSET") in (b"NOTSET", "NOTSET"))

    def bias_shift(self, weight: np.ndarray, mean: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
        if self.depthwise:
            return None  # a removed input removes its outputs too
        gone = np.zeros(mean.shape[0])
        gone[removed] = mean[removed]
        wsum = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)  # [M, C/g]
        m = weight.shape[0]
        return (wsum.reshape(self.groups, m // self.groups, -1) * gone.reshape(self.groups, 1, -1)).sum(axis=2).ravel()

    def rows(self, x: np.ndarray, sample: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        return _patches(self.node, self.kernel, x, sample, where[0], where[1])

    def store(self, weights: np.ndarray, bias: np.ndarray | None, inputs: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        return weights.reshape(weights.shape[0], inputs // self.groups, *self.kernel), bias

    def matrix(self, weight: np.ndarray) -> np.ndarray | None:
        return weight.reshape(weight.shape[0], -1) if self.groups == 1 and weight.ndim == 4 else None

    def columns(self, shape: Sequence[int]) -> int:
        return int(np.prod(shape[1:]))

    def positions(self, x_shape: Sequence[int]) -> tuple[int, int]:
        """Output rows and columns of a 2-D convolution of an input of ``x_shape`` (NCHW)."""
        pads = list(attr(self.node, "pads", [0, 0, 0, 0]))
        sh, sw = attr(self.node, "strides", [1, 1])
        dh, dw = attr(self.node, "dilations", [1, 1])
        oh = (x_shape[2] + pads[0] + pads[2] - dh * (self.kernel[0] - 1) - 1) // sh + 1
        ow = (x_shape[3] + pads[1] + pads[3] - dw * (self.kernel[1] - 1) - 1) // sw + 1
        return int(oh), int(ow)


def _patches(node: NodeProto, kernel: tuple[int, ...], x: np.ndarray, n: np.ndarray, oh: np.ndarray,
             ow: np.ndarray) -> np.ndarray:
    """im2col rows of the input patches under output positions (n, oh, ow)."""
    kh, kw = kernel
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ki = (np.arange(kh) * dh)[None, None, :, None]
    kj = (np.arange(kw) * dw)[None, None, None, :]
    channels = np.arange(x.shape[1])[None, :, None, None]
    patches = xp[n[:, None, None, None], channels, (oh * sh)[:, None, None, None] + ki,
                 (ow * sw)[:, None, None, None] + kj]
    return patches.reshape(len(n), -1)
