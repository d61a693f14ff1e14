"""Ops that join or cut the channel axis: Concat, Split, Slice and Gather."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, Handler, RankOf, RewriteContext, attr, register
from onnxprune.ops.common import _const_ints, _pass
from onnxprune.ops.strided import identity_gather


# --------------------------------------------------------------------------------------------
@register
class Concat(Handler):
    op_types = ("Concat",)

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        names = [n for n in node.input]
        labs = [ctx.labeled(n) for n in names]
        if not any(labs):
            return
        label = f"Concat {ctx.node_label(i)}"
        rank = ctx.graph.rank(node.output[0]) or next((r for n in names if (r := ctx.graph.rank(n))), None)
        if rank is None:
            ctx.block_inputs(i, f"{label}: ranks unknown")
            return
        axis = int(attr(node, "axis", 0)) % rank
        lab_axes = {lab.axis for lab in labs if lab is not None}
        if lab_axes != {axis}:
            present = [lab for lab in labs if lab is not None]
            first = present[0]
            passive = [_passive_constant(ctx.graph, i, node, p, first.axis, first.size)
                       for p, lab in enumerate(labs) if lab is None]
            if len(lab_axes) == 1 and all(passive):  # joined along another axis: tie
                for lab in present[1:]:
                    if lab.size != first.size:
                        ctx.block_inputs(i, f"{label} joins channel tensors of different widths")
                        return
                    ctx.tie(first.atoms, lab.atoms)
                for where in passive:  # constants joined in (a class token) follow the channels
                    assert where is not None
                    ctx.weight(where[2], first.atoms, "const", where[0], axis=where[3])
                _pass(ctx, node, first.axis, first.atoms)
            else:
                fed = next((n for n, lab, where in zip(names, labs, _padded(passive, labs))
                            if lab is None and where is None and n in ctx.graph.inputs), None)
                reason = (f"{label} joins graph input '{fed}' along another axis (a cache: its shape would change)"
                          if fed else f"{label} joins tensors whose channels lie on other axes")
                ctx.block_inputs(i, reason)
            return
        parts = []
        for name, maybe in zip(names, labs):
            if maybe is not None:
                parts.append(maybe.atoms)
                continue
            shape = ctx.graph.shape(name)
            size = shape[axis] if shape is not None and len(shape) > axis else None
            if not isinstance(size, int):
                ctx.block_inputs(i, f"{label}: width of input '{name}' unknown")
                return
            parts.append(ctx.fixed(i, name, size, f"{label} joins fixed channels from '{name}'"))
        _pass(ctx, node, axis, np.concatenate(parts))


    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """Constants joined along another axis than the channels' keep the kept channels."""
        keep, ly = rw.keep(node.output[0]), rw.labeled(node.output[0])
        if keep is None or ly is None:
            return
        for p, name in enumerate(node.input):
            where = None if rw.labeled(name) is not None else _passive_constant(rw.graph, i, node, p, ly.axis, ly.size)
            if where is None:
                continue
            value = np.take(rw.const(where[2]), keep, axis=where[3])
            if where[0] == i:
                rw.set_input(i, p, value)
            else:
                _shrink_expand(rw, where[0], value, ly.axis)


def _padded(passive: list, labs: list) -> list:
    """``passive`` (one entry per unlabeled input) spread over every input (None where labeled)."""
    it = iter(passive)
    return [None if lab is not None else next(it) for lab in labs]


def _passive_constant(graph: Graph, i: int, node: NodeProto, port: int, axis: int, size: int
                      ) -> tuple[int, int, str, int] | None:
    """Where the channels of an unlabeled Concat input come from a constant: (node, port, constant, axis in
    it) for the constant itself or for an Expand of one (``cls_token.expand(batch, -1, -1)``), else ``None``."""
    name = node.input[port]
    if graph.is_const(name):
        shape = graph.const_shape(name)
        fits = shape is not None and len(shape) > axis and shape[axis] == size
        return (i, port, name, axis) if fits else None
    producer = graph.producer.get(name)
    if producer is None:
        return None
    expand = graph.nodes[producer]
    out_rank = graph.rank(name)
    if expand.op_type != "Expand" or out_rank is None or not graph.is_const(expand.input[0]):
        return None
    data, length = graph.const_shape(expand.input[0]), graph.shape(expand.input[1])
    k = axis - (out_rank - len(data)) if data is not None else -1
    if data is None or k < 0 or data[k] != size or not length or not isinstance(length[0], int):
        return None
    return producer, 0, expand.input[0], k


def _shrink_expand(rw: RewriteContext, j: int, data: np.ndarray, axis: int) -> None:
    """Expand node ``j`` broadcasts the cut constant ``data``: a new Expand reads it, with the shape entry of
    that axis set to 1 (the data's width) -- in the constant shape, or by a ScatterElements on a computed one."""
    expand = rw.graph.nodes[j]
    out_rank = rw.graph.rank(expand.output[0]) or 0
    names = {tag: rw.fresh(f"{expand.input[0]}_{tag}") for tag in ("pruned", "shape", "index", "one")}
    new = NodeProto()
    new.CopyFrom(expand)
    new.input[0] = names["pruned"]
    nodes, constants = [new], {names["pruned"]: data}
    if rw.graph.is_const(expand.input[1]):
        shape = np.array(rw.const(expand.input[1]), dtype=np.int64).copy()
        entry = axis - (out_rank - len(shape))
        if entry >= 0:
            shape[entry] = 1
        new.input[1] = names["shape"]
        constants[names["shape"]] = shape
    else:
        length = rw.graph.shape(expand.input[1])
        entry = axis - (out_rank - int(length[0] if length and isinstance(length[0], int) else 0))
        if entry >= 0:
            new.input[1] = names["shape"]
            nodes.insert(0, helper.make_node("ScatterElements", [expand.input[1], names["index"], names["one"]],
                                             [names["shape"]], name=rw.fresh(f"{expand.name}_shape"), axis=0))
            constants.update({names["index"]: np.array([entry], dtype=np.int64),
                              names["one"]: np.array([1], dtype=np.int64)})
    rw.replace_node(j, nodes, constants)


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
        if all(rw.labeled(o) is None or rw.label(o).axis == lx.axis and rw.label(o).size == lx.size
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
        rank = rw.graph.rank(x)
        if kin is None or len(node.input) < 3 or rank is None:
            return
        lx = rw.label(x)
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
            _embedding(i, node, ctx)
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
        if lx is None and kout is not None and (copied := identity_gather(rw.graph, i)) is not None:
            rw.replace_node(i, [helper.make_node("Identity", [copied], [node.output[0]], name=node.name)], {})
            return  # a view listing every element of ``copied`` in order (ops/strided.py)
        if lx is None and kout is not None:  # an embedding table: keep its columns
            rw.set_input(i, 0, np.take(rw.const(node.input[0]), kout, axis=1))
            return
        rank = rw.graph.rank(node.input[0])
        if kin is None or lx is None or ly is None or rank is None or int(attr(node, "axis", 0)) % rank != lx.axis:
            return
        idx = rw.const(node.input[1])
        flat = np.where(idx.ravel() < 0, idx.ravel() + lx.size, idx.ravel())
        kout = kout if kout is not None else np.arange(len(flat))
        shape = [len(kout) if d != 1 else 1 for d in idx.shape]
        rw.set_input(i, 1, np.searchsorted(kin, flat[kout]).astype(idx.dtype).reshape(shape))

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        data, indices = rank(node.input[0]), rank(node.input[1])
        return None if data is None or indices is None else data - 1 + indices


def _embedding(i: int, node: NodeProto, ctx: AnalysisContext) -> None:
    """Rows of a constant float table looked up by index (token, token-type and position embeddings): the
    table's columns are the hidden width, created here. An int8/uint8 table holds quantized codes (dynamic
    quantization's embeddings, a DequantizeLinear after the Gather): its columns are cut the same way."""
    table = ctx.graph.const_shape(node.input[0])
    out_rank = ctx.graph.rank(node.output[0])
    if (table is None or len(table) != 2 or table[1] < 2 or int(attr(node, "axis", 0)) != 0 or out_rank is None
            or ctx.graph.elem_type(node.input[0]) not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                                                          TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8)):
        return
    atoms = ctx.source(i, node.output[0], out_rank - 1, int(table[1]))
    ctx.weight(node.input[0], atoms, "out", i, axis=1)
    ctx.tag(atoms, "hidden")
