"""Ops that move or regroup axes: Transpose, (Un)Squeeze, Flatten, Reshape and Expand."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.channels import UnionFind
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register, same_rank
from onnxprune.ops.batch_heads import follow_batch_fold
from onnxprune.ops.common import _axes_of, _pass, axes_of
from onnxprune.ops.shape_entries import dims_product, resolved_shape, set_shape_entry, shape_entries, shape_entry_source
from onnxprune.ops.strided import follow_identity_gather


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

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        return same_rank(node, rank)


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
        src, inferred = ctx.graph.shape(node.input[0]), ctx.graph.shape(node.output[0])
        if src is None or inferred is None:
            ctx.block(lx.atoms, f"{label}: shapes unknown")
            return
        src = tuple(lx.size if k == lx.axis else d for k, d in enumerate(src))  # the channel axis is known
        dst = resolved_shape(ctx.graph, node, list(src), list(inferred))
        if not ctx.graph.is_const(node.input[1]) and ctx.graph.opset() < 11:
            ctx.block(lx.atoms, f"{label} reshapes the channel axis with a computed shape (opset < 11)")
            return
        runs = _matching_runs(list(src), list(dst), lx.axis)
        if runs is None and (follow_batch_fold(ctx, i, node, lx, list(src), list(dst), _regroup)
                             or (len(dst) == 1 and follow_identity_gather(ctx, node, lx))):
            return
        if runs is None:
            ctx.block(lx.atoms, f"{label} splits or reorders the channel axis in a way onnxprune cannot follow")
            return
        a0, a1, b0, b1 = runs
        src_run = [d if isinstance(d, int) else 0 for d in src[a0:a1]]  # static: _matching_runs checked
        dst_run = [d if isinstance(d, int) else 0 for d in dst[b0:b1]]
        src_run[lx.axis - a0] = lx.size
        carriers = [m for m, d in enumerate(dst_run) if d > 1]
        if not carriers:
            return  # a single channel folded into size-1 axes: nothing to follow
        if lx.axis == len(src) - 1:  # an axis the graph picks entries of lists tensors (packed Q, K, V)
            carriers = [m for m in carriers if not _picked(ctx.graph, node.output[0], b0 + m)] or carriers
        carrier = _carrier(lx.axis == len(src) - 1, src_run, lx.axis - a0, dst_run, carriers)
        units, atoms_at = _regroup(src_run, lx.axis - a0, dst_run, carrier)
        for unit in units:
            ctx.tie(lx.atoms[np.repeat(unit[:1], len(unit) - 1)], lx.atoms[unit[1:]])
        if units and lx.axis == len(src) - 1 and len(carriers) > 1:
            ctx.tag(lx.atoms, "head")  # features split into heads of several channels each
        _pass(ctx, node, b0 + carrier, lx.atoms[atoms_at])

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        y = node.output[0]
        keep = rw.keep(y)
        if keep is None:
            return
        axis = rw.label(y).axis
        if not rw.graph.is_const(node.input[1]):
            if not _entry_follows(rw, node, axis, len(keep)):
                set_shape_entry(rw, i, node, 1, axis, len(keep))
            return
        shape = np.array(rw.const(node.input[1]), dtype=np.int64).copy()
        lx = rw.labeled(node.input[0])
        if shape[axis] == -1 or (shape[axis] == 0 and lx is not None and lx.axis == axis
                                 and lx.size == rw.label(y).size):
            return
        shape[axis] = len(keep)
        rw.set_input(i, 1, shape)

    def foldable(self, node: NodeProto) -> bool:
        return True


def _entry_follows(rw: RewriteContext, node: NodeProto, axis: int, count: int) -> bool:
    """Whether entry ``axis`` of a computed reshape target becomes ``count`` by itself: a computed ``-1``, or the
    size of a cut axis read by ``Shape`` that keeps ``count`` too (``x.flatten(2)``, ``[B, H] = q.shape[:2]``)."""
    entries = shape_entries(rw.graph, node.input[1])
    if entries and axis < len(entries) and entries[axis] == -1:
        return True
    source = shape_entry_source(rw.graph, node.input[1], axis)
    read = rw.labeled(source[0]) if source is not None else None
    return read is not None and source is not None and read.axis == source[1] and \
        len(rw.keep_or_all(source[0])) == count


def _static(dims: list) -> bool:
    return all(isinstance(d, int) for d in dims)


def _matching_runs(src: list, dst: list, axis: int) -> tuple[int, int, int, int] | None:
    """The smallest runs ``src[a0:a1]`` (holding the channel axis) and ``dst[b0:b1]`` of static dims with equal
    products and equal products of what follows them, or of what precedes them (a reshape keeps the element
    count, so then what follows is equal too): the element order is kept, so every element of the run stays
    with the same channel."""
    best: tuple[int, tuple[int, int, int, int]] | None = None
    for a0 in range(axis, -1, -1):
        if not _static(src[a0:axis + 1]):
            break
        for a1 in range(axis + 1, len(src) + 1):
            if not _static(src[a0:a1]):
                break
            tail, head = dims_product(src[a1:]), dims_product(src[:a0])
            size = int(np.prod(src[a0:a1]))
            for b0 in range(len(dst)):
                for b1 in range(b0 + 1, len(dst) + 1):
                    if not _static(dst[b0:b1]):
                        break
                    # equal products after the runs, or before them (the element count is kept either way)
                    same = (tail is not None and dims_product(dst[b1:]) == tail) or \
                        (head is not None and dims_product(dst[:b0]) == head)
                    if int(np.prod(dst[b0:b1])) == size and same:
                        cost = (a1 - a0) + (b1 - b0)
                        if best is None or cost < best[0]:
                            best = (cost, (a0, a1, b0, b1))
    return best[1] if best is not None else None


def _positions(dims: list[int], axis: int) -> np.ndarray:
    """The index along ``axis`` of every element of a C-ordered block of ``dims``."""
    stride = int(np.prod(dims[axis + 1:]))
    return (np.arange(int(np.prod(dims)), dtype=np.int64) // stride) % dims[axis]


def _regroup(src_run: list[int], p: int, dst_run: list[int], m: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Channels (``src_run[p]``) that share a position along ``dst_run[m]`` are one unit: the units of more than
    one channel (channel indices, smallest first) and, for each position along ``dst_run[m]``, the smallest
    channel of its unit."""
    channels, width = src_run[p], dst_run[m]
    pairs = np.unique(_positions(src_run, p) * width + _positions(dst_run, m))
    uf = UnionFind()
    uf.add(channels + width)
    uf.union(pairs // width, channels + pairs % width)
    root = uf.roots()  # the smallest id of each class: a channel, as channels come first
    order = np.argsort(root[:channels], kind="stable")
    bounds = np.flatnonzero(np.diff(root[:channels][order])) + 1
    units = [u for u in np.split(order, bounds) if len(u) > 1]
    return units, root[channels:]


def _picked(graph: Graph, tensor: str, axis: int, depth: int = 0) -> bool:
    """Whether single entries of ``tensor``'s ``axis`` are taken apart (Gather, Split), following Transpose and
    (Un)Squeeze: ``[.., 3*D] -> [.., 3, D]`` before ``q, k, v = t[0], t[1], t[2]``."""
    rank = graph.rank(tensor)
    if rank is None or depth > 8:
        return False
    for j, port in graph.consumer_nodes(tensor):
        user = graph.nodes[j]
        if port != 0 or not user.output:
            continue
        if user.op_type in ("Gather", "Split") and int(attr(user, "axis", 0)) % rank == axis:
            return True
        nxt: int | None = None
        if user.op_type == "Transpose":
            perm = attr(user, "perm") or list(reversed(range(rank)))
            nxt = list(perm).index(axis)
        elif user.op_type in ("Unsqueeze", "Squeeze"):
            axes = axes_of(graph, user)
            if axes is None:
                continue
            if user.op_type == "Unsqueeze":
                nxt = axis
                for a in sorted(x % (rank + len(axes)) for x in axes):
                    nxt += a <= nxt
            elif axis not in [a % rank for a in axes]:
                nxt = axis - sum(1 for a in axes if a % rank < axis)
        if nxt is not None and _picked(graph, user.output[0], nxt, depth + 1):
            return True
    return False


def _carrier(channels_last: bool, src_run: list[int], p: int, dst_run: list[int], carriers: list[int]) -> int:
    """Which new axis carries the channels when one axis becomes several.

    In a transformer (channels last) ``[.., H*D] -> [.., H, D]`` splits features into heads: the axis before
    the last one carries them, so whole heads are the units and head_dim stays. Elsewhere (a channel shuffle
    ``[N, g*c, ..] -> [N, g, c, ..]``, GroupNorm's ``[N, C, H, W] -> [N, g, C/g*H*W]``) the axis giving the most
    units carries them, one unit per position where there is a choice."""
    if len(carriers) == 1:
        return carriers[0]
    if channels_last:
        return carriers[-2]
    counts = [len(np.unique(_regroup(src_run, p, dst_run, m)[1])) for m in carriers]
    return carriers[max(range(len(carriers)), key=lambda k: (counts[k], counts[k] == dst_run[carriers[k]], k))]


@register
class Expand(Handler):
    op_types = ("Expand",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Broadcasting along other axes passes the channels on (grouped-query attention repeats KV heads that
        way); the channel axis itself must keep its width."""
        lx = ctx.labeled(node.input[0])
        if ctx.labeled(node.input[1]) is not None:
            ctx.block_inputs(i, f"Expand {ctx.node_label(i)} takes channels as a shape")
            return
        if lx is None:
            return
        in_rank, out = ctx.graph.rank(node.input[0]), ctx.graph.shape(node.output[0])
        axis = lx.axis + len(out) - in_rank if out is not None and in_rank is not None else -1
        if out is None or out[axis] != lx.size:
            ctx.block(lx.atoms, f"Expand {ctx.node_label(i)} broadcasts the channel axis")
            return
        length = ctx.graph.shape(node.input[1])
        if not ctx.graph.is_const(node.input[1]) and not (length and isinstance(length[0], int)):
            ctx.block(lx.atoms, f"Expand {ctx.node_label(i)}: length of its computed shape unknown")
            return
        _pass(ctx, node, axis, lx.atoms)

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        y = node.output[0]
        if rw.keep(y) is None:
            return
        axis, rank = rw.label(y).axis, rw.graph.rank(y) or 0
        if not rw.graph.is_const(node.input[1]):
            k = axis - (rank - _shape_length(rw, node))
            if k >= 0:  # an entry short of the output's rank broadcasts already
                set_shape_entry(rw, i, node, 1, k, 1)
            return
        shape = np.array(rw.const(node.input[1]), dtype=np.int64).copy()
        k = axis - (rank - len(shape))
        if 0 <= k and shape[k] != 1:
            shape[k] = 1  # 1 keeps the input's (cut) width
            rw.set_input(i, 1, shape)



def _shape_length(rw: RewriteContext, node: NodeProto) -> int:
    shape = rw.graph.shape(node.input[1])
    return shape[0] if shape and isinstance(shape[0], int) else 0
