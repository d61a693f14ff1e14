"""Op handlers, one module per op family, registered by op type.

A handler has two halves: ``propagate(i, node, ctx)`` labels, ties and blocks channels during analysis
(``ctx`` is a :class:`onnxprune.analysis.dependency.Analyzer`), and ``apply(i, node, rw)`` slices the node's constants
and fixes its attributes for a plan (``rw`` is a :class:`onnxprune.rewriting.rewrite.Rewriter`). An op without a handler
blocks every group it touches. Adding an op means one handler here and its smallest test graph.
"""
from __future__ import annotations

from typing import Any, Callable

from onnx import NodeProto, helper

__all__ = ["propagates", "applies", "handler_for", "applier_for", "attr", "supported_ops"]

Propagate = Callable[[int, NodeProto, Any], None]
Apply = Callable[[int, NodeProto, Any], None]

_PROPAGATE: dict[str, Propagate] = {}
_APPLY: dict[str, Apply] = {}


def _register(table: dict[str, Callable], op_types: tuple[str, ...]) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        for op in op_types:
            if op in table:
                raise RuntimeError(f"two handlers registered for op type {op}")
            table[op] = fn
        return fn
    return deco


def propagates(*op_types: str) -> Callable[[Propagate], Propagate]:
    """Register the analysis half of a handler."""
    return _register(_PROPAGATE, op_types)


def applies(*op_types: str) -> Callable[[Apply], Apply]:
    """Register the rewrite half of a handler (ops with nothing to slice need none)."""
    return _register(_APPLY, op_types)


def _default_domain(node: NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def handler_for(node: NodeProto) -> Propagate | None:
    return _PROPAGATE.get(node.op_type) if _default_domain(node) else None


def applier_for(node: NodeProto) -> Apply | None:
    return _APPLY.get(node.op_type) if _default_domain(node) else None


def supported_ops() -> list[str]:
    return sorted(_PROPAGATE)


def attr(node: NodeProto, name: str, default: Any = None) -> Any:
    """An attribute's Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# Importing the families registers their handlers.
from onnxprune.ops import conv, elementwise, linear, norm, quantized, structure  # noqa: E402,F401
