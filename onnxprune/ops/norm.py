"""Normalisation layers: per-channel ones follow the channels; ones that mix channels block them."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto
from onnx import helper as h

from onnxprune.core.handlers import (
    AnalysisContext,
    BenchLink,
    Handler,
    RankOf,
    RewriteContext,
    attr,
    register,
    same_rank,
)

_PARAM_ROLES = {
    "BatchNormalization": ("norm", "bias", "bias", "bias"),  # scale, B, mean, var
    "InstanceNormalization": ("norm", "bias"),  # scale, B
}


@register
class PerChannelNorm(Handler):
    op_types = ("BatchNormalization", "InstanceNormalization")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
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

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        for port in range(1, len(node.input)):
            if node.input[port]:
                rw.set_input(i, port, rw.const(node.input[port])[keep])



    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def running_statistics(self, node: NodeProto) -> tuple[int, int] | None:
        return (3, 4) if node.op_type == "BatchNormalization" and len(node.input) == 5 else None

    def bench_link(self, node: NodeProto) -> BenchLink | None:
        return "pass"


@register
class AxisNorm(Handler):
    op_types = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "MeanVarianceNormalization",
                "LpNormalization", "LRN")

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Passes channels when they lie outside the normalised axes; blocks them when the statistics mix them."""
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        label = f"{node.op_type} {ctx.node_label(i)}"
        if rank is None:
            ctx.block(lx.atoms, f"{label}: input rank unknown")
            return
        if node.op_type in _LAST_AXIS_NORMS:
            start = int(attr(node, "axis", -1)) % rank
            if start == lx.axis == rank - 1 and _plain_layer_norm(node, ctx):
                # Normalises over the channel axis alone: pruning stays exact when the pruned model keeps
                # dividing by the original channel count (see layer_norm_apply).
                for p, role in zip(node.input[1:], ("norm", "bias")):
                    if p:
                        ctx.weight(p, lx.atoms, role, i)
                if rank == 3:
                    ctx.tag(lx.atoms, "hidden")  # [batch, sequence, hidden]: a transformer's residual stream
                ctx.set(node.output[0], lx.axis, lx.atoms)
                return
            mixed = lx.axis >= start
        elif node.op_type == "MeanVarianceNormalization":
            axes = [a % rank for a in attr(node, "axes", [0, 2, 3])]
            mixed = lx.axis in axes
        elif node.op_type == "LpNormalization":
            mixed = int(attr(node, "axis", -1)) % rank == lx.axis
        else:  # LRN mixes neighbouring channels
            mixed = True
        if mixed:
            ctx.block(lx.atoms, f"{label} mixes the channels it normalises")
            return
        ctx.set(node.output[0], lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        lab, rank = rw.labeled(node.input[0]), rw.graph.rank(node.input[0])
        if node.op_type in _LAST_AXIS_NORMS and lab is not None and lab.axis == (rank or 0) - 1:
            _layer_norm_apply(i, node, rw)  # it normalises over the channels (other axes: nothing to slice)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """onnxruntime's SimplifiedLayerNormalization (RMSNorm, in the default domain, unknown to onnx): the
        output has the input's shape and the scale's type (``stash_type`` only sets the arithmetic)."""
        if node.op_type != "SimplifiedLayerNormalization":
            return None
        return [h.make_node("Mul", [node.input[0], node.input[1]], [node.output[0]])]


#: LayerNorm and RMSNorm over the last axes: RMSNormalization is opset 23's; SimplifiedLayerNormalization is the
#: RMSNorm onnxruntime's transformer optimizer writes in the default domain.
_LAST_AXIS_NORMS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
_RMS_NORMS = ("RMSNormalization", "SimplifiedLayerNormalization")


def _plain_layer_norm(node: NodeProto, ctx) -> bool:
    extra_outputs = any(o for o in node.output[1:])
    return not extra_outputs and all(ctx.graph.is_const(p) for p in node.input[1:] if p)


def _layer_norm_apply(i: int, node: NodeProto, rw: RewriteContext) -> None:
    x, y = node.input[0], node.output[0]
    keep = rw.keep(x)
    if keep is None:
        return
    if node.op_type in _RMS_NORMS:
        epsilon, scale = rescaled_rms(rw.const(node.input[1]), keep, rw.label(x).size,
                                      float(attr(node, "epsilon", 1e-5)))
        rw.set_attr(i, "epsilon", epsilon)
        rw.set_input(i, 1, scale)
        return
    base = (node.name or f"LayerNormalization_{i}").replace("/", "_")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    nodes, constants = exact_norm(rw, base, x, y, keep, rw.label(x).size, node.input[1], bias,
                                  float(attr(node, "epsilon", 1e-5)))
    rw.replace_node(i, nodes, constants)


def rescaled_rms(scale: np.ndarray, keep: np.ndarray, size: int, eps: float, removed: np.ndarray | None = None
                 ) -> tuple[float, np.ndarray]:
    """(epsilon, scale) with which an RMSNorm over the K kept of C = ``size`` channels gives exactly the kept
    outputs of the original, whose mean square divides by C and counts the ``removed`` channels' constant values
    r (zero when not given): x / sqrt((sum x_K^2 + sum r^2) / C + eps) = x / sqrt(sum x_K^2 / K + eps') * sqrt(C/K)
    with eps' = (C eps + sum r^2) / K. The fused kernel stays."""
    k = len(keep)
    r_square = float(np.square(removed.astype(np.float64)).sum()) if removed is not None else 0.0
    kept_scale = np.take(scale, keep, axis=-1).astype(np.float64) * np.sqrt(size / k)
    return (size * eps + r_square) / k, kept_scale.astype(scale.dtype)


def exact_norm(rw: RewriteContext, base: str, x: str, y: str, keep: np.ndarray, size: int, scale: str,
               bias: str | None, eps: float, removed: np.ndarray | None = None
               ) -> tuple[list[NodeProto], dict[str, np.ndarray]]:
    """LayerNorm of ``x`` over K kept of ``size`` = C channels on the last axis,
    written out so that the statistics still divide by C; ``scale`` and ``bias`` are the original constants;
    ``removed``: the constant values the removed channels hold in the masked original (a bias added inside a
    fused op), zero when not given.

    With removed values r (R of them), mean = (sum(x_K) + sum(r)) / C and
    var = (sum((x_K - mean)^2) + sum(r^2) - 2 mean sum(r) + R mean^2) / C; the kept outputs are then exactly the
    original's (an RMSNorm needs no rewriting: :func:`rescaled_rms`). Returns the nodes and the new constants they
    read."""
    dtype = rw.const(scale).dtype
    r = np.zeros(size - len(keep), dtype=np.float64) if removed is None else removed.astype(np.float64)
    n = lambda tag: rw.fresh(f"{base}_{tag}")  # noqa: E731
    c = {n("axes"): np.array([-1], dtype=np.int64), n("inv_c"): np.array(1.0 / size, dtype=dtype),
         n("missing"): np.array(len(r), dtype=dtype), n("eps"): np.array(eps, dtype=dtype),
         n("scale"): np.take(rw.const(scale), keep, axis=-1), n("r_sum"): np.array(r.sum(), dtype=dtype),
         n("r_square"): np.array((r * r).sum(), dtype=dtype), n("r_twice"): np.array(2 * r.sum(), dtype=dtype)}
    axes, inv_c, missing, eps_name, scale_name, r_sum, r_square, r_twice = c
    shifted = bool(np.any(r))
    bias_name = None
    if bias:
        bias_name = n("bias")
        c[bias_name] = np.take(rw.const(bias), keep, axis=-1)
    t = {tag: n(tag) for tag in ("sum", "all", "mean", "d", "d2", "ssd", "mean2", "fill", "cross", "fill2",
                                  "fill3", "tot", "var", "vpe", "std", "norm", "scaled")}
    nodes = [h.make_node("ReduceSum", [x, axes], [t["sum"] if shifted else t["all"]], keepdims=1)]
    if shifted:
        nodes.append(h.make_node("Add", [t["sum"], r_sum], [t["all"]]))
    nodes += [
        h.make_node("Mul", [t["all"], inv_c], [t["mean"]]),
        h.make_node("Sub", [x, t["mean"]], [t["d"]]),
        h.make_node("Mul", [t["d"], t["d"]], [t["d2"]]),
        h.make_node("ReduceSum", [t["d2"], axes], [t["ssd"]], keepdims=1),
        h.make_node("Mul", [t["mean"], t["mean"]], [t["mean2"]]),
        h.make_node("Mul", [t["mean2"], missing], [t["fill"] if shifted else t["fill3"]]),
    ]
    if shifted:  # + sum(r^2) - 2 mean sum(r)
        nodes += [h.make_node("Mul", [t["mean"], r_twice], [t["cross"]]),
                  h.make_node("Sub", [t["fill"], t["cross"]], [t["fill2"]]),
                  h.make_node("Add", [t["fill2"], r_square], [t["fill3"]])]
    nodes.append(h.make_node("Add", [t["ssd"], t["fill3"]], [t["tot"]]))
    nodes += [
        h.make_node("Mul", [t["tot"], inv_c], [t["var"]]),
        h.make_node("Add", [t["var"], eps_name], [t["vpe"]]),
        h.make_node("Sqrt", [t["vpe"]], [t["std"]]),
        h.make_node("Div", [t["d"], t["std"]], [t["norm"]]),
        h.make_node("Mul", [t["norm"], scale_name], [t["scaled"] if bias_name else y]),
    ]
    if bias_name:
        nodes.append(h.make_node("Add", [t["scaled"], bias_name], [y]))
    used = {name for node in nodes for name in node.input}
    return nodes, {name: value for name, value in c.items() if name in used}


@register
class GroupNorm(Handler):
    op_types = ("GroupNormalization",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Every group must keep the same number of channels; the statistics are rewritten to stay exact."""
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        label = f"GroupNormalization {ctx.node_label(i)}"
        groups = int(attr(node, "num_groups", 0))
        if lx.axis != 1 or groups < 1 or lx.size % groups or any(o for o in node.output[1:]) \
                or not all(ctx.graph.is_const(p) for p in node.input[1:] if p):
            ctx.block(lx.atoms, f"{label} cannot be followed (channels, groups or parameters)")
            return
        ctx.constrain(lx.atoms.reshape(groups, lx.size // groups))
        for p, role in zip(node.input[1:], ("norm", "bias")):
            shape = ctx.graph.const_shape(p) if p else None
            if shape is not None and shape and shape[0] == lx.size:  # opset 21: per channel
                ctx.weight(p, lx.atoms, role, i)
        ctx.set(node.output[0], 1, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """GroupNorm over k kept of c channels per group, written out with the original group statistics:
        mean = mean_k(x) * k / c and var = mean_k((x - mean)^2) * k / c + mean^2 * (c - k) / c."""
        x, y = node.input[0], node.output[0]
        keep = rw.keep(x)
        if keep is None:
            return
        size = rw.label(x).size
        groups = int(attr(node, "num_groups"))
        per_group, kept = size // groups, len(keep) // groups
        scale, bias = rw.const(node.input[1]), rw.const(node.input[2])
        if scale.shape[0] == groups:  # opset 18: one scale per group, spread over its channels
            scale, bias = np.repeat(scale, per_group), np.repeat(bias, per_group)
        dtype = scale.dtype
        base = (node.name or f"GroupNormalization_{i}").replace("/", "_")
        n = lambda tag: rw.fresh(f"{base}_{tag}")  # noqa: E731
        shape_c = [1, len(keep)] + [1] * ((rw.graph.rank(x) or 4) - 2)
        consts = {n("grouped"): np.array([0, groups, -1], dtype=np.int64), n("axes"): np.array([2], dtype=np.int64),
                  n("frac"): np.array(kept / per_group, dtype=dtype),
                  n("rest"): np.array((per_group - kept) / per_group, dtype=dtype),
                  n("eps"): np.array(float(attr(node, "epsilon", 1e-5)), dtype=dtype),
                  n("scale"): scale[keep].reshape(shape_c), n("bias"): bias[keep].reshape(shape_c)}
        grouped, axes, frac, rest, eps, sc, bi = consts
        t = {tag: n(tag) for tag in ("xr", "mk", "mean", "d", "d2", "vk", "v1", "m2", "v2", "var", "vpe", "std",
                                      "norm", "shape", "back", "scaled")}
        nodes = [
            h.make_node("Reshape", [x, grouped], [t["xr"]]),
            h.make_node("ReduceMean", [t["xr"], axes], [t["mk"]], keepdims=1),
            h.make_node("Mul", [t["mk"], frac], [t["mean"]]),
            h.make_node("Sub", [t["xr"], t["mean"]], [t["d"]]),
            h.make_node("Mul", [t["d"], t["d"]], [t["d2"]]),
            h.make_node("ReduceMean", [t["d2"], axes], [t["vk"]], keepdims=1),
            h.make_node("Mul", [t["vk"], frac], [t["v1"]]),
            h.make_node("Mul", [t["mean"], t["mean"]], [t["m2"]]),
            h.make_node("Mul", [t["m2"], rest], [t["v2"]]),
            h.make_node("Add", [t["v1"], t["v2"]], [t["var"]]),
            h.make_node("Add", [t["var"], eps], [t["vpe"]]),
            h.make_node("Sqrt", [t["vpe"]], [t["std"]]),
            h.make_node("Div", [t["d"], t["std"]], [t["norm"]]),
            h.make_node("Shape", [x], [t["shape"]]),
            h.make_node("Reshape", [t["norm"], t["shape"]], [t["back"]]),
            h.make_node("Mul", [t["back"], sc], [t["scaled"]]),
            h.make_node("Add", [t["scaled"], bi], [y]),
        ]
        rw.replace_node(i, nodes, consts)

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


