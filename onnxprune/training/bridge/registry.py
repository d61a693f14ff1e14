"""The operator registry of the torch bridge: each ONNX operator is a function ``(ctx, attrs, inputs) ->
outputs`` taking the bridge context (opset, training flag, output count), the node's attributes as Python values
and its inputs as tensors (``None`` for an omitted optional input). Integer tensors that describe shapes stay
torch tensors and are read with ``.tolist()`` where torch needs Python numbers.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from onnxprune.core.registry import Registry

__all__ = ["OPS", "OpContext", "TORCH_DTYPES", "op", "op_key", "register_op", "ints_of", "axis_of", "text_of"]

TORCH_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class OpContext:
    """What an operator may need beyond its inputs: the opset, whether BatchNorm trains, the output count."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.train_bn = False
        self.n_outputs = 1


Op = Callable[[OpContext, dict[str, Any], list], list]
OPS: Registry[str, Op] = Registry("torch implementations")


def op_key(domain: str, op_type: str) -> str:
    """The registry key of an operator: its type for ai.onnx, ``domain.type`` otherwise (``com.microsoft.Gelu``)."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def register_op(name: str, fn: Op) -> Op:
    """Register ``fn`` as the implementation of the operator ``name``; a second one is refused (``ValueError``)."""
    return OPS.add(name, fn)


def op(*names: str) -> Callable[[Op], Op]:
    """Register the decorated function as the implementation of ``names``."""
    def register(fn: Op) -> Op:
        for name in names:
            register_op(name, fn)
        return fn
    return register


def ints_of(t: Any) -> list[int]:
    """Python ints from a tensor or a sequence."""
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def axis_of(axis: int, rank: int) -> int:
    """A non-negative axis."""
    return axis + rank if axis < 0 else axis


def text_of(value: str | bytes) -> str:
    """An attribute string (bytes in some exports)."""
    return value.decode() if isinstance(value, bytes) else value
