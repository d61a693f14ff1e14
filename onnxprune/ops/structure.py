"""Ops that move, join, split or reduce axes: Concat, Split, Transpose, Reshape/Flatten, (Un)Squeeze, pooling,
reductions, Pad, Resize, Softmax, Shape."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, RankRule, RewriteContext, attr, register


def _pass(ctx, node: NodeProto, axis: int, atoms: np.ndarray) -> None:
    ctx.set(node.output[0], axis, atoms)


def _const_ints(ctx, name: str) -> list[int] | None:
    if not name:
        return None
    v = ctx.graph.const(name)
    return None if v is None else [int(x) for x in np.asarray(v).ravel()]


# -- Concat / Split --------------------------------------------------------------------------------------------
@register
class Concat(Handler):
    op_types = ("Concat",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        names = [n for n in node.input]
        labs = [ctx.labeled(n) for n in names]
        if not any(labs):
            return
        rank = ctx.graph.rank(node.output[0]) or next(ctx.graph.rank(n) for n in names if ctx.graph.rank(n))
        axis = int(attr(node, "axis", 0)) % rank
        label = f"Concat {ctx.node_label(i)}"
        lab_axes = {lab.axis for lab in labs if lab is not None}
        if lab_axes != {axis}:
            if len(lab_axes) == 1 and all(lab is not None for lab in labs):  # joined along another axis: tie
                first = labs[0]
                for lab in labs[1:]:
                    if lab.size != first.size:
                        ctx.block_inputs(i, f"{label} joins channel tensors of different widths")
                        return
                    ctx.tie(first.atoms, lab.atoms)
                _pass(ctx, node, first.axis, first.atoms)
            else:
                ctx.block_inputs(i, f"{label} joins tensors whose channels lie on other axes")
            return
        parts = []
        for name, lab in zip(names, labs):
            if lab is not None:
                parts.append(lab.atoms)
                continue
            shape = ctx.graph.shape(name)
            size = shape[axis] if shape is not None and len(shape) > axis else None
            if not isinstance(size, int):
                ctx.block_inputs(i, f"{label}: width of input '{name}' unknown")
                return
            parts.append(ctx.fixed(i, name, size, f"{label} joins fixed channels from '{name}'"))
        _pass(ctx, node, axis, np.concatenate(parts))


def _split_sizes(ctx, node: NodeProto, total: int) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return _const_ints(ctx, node.input[1])
    sizes = attr(node, "split")
    if sizes:
        return [int(s) for s in sizes]
    n = len(node.output)
    if total % n == 0:
        return [total // n] * n
    chunk = -(-total // n)  # opset 18 num_outputs: last chunk smaller
    return [chunk] * (n - 1) + [total - chunk * (n - 1)]


@register
class Split(Handler):
    op_types = ("Split",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        axis = int(attr(node, "axis", 0)) % rank if rank else int(attr(node, "axis", 0))
        if axis != lx.axis:
            for out in node.output:
                if out:
                    ctx.set(out, lx.axis, lx.atoms)
            return
        sizes = _split_sizes(ctx, node, lx.size)
        if sizes is None or sum(sizes) != lx.size or len(sizes) != len(node.output):
            ctx.block(lx.atoms, f"Split {ctx.node_label(i)}: split sizes unknown")
            return
        if len(set(sizes)) == 1 and len(sizes) > 1:
            ctx.constrain(lx.atoms.reshape(len(sizes), sizes[0]), soft=True)  # chunks stay equal (YOLOv8 C2f)
        start = 0
        for out, size in zip(node.output, sizes):
            if out:
                ctx.set(out, axis, lx.atoms[start:start + size])
            start += size

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        lx = rw.labeled(node.input[0])
        if lx is None or rw.keep(node.input[0]) is None:
            return
        if all(rw.labeled(o) is None or rw.labeled(o).axis == lx.axis and rw.labeled(o).size == lx.size
               for o in node.output if o):
            return  # split along another axis
        sizes = np.array([len(rw.keep_or_all(o)) for o in node.output], dtype=np.int64)
        if rw.graph.opset() >= 13:
            if len(node.input) > 1 and node.input[1]:
                rw.set_input(i, 1, sizes)
            else:
                rw.add_input(i, sizes, "split")
                rw.del_attr(i, "num_outputs")
        else:
            rw.set_attr(i, "split", [int(s) for s in sizes])




@register
class Slice(Handler):
    op_types = ("Slice",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        if len(node.input) > 1:  # opset >= 10: starts, ends, axes, steps as inputs
            starts, ends = _const_ints(ctx, node.input[1]), _const_ints(ctx, node.input[2])
            axes = _const_ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
            steps = _const_ints(ctx, node.input[4]) if len(node.input) > 4 and node.input[4] else None
        else:
            starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
        if starts is None or ends is None or rank is None:
            ctx.block(lx.atoms, f"Slice {ctx.node_label(i)} has non-constant bounds")
            return
        axes = [a % rank for a in (axes if axes is not None else range(len(starts)))]
        steps = steps or [1] * len(starts)
        for a, s, e, st in zip(axes, starts, ends, steps):
            if a == lx.axis:
                if st != 1:
                    ctx.block(lx.atoms, f"Slice {ctx.node_label(i)} strides over the channel axis")
                    return
                lo, hi = _clamp(s, lx.size), _clamp(e, lx.size)
                _pass(ctx, node, lx.axis, lx.atoms[lo:hi])
                return
        _pass(ctx, node, lx.axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """A channel-axis slice [lo, hi) of the kept channels is still contiguous: count what survives before."""
        x = node.input[0]
        kin = rw.keep(x)
        lx = rw.labeled(x)
        if kin is None or len(node.input) < 3:
            return
        rank = rw.graph.rank(x)
        starts, ends = rw.const(node.input[1]), rw.const(node.input[2])
        axes = rw.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        hit = [k for k, a in enumerate(axes) if int(a) % rank == lx.axis]
        if not hit:
            return
        k = hit[0]
        lo, hi = _clamp(int(starts[k]), lx.size), _clamp(int(ends[k]), lx.size)
        new_starts, new_ends = np.array(starts).copy(), np.array(ends).copy()
        new_starts[k], new_ends[k] = np.searchsorted(kin, lo), np.searchsorted(kin, hi)
        rw.set_input(i, 1, new_starts)
        rw.set_input(i, 2, new_ends)


def _clamp(index: int, size: int) -> int:
    return min(max(index + size if index < 0 else index, 0), size)




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


def _axes_of(ctx, node: NodeProto) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return _const_ints(ctx, node.input[1])
    return attr(node, "axes")


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
        _pass(ctx, node, 1 if k > 0 else 0, _expand_atoms(lx.atoms, tail, lx.axis - k))

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
            blocks = lx.atoms.reshape(dst[lx.axis], dst[lx.axis + 1])
            inner = dst[lx.axis + 1] >= dst[lx.axis]
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
        axis = rw.labeled(y).axis
        if shape[axis] == -1 or (shape[axis] == 0 and rw.labeled(node.input[0]).axis == axis
                                 and len(rw.labeled(node.input[0]).atoms) == len(rw.labeled(y).atoms)):
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
            sizes[rw.labeled(node.output[0]).axis] = len(keep)
            rw.set_input(i, 3, sizes)

    def output_rank(self, node: NodeProto) -> RankRule | None:
        return "same"


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
            ctx.block(lx.atoms, f"{label} reduces over the channel axis")
            return
        keepdims = int(attr(node, "keepdims", 1))
        axis = lx.axis if keepdims else lx.axis - sum(1 for a in axes if a < lx.axis)
        _pass(ctx, node, axis, lx.atoms)


@register
class Pad(Handler):
    op_types = ("Pad",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        lx = ctx.labeled(node.input[0])
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        if len(node.input) > 1:
            pads = _const_ints(ctx, node.input[1])
            axes = _const_ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
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

    def output_rank(self, node: NodeProto) -> RankRule | None:
        return "same"


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

    def output_rank(self, node: NodeProto) -> RankRule | None:
        return "same"


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


@register
class Gather(Handler):
    op_types = ("Gather",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Gather on another axis moves the channel axis; on the channel axis it must pick channels along one
        dimension of a constant index tensor (the dynamo exporter writes flatten-like gathers that way)."""
        lx = ctx.labeled(node.input[0])
        if ctx.labeled(node.input[1]) is not None:
            ctx.block_inputs(i, f"Gather {ctx.node_label(i)} takes channels as indices")
            return
        if lx is None:
            return
        rank = ctx.graph.rank(node.input[0])
        idx = ctx.graph.const(node.input[1])
        if rank is None or idx is None:
            ctx.block(lx.atoms, f"Gather {ctx.node_label(i)}: indices not constant")
            return
        axis = int(attr(node, "axis", 0)) % rank
        if axis != lx.axis:
            _pass(ctx, node, lx.axis if lx.axis < axis else lx.axis - 1 + idx.ndim, lx.atoms)
            return
        varying = [k for k, d in enumerate(idx.shape) if d != 1]
        if len(varying) != 1:
            ctx.block(lx.atoms, f"Gather {ctx.node_label(i)} picks channels in a pattern onnxprune cannot follow")
            return
        flat = np.where(idx.ravel() < 0, idx.ravel() + lx.size, idx.ravel())
        _pass(ctx, node, axis + varying[0], lx.atoms[flat])

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        lx, ly = rw.labeled(node.input[0]), rw.labeled(node.output[0])
        kin, kout = rw.keep(node.input[0]), rw.keep(node.output[0])
        rank = rw.graph.rank(node.input[0])
        if kin is None or ly is None or int(attr(node, "axis", 0)) % rank != lx.axis:
            return
        idx = rw.const(node.input[1])
        flat = np.where(idx.ravel() < 0, idx.ravel() + lx.size, idx.ravel())
        kout = kout if kout is not None else np.arange(len(flat))
        shape = [len(kout) if d != 1 else 1 for d in idx.shape]
        rw.set_input(i, 1, np.searchsorted(kin, flat[kout]).astype(idx.dtype).reshape(shape))


