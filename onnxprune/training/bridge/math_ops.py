"""Elementwise operators, softmax and reductions, and linear algebra for the torch bridge."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from onnxprune.training.bridge.registry import TORCH_DTYPES, Op, OpContext, axis_of, ints_of, op, register_op, text_of


# ---- elementwise
def _binary(fn: Callable[..., Any]) -> Op:
    return lambda ctx, a, x: [fn(x[0], x[1])]


def _unary(fn: Callable[..., Any]) -> Op:
    return lambda ctx, a, x: [fn(x[0])]


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


_BINARY: dict[str, Callable[..., Any]] = {
                   "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "Mod": torch.remainder}
for _name, _fn in _BINARY.items():
    register_op(_name, _binary(_fn))

_UNARY: dict[str, Callable[..., Any]] = {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
                   "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
                   "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
                   "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not, "Sign": torch.sign,
                   "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish, "HardSwish": F.hardswish,
                   "Identity": lambda t: t}
for _name, _fn in _UNARY.items():
    register_op(_name, _unary(_fn))


@op("Dropout")
def _dropout(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0], torch.ones_like(x[0], dtype=torch.bool)]


@op("LeakyRelu")
def _leaky(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@op("Elu")
def _elu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.elu(x[0], a.get("alpha", 1.0))]


@op("Selu")
def _selu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@op("Gelu")
def _gelu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.gelu(x[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")]


@op("HardSigmoid")
def _hard_sigmoid(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    if abs(alpha - 1.0 / 6.0) < 1e-7 and beta == 0.5:
        return [F.hardsigmoid(x[0])]  # torch's own kernel for the common case
    return [torch.clamp(alpha * x[0] + beta, 0.0, 1.0)]


@op("PRelu")
def _prelu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Clip")
def _clip(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    lo, hi = (float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in (lo, hi))
    if (lo is None or isinstance(lo, float)) and (hi is None or isinstance(hi, float)):
        if lo == 0.0 and hi is not None and x[0].is_floating_point():
            return [F.hardtanh(x[0], 0.0, hi)]  # ReLU6 and kin: one fused kernel
        return [torch.clamp(x[0], min=lo, max=hi)]
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype, device=out.device))
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype, device=out.device))
    return [out]


def _variadic(fn: Callable[..., Any]) -> Op:
    def run(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return [out]
    return run


register_op("Max", _variadic(torch.maximum))
register_op("Min", _variadic(torch.minimum))
register_op("Sum", _variadic(torch.add))


@op("Mean")
def _mean(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [_variadic(torch.add)(ctx, a, x)[0] / len(x)]


@op("Where")
def _where(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.where(x[0].bool(), x[1], x[2])]


@op("Cast")
def _cast(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0].to(TORCH_DTYPES[a["to"]])]


@op("CastLike")
def _cast_like(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0].to(x[1].dtype)]


# ---- softmax and reductions
def _coerced(fn: Callable[..., Any]) -> Op:
    def run(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
        t = x[0]
        axis = axis_of(a.get("axis", -1 if ctx.opset >= 13 else 1), t.dim())
        if ctx.opset >= 13 or axis == t.dim() - 1:
            return [fn(t, dim=axis)]
        return [fn(t.flatten(axis), dim=-1).reshape(t.shape)]  # before opset 13: softmax over a 2-D coercion
    return run


register_op("Softmax", _coerced(torch.softmax))
register_op("LogSoftmax", _coerced(torch.log_softmax))


def _reduce(fn: Callable[..., Any]) -> Op:
    def run(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
        t = x[0]
        axes = a.get("axes")
        if axes is None and len(x) > 1 and x[1] is not None:
            axes = ints_of(x[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [t]
            axes = list(range(t.dim()))
        return [fn(t, [axis_of(d, t.dim()) for d in axes], keep)]
    return run


register_op("ReduceMean", _reduce(lambda t, d, k: torch.mean(t, dim=d, keepdim=k)))
register_op("ReduceSum", _reduce(lambda t, d, k: torch.sum(t, dim=d, keepdim=k)))
register_op("ReduceMax", _reduce(lambda t, d, k: torch.amax(t, dim=d, keepdim=k)))
register_op("ReduceMin", _reduce(lambda t, d, k: torch.amin(t, dim=d, keepdim=k)))
register_op("ReduceProd", _reduce(lambda t, d, k: _prod(t, d, k)))
register_op("ReduceL2", _reduce(lambda t, d, k: torch.sqrt(torch.sum(t * t, dim=d, keepdim=k))))
register_op("ReduceL1", _reduce(lambda t, d, k: torch.sum(torch.abs(t), dim=d, keepdim=k)))
register_op("ReduceSumSquare", _reduce(lambda t, d, k: torch.sum(t * t, dim=d, keepdim=k)))


def _prod(t: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


def _arg(fn: Callable[..., Any]) -> Op:
    def run(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
        t = x[0]
        axis = axis_of(a.get("axis", 0), t.dim())
        if a.get("select_last_index", 0):
            flipped = fn(torch.flip(t, [axis]), dim=axis, keepdim=bool(a.get("keepdims", 1)))
            return [t.shape[axis] - 1 - flipped]
        return [fn(t, dim=axis, keepdim=bool(a.get("keepdims", 1)))]
    return run


register_op("ArgMax", _arg(torch.argmax))
register_op("ArgMin", _arg(torch.argmin))


# ---- linear algebra
@op("MatMul")
def _matmul(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.matmul(x[0], x[1])]


@op("Gemm")
def _gemm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    A = x[0].transpose(0, 1) if a.get("transA", 0) else x[0]
    B = x[1].transpose(0, 1) if a.get("transB", 0) else x[1]
    out = torch.matmul(A, B)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(x) > 2 and x[2] is not None:
        out = out + (x[2] * beta if beta != 1.0 else x[2])
    return [out]


@op("Einsum")
def _einsum(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.einsum(text_of(a["equation"]), *x)]

