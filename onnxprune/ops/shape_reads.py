"""Shape: reading a channel tensor's shape is fine while the channel count read from it is not used, or only
rebuilds the tensor's own shape for a Reshape that keeps the channels where they are (that Shape reads the cut
count at run time)."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.handlers import AnalysisContext, Handler, attr, register
from onnxprune.ops.shape_entries import entries_taken


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
        reason = f"Shape {ctx.node_label(i)} reads the channel count"
        for j, port in ctx.graph.consumer_nodes(node.output[0]):
            user = ctx.graph.nodes[j]
            entries = entries_taken(ctx.graph, user, end - start) if port == 0 else None
            if entries is None or (pos in entries and
                                   not _shapes_alike(ctx, user.output[0], entries.index(pos), lx.atoms, reason)):
                ctx.block(lx.atoms, reason)
                return


def _shapes_alike(ctx: AnalysisContext, name: str, position: int, atoms: np.ndarray, reason: str, depth: int = 0
                  ) -> bool:
    """Whether the channel count read into entry ``position`` of ``name`` only becomes that entry of the shape of
    Reshapes that put the same channels, whole, on that axis (``x.flatten(2)``, Swin's window partition written
    with Shape, Gather and Concat): each Reshape's shape entry is rewritten with it (or reads the cut count itself).
    The Reshapes' output labels are known only later in the walk: the check is deferred, blocking with ``reason``."""
    graph = ctx.graph
    uses = graph.consumer_nodes(name)
    if not uses or depth > 8 or name in graph.outputs:
        return False
    for j, port in uses:
        user = graph.nodes[j]
        if user.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity") and port == 0:
            ok = _shapes_alike(ctx, user.output[0], position, atoms, reason, depth + 1)
        elif user.op_type == "Concat" and int(attr(user, "axis", 0)) == 0:
            lengths = [graph.shape(n) for n in user.input[:port]]
            if not all(s and isinstance(s[0], int) for s in lengths):
                return False
            offset = sum(int(s[0]) for s in lengths if s and isinstance(s[0], int))
            ok = _shapes_alike(ctx, user.output[0], position + offset, atoms, reason, depth + 1)
        elif user.op_type == "Reshape" and port == 1:
            def check(out: str = user.output[0]) -> None:
                lab = ctx.labeled(out)
                if lab is None or lab.axis != position or not np.array_equal(lab.atoms, atoms):
                    ctx.block(atoms, reason)
            ctx.defer(check)
            ok = True
        else:
            ok = False
        if not ok:
            return False
    return True
