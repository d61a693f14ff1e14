"""Dependency analysis: walk the graph once, let each op handler label, tie and block channels, then close the
ties into :class:`PruneGroup` s. Everything a group touches is known before anything is cut.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxprune.core.channels import Labeled, UnionFind
from onnxprune.core.graph import Graph
from onnxprune.core.handlers import handler_for
from onnxprune.errors import UsageError

__all__ = ["KINDS", "Analysis", "Analyzer", "PruneGroup", "WeightRef", "analyze"]

#: What a group's channels are, as ``inspect``, the report and the per-kind ratios name them: attention heads,
#: a transformer's hidden width (the residual stream), convolution channels, hidden features of linear layers.
KINDS = ("head", "hidden", "channels", "mlp")
#: Ops whose outputs are convolution channels.
CONV_OPS = ("Conv", "ConvTranspose", "FusedConv", "QLinearConv", "ConvInteger")


@dataclass(frozen=True)
class WeightRef:
    """A constant whose rows follow channels: ``view(array)`` is 2-D with one row per entry of ``atoms``;
    ``axis``, where the view is the plain one (that axis first, the rest flattened), so that the rows of a slice
    along it are the view's rows of that slice."""

    name: str
    atoms: np.ndarray
    role: str  # "out" (filters), "in" (consumer columns), "norm" (BN/IN scale), "bias", "const"
    node: int
    view: Callable[[np.ndarray], np.ndarray]
    axis: int | None = None


@dataclass
class PruneGroup:
    """Channels that must be removed together, with everything that blocks them."""

    id: int
    units: np.ndarray  # root atom of each unit (a channel of the group)
    sources: list[str]  # labels of the nodes that create these channels
    tensors: list[str]  # tensors carrying the group's channels
    nodes: list[int]  # nodes whose weights follow the group's channels
    cells: np.ndarray | None = None  # [n_cells, cell_size] local unit indices: equal keep-count per cell
    blocked: str | None = None
    kind: str = "mlp"  # one of KINDS

    @property
    def size(self) -> int:
        return int(self.units.shape[0])

    @property
    def prunable(self) -> bool:
        return self.blocked is None and self.size > 1


@dataclass
class Analysis:
    """The result of :func:`analyze`: groups, channel labels of tensors and the weights that follow channels."""

    graph: Graph
    groups: list[PruneGroup]
    labels: dict[str, Labeled]
    weights: list[WeightRef]
    root: np.ndarray  # atom -> the root atom of its unit
    unit_group: np.ndarray  # atom -> group id
    unit_local: np.ndarray  # atom -> index of its unit within the group

    def unit_index(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group id, local unit index) for each atom."""
        return self.unit_group[atoms], self.unit_local[atoms]

    def keep_positions(self, removed: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Kept positions of every shrunk tensor, given each group's removed local units."""
        gone_unit = np.zeros(len(self.root), dtype=bool)
        for gid, local in removed.items():
            members = np.nonzero(self.unit_group == gid)[0]
            gone_unit[members[np.isin(self.unit_local[members], local)]] = True
        out: dict[str, np.ndarray] = {}
        for name, lab in self.labels.items():
            gone = gone_unit[lab.atoms]
            if gone.any():
                out[name] = np.nonzero(~gone)[0].astype(np.int64)
        return out


class Analyzer:
    """The context op handlers work in while the graph is walked in topological order."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.atoms = UnionFind()
        self.atom_source: list[np.ndarray] = []
        self.sources: list[tuple[int, str]] = []  # (node index, tensor)
        self.labels: dict[str, Labeled] = {}
        self.weights: list[WeightRef] = []
        self.constraints: list[np.ndarray] = []
        self.soft: list[bool] = []
        self.blocks: list[tuple[np.ndarray, str]] = []
        self.tags: list[tuple[np.ndarray, str]] = []
        self.deferred: list[Callable[[], None]] = []

    # -- labels ----------------------------------------------------------------------------------------------
    def labeled(self, name: str) -> Labeled | None:
        return self.labels.get(name) if name else None

    def label(self, name: str) -> Labeled:
        """The channel axis of a tensor known to carry channels."""
        return self.labels[name]

    def set(self, name: str, axis: int, atoms: np.ndarray) -> None:
        self.labels[name] = Labeled(int(axis), np.asarray(atoms, dtype=np.int64))

    def source(self, node: int, tensor: str, axis: int, size: int) -> np.ndarray:
        """Create ``size`` new channels produced by ``node`` on ``tensor``'s ``axis``."""
        atoms = self.atoms.add(size)
        self.atom_source.append(np.full(size, len(self.sources), dtype=np.int64))
        self.sources.append((node, tensor))
        self.set(tensor, axis, atoms)
        return atoms

    def fixed(self, node: int, tensor: str, size: int, reason: str) -> np.ndarray:
        """Atoms for channels that can never be removed (a graph input or constant concatenated in)."""
        atoms = self.atoms.add(size)
        self.atom_source.append(np.full(size, len(self.sources), dtype=np.int64))
        self.sources.append((node, tensor))
        self.block(atoms, reason)
        return atoms

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.atoms.union(a, b)

    def block(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self.blocks.append((np.asarray(atoms, dtype=np.int64), reason))

    def block_inputs(self, node: int, reason: str) -> None:
        """Block every labeled tensor the node reads."""
        for name in self.graph.nodes[node].input:
            lab = self.labeled(name)
            if lab is not None:
                self.block(lab.atoms, reason)

    def constrain(self, blocks: np.ndarray, soft: bool = False) -> None:
        """Require the same number of kept channels in every row of ``blocks`` (atoms, one row per conv group).

        A ``soft`` constraint only balances the cut (equal Split chunks) and is dropped when it cannot hold.
        """
        self.constraints.append(np.asarray(blocks, dtype=np.int64))
        self.soft.append(soft)

    def tag(self, atoms: np.ndarray, kind: str) -> None:
        """Say what the channels are ("head", "hidden"): the group's kind (else conv "channels" or "mlp")."""
        self.tags.append((np.asarray(atoms, dtype=np.int64), kind))

    def weight(self, name: str, atoms: np.ndarray, role: str, node: int, axis: int = 0,
               view: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """Declare that ``name``'s slices along ``axis`` follow ``atoms`` (for scoring and reporting)."""
        plain = view is None
        if view is None:
            def view(a: np.ndarray, _axis: int = axis) -> np.ndarray:
                return np.moveaxis(a, _axis, 0).reshape(a.shape[_axis], -1)
        self.weights.append(WeightRef(name, np.asarray(atoms, dtype=np.int64), role, node, view,
                                      axis if plain else None))

    def node_label(self, node: int) -> str:
        return self.graph.label(node)

    def defer(self, check: Callable[[], None]) -> None:
        """Run ``check`` once every node has been walked (it may read labels set later and block)."""
        self.deferred.append(check)


def analyze(model: onnx.ModelProto | Graph, exclude: Sequence[str] = ()) -> Analysis:
    """Find the channel groups of a model, with the reason each blocked group cannot be pruned."""
    graph = model if isinstance(model, Graph) else Graph.build(model)
    ctx = Analyzer(graph)
    for i, node in enumerate(graph.nodes):
        handler = handler_for(node)
        if handler is None:
            if any(ctx.labeled(n) for n in node.input):
                domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
                ctx.block_inputs(i, f"consumed by unsupported op {domain}{node.op_type} ({graph.label(i)})")
            continue
        handler.propagate(i, node, ctx)
    for check in ctx.deferred:
        check()
    for name in graph.outputs:
        lab = ctx.labeled(name)
        if lab is not None:
            ctx.block(lab.atoms, f"reaches graph output '{name}'")
    for name, lab in ctx.labels.items():
        for i, port in graph.consumer_nodes(name):
            if port < 0:  # read by name inside an If/Loop/Scan body
                ctx.block(lab.atoms, f"read inside a subgraph of {graph.nodes[i].op_type} ({graph.label(i)})")
    return _close(ctx, exclude)


def _close(ctx: Analyzer, exclude: Sequence[str]) -> Analysis:
    graph = ctx.graph
    n_atoms = len(ctx.atoms)
    root = ctx.atoms.roots() if n_atoms else np.zeros(0, dtype=np.int64)
    atom_source = np.concatenate(ctx.atom_source) if ctx.atom_source else np.zeros(0, dtype=np.int64)
    # Sources whose channels are tied end up in one group.
    src_uf = UnionFind()
    src_uf.add(len(ctx.sources))
    if n_atoms:
        src_uf.union(atom_source, atom_source[root])
    for blocks, soft in zip(ctx.constraints, ctx.soft):
        if not soft:  # a grouped conv reading several groups (Concat -> grouped Conv) couples them
            sources = np.unique(atom_source[blocks])
            src_uf.union(np.full(len(sources) - 1, sources[0]), sources[1:])
    src_root = src_uf.roots()
    group_of_atom = src_root[atom_source] if n_atoms else np.zeros(0, dtype=np.int64)

    order = sorted(set(int(s) for s in src_root))  # groups numbered in order of their first source
    gid = {s: k for k, s in enumerate(order)}
    groups: list[PruneGroup] = []
    unit_local = np.full(n_atoms, -1, dtype=np.int64)
    for s in order:
        atoms = np.nonzero(group_of_atom == s)[0]
        units = np.unique(root[atoms])  # roots are the smallest atom of a unit, so creation order holds
        labels = [graph.label(ctx.sources[k][0]) for k in np.nonzero(src_root == s)[0]]
        groups.append(PruneGroup(gid[s], units, sorted(set(labels), key=labels.index), [], []))
        unit_local[units] = np.arange(len(units))
    unit_local = unit_local[root] if n_atoms else unit_local
    gid_of_source = np.full(max(len(ctx.sources), 1), -1, dtype=np.int64)
    gid_of_source[order] = np.arange(len(order))
    unit_group = gid_of_source[group_of_atom]

    for name, lab in ctx.labels.items():
        for s in np.unique(group_of_atom[lab.atoms]):
            groups[gid[int(s)]].tensors.append(name)
    for w in ctx.weights:
        for s in np.unique(group_of_atom[w.atoms]):
            g = groups[gid[int(s)]]
            if w.node not in g.nodes:
                g.nodes.append(w.node)

    _kinds(ctx, groups, group_of_atom, src_root, gid)
    for atoms, reason in ctx.blocks:
        for s in np.unique(group_of_atom[atoms]):
            g = groups[gid[int(s)]]
            g.blocked = g.blocked or reason
    for g in groups:
        if g.blocked is None and g.size > 1:
            g.cells, problem = _cells(g, ctx.constraints, ctx.soft, group_of_atom, order, unit_local)
            g.blocked = problem
        if g.blocked is None and exclude:
            names = g.tensors + [graph.label(n) for n in g.nodes] + g.sources
            hit = next((p for p in exclude for n in names if fnmatch.fnmatchcase(n, p)), None)
            if hit is not None:
                g.blocked = f"excluded by --exclude '{hit}'"
    _check_exclude(graph, groups, exclude)
    return Analysis(graph, groups, ctx.labels, ctx.weights, root, unit_group, unit_local)


def _kinds(ctx: Analyzer, groups: list[PruneGroup], group_of_atom: np.ndarray, src_root: np.ndarray,
           gid: dict[int, int]) -> None:
    """Each group's kind: a tag given by a handler (heads before hidden width), else "channels" when a
    convolution creates some of them, else "mlp"."""
    tagged: dict[int, set[str]] = {}
    for atoms, kind in ctx.tags:
        for s in np.unique(group_of_atom[atoms]):
            tagged.setdefault(gid[int(s)], set()).add(kind)
    conv = {gid[int(src_root[k])] for k, (node, _) in enumerate(ctx.sources)
            if ctx.graph.nodes[node].op_type in CONV_OPS}
    for g in groups:
        kinds = tagged.get(g.id, set())
        g.kind = next((k for k in KINDS[:2] if k in kinds), "channels" if g.id in conv else "mlp")


def _check_exclude(graph: Graph, groups: list[PruneGroup], exclude: Sequence[str]) -> None:
    """A usage error for an ``--exclude`` pattern that matches no node or tensor name."""
    if not exclude:
        return
    names = [graph.label(i) for i in range(len(graph.nodes))] + [o for node in graph.nodes for o in node.output]
    names = list(dict.fromkeys(n for n in names + [n for g in groups for n in g.tensors + g.sources] if n))
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise UsageError(f"--exclude '{pattern}' matches no node or tensor name{_exclude_hint(pattern, names)}")


def _exclude_hint(pattern: str, names: list[str]) -> str:
    """What the names look like (node names first, in graph order), and a wider pattern that matches some
    (``*stem*`` for ``stem*``)."""
    if not names:
        return " (the model has no nodes)"
    wider = f"*{pattern.strip('*')}*"
    matches = [n for n in names if fnmatch.fnmatchcase(n, wider)] if pattern.strip("*") else []
    example = (matches or names)[0]
    slash = "names here start with '/', " if example.startswith("/") and not pattern.startswith(("/", "*")) else ""
    return f" ({slash}e.g. '{example}')" + (f"; try '{wider}'" if matches else "")


def _cells(group: PruneGroup, constraints: list[np.ndarray], soft: list[bool], group_of_atom: np.ndarray,
           order: list[int], unit_local: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Turn grouped-conv and Split constraints into equal-size cells of units, or say why they cannot hold."""
    mine = [(c, f) for c, f in zip(constraints, soft) if order[group.id] == int(group_of_atom[c.flat[0]])]
    columns = []
    for blocks, is_soft in mine:
        local = unit_local[blocks]
        if len(np.unique(local)) != local.size or local.size != group.size:
            if is_soft or all(np.array_equal(np.sort(r), np.sort(local[0])) for r in local[1:]):
                continue  # a balance wish that cannot hold, or blocks holding the very same (tied) channels
            return None, "a grouped convolution's channel groups overlap or cover only part of the group"
        column = np.empty(group.size, dtype=np.int64)
        column[local.ravel()] = np.repeat(np.arange(blocks.shape[0]), blocks.shape[1])
        columns.append(column)
    if not columns:
        return None, None
    _, cell_of_unit = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    cell_of_unit = cell_of_unit.ravel()
    counts = np.bincount(cell_of_unit)
    if not np.all(counts == counts[0]):
        return None, "grouped convolutions split the channels into cells of unequal size"
    cells = np.argsort(cell_of_unit, kind="stable").reshape(len(counts), counts[0])
    return cells, None
