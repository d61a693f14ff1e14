"""Shape: reading a channel tensor's shape is fine while the channel count read from it is not used, or only
rebuilds the tensor's own shape for a Reshape that keeps the channels where they are (that Shape reads the cut
count at run time)."""
from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import AnalysisContext, Handler, attr, register
from onnxprune.ops.shape_entries import dims_product, entries_taken, resolved_shape


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
        for j, port in ctx.graph.consumer_nodes(node.output[0]):
            user = ctx.graph.nodes[j]
            entries = entries_taken(ctx.graph, user, end - start) if port == 0 else None
            if entries is None or (pos in entries and not _shapes_itself(ctx.graph, node.input[0], user.output[0],
                                                                        entries.index(pos), lx.axis, lx.size)):
                ctx.block(lx.atoms, f"Shape {ctx.node_label(i)} reads the channel count")
                return


def _shapes_itself(graph: Graph, tensor: str, name: str, position: int, axis: int, size: int, depth: int = 0
                   ) -> bool:
    """Whether the channel count read into entry ``position`` of ``name`` only becomes entry ``axis`` of the
    shape of a Reshape of ``tensor`` itself that keeps its channels on ``axis`` (``x.flatten(2)`` written with
    Shape, Slice and Concat): the Reshape then reads the cut count itself, and that entry is left as it is."""
    uses = graph.consumer_nodes(name)
    if not uses or depth > 8 or name in graph.outputs:
        return False
    for j, port in uses:
        user = graph.nodes[j]
        if user.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity") and port == 0:
            ok = _shapes_itself(graph, tensor, user.output[0], position, axis, size, depth + 1)
        elif user.op_type == "Concat" and int(attr(user, "axis", 0)) == 0:
            lengths = [graph.shape(n) for n in user.input[:port]]
            if not all(s and isinstance(s[0], int) for s in lengths):
                return False
            offset = sum(int(s[0]) for s in lengths if s and isinstance(s[0], int))
            ok = _shapes_itself(graph, tensor, user.output[0], position + offset, axis, size, depth + 1)
        elif user.op_type == "Reshape" and port == 1 and user.input[0] == tensor:
            src, inferred = graph.shape(tensor), graph.shape(user.output[0])
            dst = resolved_shape(graph, user, list(src), list(inferred)) if src and inferred else None
            ok = (position == axis and src is not None and dst is not None and len(dst) > axis
                  and dst[axis] == size and dims_product(list(src[axis + 1:])) == dims_product(list(dst[axis + 1:]))
                  and dims_product(list(src[axis + 1:])) is not None)
        else:
            ok = False
        if not ok:
            return False
    return True
