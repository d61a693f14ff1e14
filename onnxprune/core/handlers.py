"""Op handlers: everything onnxprune knows about one op type, in one object registered by (domain, op type).

A handler answers, for the nodes of its op types:

* analysis -- :meth:`Handler.propagate` labels, ties and blocks channels (``ctx`` is an :class:`AnalysisContext`);
* rewriting -- :meth:`Handler.apply` slices the node's constants and fixes its attributes for a plan
  (``rw`` is a :class:`RewriteContext`);
* cost -- :meth:`Handler.macs` (multiply-accumulates for concrete shapes) and :meth:`Handler.mac_scaling` (the
  tensors whose kept fraction scales them, for the budget's cost model);
* recovery -- :meth:`Handler.linear`, the weight layout bias compensation and least-squares refits work on, and
  :meth:`Handler.running_statistics` (normalisations whose statistics recovery re-estimates);
* tuning -- :meth:`Handler.bench`, what the ``--round-to auto`` micro-benchmark builds, and
  :meth:`Handler.bench_link`, how it chains nodes;
* the graph -- :meth:`Handler.foldable` (on constants, the result is a constant), :meth:`Handler.output_rank`
  (the rank of the output where shape inference gives up) and :meth:`Handler.shape_proxy` (ai.onnx nodes with
  the same output shapes, so that shape inference goes on past contrib ops);
* quantization -- :meth:`Handler.refold` (a folded constant the node computes was cut by its readers: cut the
  node's own inputs instead, e.g. the integer codes and scales of a weight's ``DequantizeLinear``) and
  :meth:`Handler.zero_point` (the integer code of 0.0 in a quantized output, which the mask oracle writes where
  a channel is removed).

``com.microsoft`` and other domains register like ``ai.onnx``. An op without a handler blocks every group it
touches. Adding an op is one handler module in :mod:`onnxprune.ops` and its test.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
from onnx import NodeProto, TensorProto, helper

from onnxprune.core.registry import Registry

if TYPE_CHECKING:
    from onnxprune.core.channels import Labeled
    from onnxprune.core.graph import Graph

__all__ = ["AnalysisContext", "BenchLink", "BenchSpec", "Handler", "LinearForm", "RankOf", "RewriteContext",
           "Shapes", "QUANTIZED_TYPES", "attr", "handler_for", "zero_code", "broadcast_rank", "node_attrs",
           "register", "registered", "same_rank"]

Shapes = Mapping[str, Sequence[int]]
#: ``rank(tensor name)``: a tensor's rank, or ``None`` when unknown.
RankOf = Callable[[str], "int | None"]
BenchLink = Literal["pass", "join"]


def attr(node: NodeProto, name: str, default: Any = None) -> Any:
    """An attribute's Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def same_rank(node: NodeProto, rank: RankOf) -> int | None:
    """The output has the first input's rank (elementwise ops, convolutions, normalisations, pooling)."""
    return rank(node.input[0])


def broadcast_rank(node: NodeProto, rank: RankOf) -> int | None:
    """The output has the largest input rank (broadcasting ops), when every input's rank is known."""
    ranks = [rank(n) for n in node.input if n]
    known = [r for r in ranks if r is not None]
    return max(known) if known and len(known) == len(ranks) else None


def node_attrs(node: NodeProto) -> dict[str, Any]:
    """Every attribute of a node as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class AnalysisContext(Protocol):
    """What a handler sees while the graph is analysed (:class:`onnxprune.analysis.dependency.Analyzer`)."""

    graph: Graph

    def labeled(self, name: str) -> Labeled | None: ...
    def label(self, name: str) -> Labeled: ...
    def set(self, name: str, axis: int, atoms: np.ndarray) -> None: ...
    def source(self, node: int, tensor: str, axis: int, size: int) -> np.ndarray: ...
    def fixed(self, node: int, tensor: str, size: int, reason: str) -> np.ndarray: ...
    def tie(self, a: np.ndarray, b: np.ndarray) -> None: ...
    def block(self, atoms: np.ndarray, reason: str) -> None: ...
    def block_inputs(self, node: int, reason: str) -> None: ...
    def constrain(self, blocks: np.ndarray, soft: bool = False) -> None: ...
    def tag(self, atoms: np.ndarray, kind: str) -> None: ...
    def weight(self, name: str, atoms: np.ndarray, role: str, node: int, axis: int = 0,
               view: Callable[[np.ndarray], np.ndarray] | None = None) -> None: ...
    def node_label(self, node: int) -> str: ...
    def defer(self, check: Callable[[], None]) -> None: ...


class RewriteContext(Protocol):
    """What a handler sees while a plan is applied (:class:`onnxprune.rewriting.rewrite.Rewriter`)."""

    graph: Graph

    def keep(self, name: str) -> np.ndarray | None: ...
    def keep_or_all(self, name: str) -> np.ndarray: ...
    def labeled(self, name: str) -> Labeled | None: ...
    def label(self, name: str) -> Labeled: ...
    def const(self, name: str) -> np.ndarray: ...
    def set_input(self, node: int, port: int, value: np.ndarray) -> None: ...
    def add_input(self, node: int, value: np.ndarray, suffix: str) -> None: ...
    def set_attr(self, node: int, name: str, value: Any) -> None: ...
    def del_attr(self, node: int, name: str) -> None: ...
    def fresh(self, base: str) -> str: ...
    def uses(self, node: int) -> list[tuple[int, int]]: ...
    def take_input(self, node: int, port: int) -> np.ndarray | None: ...
    def replace_node(self, node: int, nodes: list[NodeProto], constants: dict[str, np.ndarray]) -> None: ...
    def reshaped(self, names: list[str]) -> None: ...


class LinearForm:
    """A consumer seen as y = W x + b, for bias compensation and least-squares refits.

    ``groups`` independent blocks of inputs and outputs (a grouped conv); ``spatial``: one regression row per
    output position (a conv) rather than per sample; ``tokens``: one row per position of a channels-last input
    ([batch, tokens.., features], a transformer's MatMul); ``bias_port``: the input that holds (or would hold)
    the bias, ``None`` when the op has none; ``bias_add``: where the op has none, (output, port) of the ``Add``
    right after it that holds its bias (a MatMul + Add linear layer); ``refit``: least squares applies.
    """

    groups: int = 1
    spatial: bool = False
    tokens: bool = False
    bias_port: int | None = 2
    bias_add: tuple[str, int] | None = None
    refit: bool = False

    def bias_shift(self, weight: np.ndarray, mean: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
        """How the stored bias changes when the inputs ``removed`` (with mean values ``mean``) are cut, per
        output; ``None`` when nothing can be folded."""
        return None

    def rows(self, x: np.ndarray, sample: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        """Regression rows (one per position) of the input ``x`` at the samples and positions given."""
        raise NotImplementedError

    def store(self, weights: np.ndarray, bias: np.ndarray | None, inputs: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fitted ``weights`` [outputs, inputs of a group (x kernel)] and ``bias`` in the op's own layout."""
        raise NotImplementedError

    def matrix(self, weight: np.ndarray) -> np.ndarray | None:
        """The stored ``weight`` as one [outputs, input columns] matrix over the columns of :meth:`rows` (what
        :meth:`store` takes back), or ``None`` where there is no such single matrix (grouped convolutions)."""
        return None

    def columns(self, shape: Sequence[int]) -> int:
        """Input columns (the width of :meth:`rows`) of a stored weight of ``shape``."""
        raise NotImplementedError


@dataclass(frozen=True)
class BenchSpec:
    """One node of the ``--round-to auto`` micro-benchmark: its weight shape and attributes at given widths."""

    weight: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)
    bias_port: int | None = None


class Handler:
    """Base of every op handler: override what applies to the op; the defaults say "nothing to do"."""

    #: The op types this handler serves, in ``domain`` ("" is ai.onnx).
    op_types: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = ""

    def propagate(self, i: int, node: NodeProto, ctx: AnalysisContext) -> None:
        """Label the node's outputs, tie and block channels."""
        raise NotImplementedError

    def apply(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """Slice the node's constants and fix its attributes for the kept channels (default: nothing to do)."""

    def macs(self, node: NodeProto, shapes: Shapes) -> int:
        """Multiply-accumulates of the node for concrete shapes (default: free)."""
        return 0

    def mac_scaling(self, node: NodeProto, graph: Graph) -> tuple[str, ...]:
        """The tensors whose kept fractions multiply the node's MACs (input and output channels)."""
        return (node.input[0], node.output[0])

    def linear(self, node: NodeProto, graph: Graph) -> LinearForm | None:
        """The node as a linear consumer of its first input, for recovery (default: not one)."""
        return None

    def running_statistics(self, node: NodeProto) -> tuple[int, int] | None:
        """Input ports of the running mean and variance recovery re-estimates (default: none)."""
        return None

    def bench(self, node: NodeProto, graph: Graph, x: list[int], y: list[int], x_full: Sequence[int]
              ) -> BenchSpec | None:
        """The micro-benchmark's version of the node for input/output shapes ``x``/``y`` (cut widths) where the
        original input shape was ``x_full``; ``None`` when it is not measured."""
        return None

    def bench_link(self, node: NodeProto) -> BenchLink | None:
        """How the micro-benchmark chains through the node: "pass" (first input passes on with its shape),
        "join" (residual Add, gating Mul: every computed input), or not at all."""
        return None

    def foldable(self, node: NodeProto) -> bool:
        """Whether the node's result on constant inputs is treated (and folded) as a constant."""
        return False

    def evaluate(self, node: NodeProto, inputs: list[np.ndarray | None]) -> np.ndarray | None:
        """The output of a foldable node on constant ``inputs`` (``None``: onnx's reference evaluator folds it)."""
        return None

    def output_rank(self, node: NodeProto, rank: RankOf) -> int | None:
        """The output's rank where shape inference gave up, from the ranks of other tensors (``rank(name)``);
        ``None`` when unknown. :func:`same_rank` and :func:`broadcast_rank` serve most ops."""
        return None

    def shape_proxy(self, node: NodeProto, opset: int) -> list[NodeProto] | None:
        """ai.onnx nodes computing outputs of the same shapes (named as the node's outputs), for onnx shape
        inference on ops it does not know (contrib ops), for the model's ai.onnx ``opset``; ``None`` when there is
        none. Never run."""
        return None

    def refold(self, i: int, node: NodeProto, rw: RewriteContext) -> None:
        """The node is foldable and its readers gave the constant it computes new values (``rw.uses(i)``):
        store them in the node's own inputs if it can (default: the readers get new stored constants)."""

    def zero_point(self, node: NodeProto, output: int) -> str | None:
        """For a quantizing op: the input or output holding the integer code of 0.0 of ``output`` ("" when it
        is the literal 0); ``None`` for ops that pass codes on from their first input (MaxPool, Reshape)."""
        return None


#: Element types of quantized integer codes (int32 is an accumulator, whose 0 is 0.0).
QUANTIZED_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT4,
                   TensorProto.UINT4)


def zero_code(graph: Graph, name: str) -> np.ndarray | str | None:
    """The integer code of 0.0 in a quantized tensor: a constant zero point (its value), a computed one (its
    name: a DynamicQuantizeLinear's), or ``None`` where 0 stands for 0.0 (float and accumulator tensors). Codes
    passed on by MaxPool, Reshape, Flatten... keep their input's zero point; codes a DequantizeLinear reads (a
    quantized embedding table's rows, gathered) have that DequantizeLinear's."""
    seen: set[str] = set()
    while graph.elem_type(name) in QUANTIZED_TYPES and name not in seen:
        reader = next((graph.nodes[i] for i, port in graph.consumer_nodes(name) if port == 0
                       and graph.nodes[i].op_type == "DequantizeLinear" and graph.nodes[i].domain in ("", "ai.onnx")),
                      None)
        if reader is not None:
            zero = reader.input[2] if len(reader.input) > 2 else ""
            value = graph.const(zero) if zero else None
            return value if value is not None else (zero or None)
        if name not in graph.producer:
            return None
        seen.add(name)
        node = graph.nodes[graph.producer[name]]
        handler = handler_for(node)
        zero = handler.zero_point(node, list(node.output).index(name)) if handler is not None else None
        if zero is None:
            if not node.input or not node.input[0]:
                return None
            name = node.input[0]
            continue
        if not zero:
            return None
        value = graph.const(zero)
        return value if value is not None else zero
    return None


_REGISTRY: Registry[tuple[str, str], Handler] = Registry("op handlers")
H = TypeVar("H", bound=type[Handler])


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(cls: H) -> H:
    """Class decorator: register one instance of the handler for each of its op types (duplicates refused)."""
    instance = cls()
    if cls.propagate is Handler.propagate:
        raise ValueError(f"handler {cls.__name__} has no propagate()")
    if not cls.op_types:
        raise ValueError(f"handler {cls.__name__} names no op types")
    for op in cls.op_types:
        _REGISTRY.add((_domain(cls.domain), op), instance)
    return cls


def handler_for(node: NodeProto) -> Handler | None:
    """The handler of a node's (domain, op type), or ``None``."""
    return _REGISTRY.get((_domain(node.domain), node.op_type))


def registered() -> list[tuple[str, str]]:
    """Every registered (domain, op type), sorted."""
    return sorted(_REGISTRY)
