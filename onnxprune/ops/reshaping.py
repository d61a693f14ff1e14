"""Ops that move or regroup axes: Transpose, (Un)Squeeze, Flatten, Reshape, and Shape (which reads them)."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, RewriteContext, attr, register
from onnxprune.ops.common import _axes_of, _const_ints, _pass


# -- axis movers -----------------------------------------------------------------------------------------------
@register
class Transpose(Handler):
    op_types = ("Transpose",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        perm = attr(node, "perm")
        rank = ctx.graph.rank(node.input[0])
        if perm is None:
            if rank is None:
                ctx.block(lx.atoms, f"Transpose {ctx.node_label(i)}: rank unknown")
                return
            perm = list(reversed(range(rank)))
        _pass(ctx, node, list(perm).index(lx.axis), lx.atoms)

    def foldable(self, node: NodeProto) -> bool:
        return True


@register
class Squeeze(Handler):
    op_types = ("Squeeze",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        shape = ctx.graph.shape(node.input[0])
        axes = _axes_of(ctx, node)
        if shape is None:
            ctx.block(lx.atoms, f"Squeeze {ctx.node_label(i)}: input shape unknown")
            return
        rank = len(shape)
        axes = [a % rank for a in axes] if axes is not None else [k for k, d in enumerate(shape) if d == 1]
        if lx.axis in axes:
            ctx.block(lx.atoms, f"Squeeze {ctx.node_label(i)} removes the channel axis")
            return
        _pass(ctx, node, lx.axis - sum(1 for a in axes if a < lx.axis), lx.atoms)

    def foldable(self, node: NodeProto) -> bool:
        return True


@register
class Unsqueeze(Handler):
    op_types = ("Unsqueeze",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        axes = _axes_of(ctx, node)
        out_rank = ctx.graph.rank(node.output[0])
        if axes is None or out_rank is None:
            ctx.block(lx.atoms, f"Unsqueeze {ctx.node_label(i)}: axes unknown")
            return
        axis = lx.axis
        for a in sorted(x % out_rank for x in axes):
            if a <= axis:
                axis += 1
        _pass(ctx, node, axis, lx.atoms)

    def foldable(self, node: NodeProto) -> bool:
        return True


def _expand_atoms(atoms: np.ndarray, dims: list[int], pos: int) -> np.ndarray:
    """Atoms of a flattened run of ``dims`` in which the channel axis sits at ``pos``."""
    dims = list(dims)
    dims[pos] = len(atoms)
    channel = np.indices(dims, dtype=np.int64)[pos].ravel() if dims else np.zeros(1, dtype=np.int64)
    return atoms[channel]


@register
class Flatten(Handler):
    op_types = ("Flatten",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        shape = ctx.graph.shape(node.input[0])
        rank = len(shape) if shape is not None else None
        k = int(attr(node, "axis", 1)) % (rank + 1) if rank is not None else None
        if shape is None or k is None or lx.axis < k:
            ctx.block(lx.atoms, f"Flatten {ctx.node_label(i)} merges the channel axis into the batch axis")
            return
        tail = list(shape[k:])
        tail[lx.axis - k] = lx.size
        if not all(isinstance(d, int) for d in tail):
            ctx.block(lx.atoms, f"Flatten {ctx.node_label(i)}: dimensions after the channel axis are not static")
            return
        _pass(ctx, node, 1 if k > 0 else 0, _expand_atoms(lx.atoms, [int(d or 0) for d in tail], lx.axis - k))

    def foldable(self, node: NodeProto) -> bool:
        return True


@register
class Reshape(Handler):
    op_types = ("Reshape",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        label = f"Reshape {ctx.node_label(i)}"
        src, dst = ctx.graph.shape(node.input[0]), ctx.graph.shape(node.output[0])
        if src is None or dst is None:
            ctx.block(lx.atoms, f"{label}: shapes unknown")
            return
        mapped = _reshape_map(list(src), list(dst), lx.axis)
        if mapped is None:
            split = _split_map(list(src), list(dst), lx.axis, lx.size)
            if split is None:
                ctx.block(lx.atoms, f"{label} splits or reorders the channel axis")
                return
            if not ctx.graph.is_const(node.input[1]):
                ctx.block(lx.atoms, f"{label} splits the channel axis with a computed shape")
                return
            # [.., g*c, ..] -> [.., g, c, ..] (channel shuffle): the g blocks must lose the same channels, so
            # tie them; the larger of the two new axes carries the channels.
            outer, inner_size = int(dst[lx.axis] or 0), int(dst[lx.axis + 1] or 0)  # static: _split_map checked
            blocks = lx.atoms.reshape(outer, inner_size)
            inner = inner_size >= outer
            lines = blocks if inner else blocks.T
            for row in lines[1:]:
                ctx.tie(lines[0], row)
            _pass(ctx, node, lx.axis + 1 if inner else lx.axis, lines[0])
            return
        out_axis, run, pos = mapped
        if len(run) > 1 and not ctx.graph.is_const(node.input[1]):
            ctx.block(lx.atoms, f"{label} merges the channel axis with a computed shape")
            return
        run = list(run)
        run[pos] = lx.size
        _pass(ctx, node, out_axis, _expand_atoms(lx.atoms, run, pos))

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        y = node.output[0]
        keep = rw.keep(y)
        if keep is None or not rw.graph.is_const(node.input[1]):
            return
        shape = np.array(rw.const(node.input[1]), dtype=np.int64).copy()
        axis = rw.label(y).axis
        if shape[axis] == -1 or (shape[axis] == 0 and rw.label(node.input[0]).axis == axis
                                 and len(rw.label(node.input[0]).atoms) == len(rw.label(y).atoms)):
            return
        shape[axis] = len(keep)
        rw.set_input(i, 1, shape)

    def foldable(self, node: NodeProto) -> bool:
        return True


def _split_map(src: list, dst: list, axis: int, size: int) -> bool | None:
    """True when the reshape splits the channel axis into two static axes in place (prefix unchanged)."""
    if len(dst) < axis + 2 or any(a != b or a is None for a, b in zip(src[:axis], dst[:axis])):
        return None
    outer, inner = dst[axis], dst[axis + 1]
    if isinstance(outer, int) and isinstance(inner, int) and outer > 1 and inner > 1 and outer * inner == size:
        return True
    return None


def _reshape_map(src: list, dst: list, axis: int) -> tuple[int, list, int] | None:
    """Where the channel axis goes: (output axis, the run of input dims merged into it, channel pos in run).

    The dims before the run must match one to one (equal static values or equal symbols) and the run's static
    product must equal the output dim; a reshape preserves the element count, so whatever follows the run then
    holds the same elements per channel position.
    """
    for s in range(axis + 1):
        if s > len(dst) - 1 or any(a != b or a is None for a, b in zip(src[:s], dst[:s])):
            break
        for e in range(axis + 1, len(src) + 1):
            run = src[s:e]
            if not all(isinstance(d, int) for d in run) or not isinstance(dst[s], int):
                continue
            if int(np.prod(run)) == dst[s]:
                return s, run, axis - s
    return None


@register
class Shape(Handler):
    op_types = ("Shape",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """A Shape of a channel tensor is fine while nobody reads the channel count from it."""
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        start = int(attr(node, "start", 0))
        rank = ctx.graph.rank(node.input[0])
        if rank is None:
            ctx.block(lx.atoms, f"Shape {ctx.node_label(i)}: rank unknown")
            return
        end = int(attr(node, "end", rank))
        start, end = start % rank if start < 0 else min(start, rank), end % rank if end < 0 else min(end, rank)
        if not start <= lx.axis < end:
            return
        pos = lx.axis - start
        for j, _ in ctx.graph.consumer_nodes(node.output[0]):
            user = ctx.graph.nodes[j]
            idx = _const_ints(ctx, user.input[1]) if user.op_type == "Gather" and len(user.input) > 1 else None
            if idx is None or pos in [x % (end - start) for x in idx]:
                ctx.block(lx.atoms, f"Shape {ctx.node_label(i)} reads the channel count")
                return
