"""Shape vectors computed in the graph (``Concat`` of ``Shape`` pieces and constants, as the legacy exporter writes
reshape targets): reading their fixed entries, resolving the dims shape inference left symbolic, and writing a new
entry when a cut changes a count they hold."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.core.graph import Graph
from onnxprune.core.handlers import RewriteContext, attr
from onnxprune.ops.common import value_ints


def set_shape_entry(rw: RewriteContext, i: int, node: NodeProto, port: int, index: int, value: int) -> None:
    """Make the computed shape read at ``node``'s ``port`` hold ``value`` at ``index`` (the rest of the shape stays
    as the graph computes it): where the entry is a constant piece of a ``Concat``, a copy of that Concat with the
    new piece (shape inference still reads it, so a model pruned once prunes again); else a ScatterElements."""
    if _set_concat_piece(rw, i, node, port, index, value):
        return
    patched = rw.fresh(f"{node.input[port]}_pruned")
    where, what = rw.fresh(f"{patched}_index"), rw.fresh(f"{patched}_value")
    scatter = helper.make_node("ScatterElements", [node.input[port], where, what], [patched],
                               name=rw.fresh(f"{node.name or node.op_type}_shape"), axis=0)
    copy = NodeProto()
    copy.CopyFrom(node)
    copy.input[port] = patched
    rw.replace_node(i, [scatter, copy], {where: np.array([index], dtype=np.int64),
                                         what: np.array([value], dtype=np.int64)})


def _set_concat_piece(rw: RewriteContext, i: int, node: NodeProto, port: int, index: int, value: int) -> bool:
    """:func:`set_shape_entry` through a private copy of the ``Concat`` that builds the shape, when the entry
    lies in one of its constant pieces; False where it does not."""
    producer = rw.graph.producer.get(node.input[port])
    concat = rw.graph.nodes[producer] if producer is not None else None
    if concat is None or concat.op_type != "Concat":
        return False
    found = concat_piece(rw.graph, concat, index)
    part = rw.graph.value(concat.input[found[0]]) if found is not None else None
    if found is None or part is None:
        return False
    k, at = found
    entries = np.array(part, dtype=np.int64).ravel()
    entries[at] = value
    shape, new_piece = rw.fresh(f"{node.input[port]}_pruned"), rw.fresh(f"{concat.input[k]}_pruned")
    copy_concat, copy = NodeProto(), NodeProto()
    copy_concat.CopyFrom(concat)
    copy_concat.name = rw.fresh(f"{concat.name or 'Concat'}_pruned")
    copy_concat.input[k], copy_concat.output[0] = new_piece, shape
    copy.CopyFrom(node)
    copy.input[port] = shape
    rw.replace_node(i, [copy_concat, copy], {new_piece: entries.reshape(np.shape(part))})
    return True


def concat_piece(graph: Graph, concat: NodeProto, index: int) -> tuple[int, int] | None:
    """(input port, position in that piece) of entry ``index`` of a 1-D ``Concat``'s output; ``None`` where a
    piece before it has no known length."""
    for k, piece in enumerate(concat.input):
        part, length = graph.value(piece), graph.shape(piece)
        size = np.asarray(part).size if part is not None else length[0] if length else None
        if not isinstance(size, int):
            return None
        if index < size:
            return k, index
        index -= size
    return None


def shape_entries(graph: Graph, name: str) -> list[int | None] | None:
    """The entries of a shape vector that are fixed: its value, or a Concat's pieces (None where computed)."""
    value = graph.value(name)
    if value is not None:
        return [int(v) for v in np.asarray(value).ravel()]
    producer = graph.producer.get(name)
    node = graph.nodes[producer] if producer is not None else None
    if node is not None and node.op_type == "ScatterElements":  # an entry set by an earlier prune
        return _scattered_entries(graph, node)
    if node is None or node.op_type != "Concat":
        return None
    entries: list[int | None] = []
    for piece in node.input:
        part, length = graph.value(piece), graph.shape(piece)
        if part is not None:
            entries.extend(int(v) for v in np.asarray(part).ravel())
        elif length and isinstance(length[0], int):
            entries.extend([None] * length[0])
        else:
            return None
    return entries


def shape_entry(graph: Graph, node: NodeProto, index: int, port: int = 1) -> int | None:
    """Entry ``index`` of the shape vector ``node`` reads at ``port`` where it is fixed (``-1`` included)."""
    entries = shape_entries(graph, node.input[port]) if len(node.input) > port else None
    return entries[index] if entries is not None and index < len(entries) else None


def _scattered_entries(graph: Graph, node: NodeProto) -> list[int | None] | None:
    """The fixed entries of ``ScatterElements(shape, indices, updates)`` along axis 0 with constant indices and
    updates (what :func:`set_shape_entry` writes): the shape's entries with the updates in place."""
    entries = shape_entries(graph, node.input[0])
    where, what = graph.value(node.input[1]), graph.value(node.input[2])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    reduction = next((a.s for a in node.attribute if a.name == "reduction"), b"none")
    if entries is None or where is None or what is None or axis != 0 or reduction != b"none":
        return None
    for index, value in zip(np.asarray(where).ravel(), np.asarray(what).ravel()):
        if not -len(entries) <= int(index) < len(entries):
            return None
        entries[int(index)] = int(value)
    return entries


def resolved_shape(graph: Graph, node: NodeProto, src: list, dst: list) -> list:
    """``dst`` with dims shape inference left symbolic filled in from the shape's fixed entries, and a -1 worked
    out where the symbols cancel (``[B*W, N, C] -> [B*W, N, -1, D]``: -1 is C / D whatever B*W is)."""
    entries = shape_entries(graph, node.input[1])
    if entries is None or len(entries) != len(dst):
        return dst
    dst = [e if not isinstance(d, int) and e is not None and e > 0 else d for d, e in zip(dst, entries)]
    open_ = [k for k, e in enumerate(entries) if e == -1 and not isinstance(dst[k], int)]
    total, rest = dims_product(src), dims_product([d for k, d in enumerate(dst) if k not in open_])
    if len(open_) == 1 and total is not None and rest is not None and rest[0] and total[0] % rest[0] == 0:
        left = list(total[1])
        for symbol in rest[1]:
            if symbol not in left:
                return dst
            left.remove(symbol)
        if not left:
            dst[open_[0]] = total[0] // rest[0]
    return dst


def dims_product(dims: list) -> tuple[int, tuple[str, ...]] | None:
    """A product of dims as (static part, sorted symbols), or ``None`` when a dim is unknown."""
    static, symbols = 1, []
    for d in dims:
        if isinstance(d, int):
            static *= d
        elif isinstance(d, str):
            symbols.append(d)
        else:
            return None
    return static, tuple(sorted(symbols))


def entries_taken(graph, user: NodeProto, length: int) -> list[int] | None:
    """The entries of a shape vector of ``length`` that a Gather or Slice (``user``) takes, or ``None`` if not
    known."""
    def ints(k: int) -> list[int] | None:
        return value_ints(graph, user.input[k]) if len(user.input) > k else None

    if user.op_type == "Gather":
        idx = ints(1)
        return None if idx is None else [x % length for x in idx]
    if user.op_type == "Slice" and len(user.input) >= 3:
        starts, ends, steps = ints(1), ints(2), ints(4) or [1]
        if starts is None or ends is None or len(starts) != 1 or (ints(3) or [0])[0] != 0:
            return None
        return list(range(length))[slice(starts[0], ends[0], steps[0])]
    return None


def shape_entry_source(graph, name: str, index: int, depth: int = 0) -> tuple[str, int] | None:
    """(tensor, axis) when entry ``index`` of the shape vector ``name`` is the size of ``tensor``'s ``axis``
    read by ``Shape`` (through Slice, Gather, Concat, (Un)Squeeze, Cast, Identity); ``None`` otherwise."""
    producer = graph.producer.get(name)
    node = graph.nodes[producer] if producer is not None and depth < 8 else None
    if node is None:
        return None
    if node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return shape_entry_source(graph, node.input[0], index, depth + 1)
    if node.op_type == "Concat":
        found = concat_piece(graph, node, index)
        return shape_entry_source(graph, node.input[found[0]], found[1], depth + 1) if found is not None else None
    if node.op_type in ("Slice", "Gather"):
        length = graph.shape(node.input[0])
        taken = entries_taken(graph, node, length[0]) if length and isinstance(length[0], int) else None
        return shape_entry_source(graph, node.input[0], taken[index], depth + 1) if taken and index < len(taken) \
            else None
    if node.op_type == "Shape":
        rank = graph.rank(node.input[0])
        start = int(attr(node, "start", 0))
        start = start % rank if rank and start < 0 else start
        return node.input[0], start + index
    return None
