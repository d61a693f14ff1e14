"""ONNX operators written with torch functions, for the torch bridge (:mod:`onnxprune.torch_bridge`).

Each implementation takes ``(ctx, attrs, inputs)`` — the bridge context (opset, training flag, running-statistic
buffers), the node's attributes as Python values and its inputs as tensors (``None`` for an omitted optional
input) — and returns the list of outputs. Integer tensors that describe shapes stay torch tensors and are read
with ``.tolist()`` where torch needs Python numbers.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper

__all__ = ["OPS", "OpContext", "TORCH_DTYPES", "split_outputs"]

TORCH_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class OpContext:
    """What an operator may need beyond its inputs: the opset and whether the bridge trains BatchNorm."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.train_bn = False
        self.n_outputs = 1


Op = Callable[[OpContext, dict[str, Any], list], list]
OPS: dict[str, Op] = {}


def op(*names: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- elementwise
def _binary(fn):
    return lambda ctx, a, x: [fn(x[0], x[1])]


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "Mod": torch.remainder}.items():
    OPS[_name] = _binary(_fn)

for _name, _fn in {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
                   "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
                   "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
                   "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not, "Sign": torch.sign,
                   "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish, "HardSwish": F.hardswish,
                   "Identity": lambda t: t}.items():
    OPS[_name] = (lambda f: lambda ctx, a, x: [f(x[0])])(_fn)


@op("Dropout")
def _dropout(ctx, a, x):
    return [x[0], torch.ones_like(x[0], dtype=torch.bool)]


@op("LeakyRelu")
def _leaky(ctx, a, x):
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@op("Elu")
def _elu(ctx, a, x):
    return [F.elu(x[0], a.get("alpha", 1.0))]


@op("Selu")
def _selu(ctx, a, x):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@op("Gelu")
def _gelu(ctx, a, x):
    return [F.gelu(x[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")]


@op("HardSigmoid")
def _hard_sigmoid(ctx, a, x):
    return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0)]


@op("PRelu")
def _prelu(ctx, a, x):
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Clip")
def _clip(ctx, a, x):
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype, device=out.device))
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype, device=out.device))
    return [out]


def _variadic(fn):
    def run(ctx, a, x):
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return [out]
    return run


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)


@op("Mean")
def _mean(ctx, a, x):
    return [_variadic(torch.add)(ctx, a, x)[0] / len(x)]


@op("Where")
def _where(ctx, a, x):
    return [torch.where(x[0].bool(), x[1], x[2])]


@op("Cast")
def _cast(ctx, a, x):
    return [x[0].to(TORCH_DTYPES[a["to"]])]


@op("CastLike")
def _cast_like(ctx, a, x):
    return [x[0].to(x[1].dtype)]


# ---------------------------------------------------------------- softmax and reductions
def _coerced(fn):
    def run(ctx, a, x):
        t = x[0]
        axis = _axis(a.get("axis", -1 if ctx.opset >= 13 else 1), t.dim())
        if ctx.opset >= 13 or axis == t.dim() - 1:
            return [fn(t, dim=axis)]
        return [fn(t.flatten(axis), dim=-1).reshape(t.shape)]  # before opset 13: softmax over a 2-D coercion
    return run


OPS["Softmax"] = _coerced(torch.softmax)
OPS["LogSoftmax"] = _coerced(torch.log_softmax)


def _reduce(fn):
    def run(ctx, a, x):
        t = x[0]
        axes = a.get("axes")
        if axes is None and len(x) > 1 and x[1] is not None:
            axes = _ints(x[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [t]
            axes = list(range(t.dim()))
        return [fn(t, [_axis(d, t.dim()) for d in axes], keep)]
    return run


OPS["ReduceMean"] = _reduce(lambda t, d, k: torch.mean(t, dim=d, keepdim=k))
OPS["ReduceSum"] = _reduce(lambda t, d, k: torch.sum(t, dim=d, keepdim=k))
OPS["ReduceMax"] = _reduce(lambda t, d, k: torch.amax(t, dim=d, keepdim=k))
OPS["ReduceMin"] = _reduce(lambda t, d, k: torch.amin(t, dim=d, keepdim=k))
OPS["ReduceProd"] = _reduce(lambda t, d, k: _prod(t, d, k))
OPS["ReduceL2"] = _reduce(lambda t, d, k: torch.sqrt(torch.sum(t * t, dim=d, keepdim=k)))
OPS["ReduceL1"] = _reduce(lambda t, d, k: torch.sum(torch.abs(t), dim=d, keepdim=k))
OPS["ReduceSumSquare"] = _reduce(lambda t, d, k: torch.sum(t * t, dim=d, keepdim=k))


def _prod(t: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


def _arg(fn):
    def run(ctx, a, x):
        t = x[0]
        axis = _axis(a.get("axis", 0), t.dim())
        if a.get("select_last_index", 0):
            flipped = fn(torch.flip(t, [axis]), dim=axis, keepdim=bool(a.get("keepdims", 1)))
            return [t.shape[axis] - 1 - flipped]
        return [fn(t, dim=axis, keepdim=bool(a.get("keepdims", 1)))]
    return run


OPS["ArgMax"] = _arg(torch.argmax)
OPS["ArgMin"] = _arg(torch.argmin)


# ---------------------------------------------------------------- linear algebra
@op("MatMul")
def _matmul(ctx, a, x):
    return [torch.matmul(x[0], x[1])]


@op("Gemm")
def _gemm(ctx, a, x):
    A = x[0].transpose(0, 1) if a.get("transA", 0) else x[0]
    B = x[1].transpose(0, 1) if a.get("transB", 0) else x[1]
    out = torch.matmul(A, B)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(x) > 2 and x[2] is not None:
        out = out + (x[2] * beta if beta != 1.0 else x[2])
    return [out]


# ---------------------------------------------------------------- convolution and pooling
def _same_pads(a: dict, spatial: list[int], kernel: list[int]) -> list[int]:
    """Explicit ONNX pads [begins..., ends...] for auto_pad / pads attributes."""
    n = len(spatial)
    mode = _text(a.get("auto_pad", "NOTSET"))
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        strides = a.get("strides", [1] * n)
        dil = a.get("dilations", [1] * n)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            out = math.ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        return begins + ends
    if mode == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _torch_padding(pads: list[int]) -> tuple[list[int] | None, list[int]]:
    """(symmetric padding for torch, or None) and the F.pad list for the asymmetric case."""
    n = len(pads) // 2
    begins, ends = pads[:n], pads[n:]
    if begins == ends:
        return begins, []
    flat: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        flat += [b, e]
    return None, flat


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def _conv(ctx, a, x):
    t, w = x[0], x[1]
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    pads = _same_pads(a, list(t.shape[2:]), kernel)
    sym, flat = _torch_padding(pads)
    if sym is None:
        t, sym = F.pad(t, flat), [0] * n
    bias = x[2] if len(x) > 2 else None
    return [_CONV[n](t, w, bias, a.get("strides", [1] * n), sym, a.get("dilations", [1] * n), a.get("group", 1))]


@op("ConvTranspose")
def _conv_transpose(ctx, a, x):
    t, w = x[0], x[1]
    n = w.dim() - 2
    if a.get("output_shape") is not None or _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise NotImplementedError("ConvTranspose with output_shape/auto_pad")
    pads = list(a.get("pads", [0] * (2 * n)))
    sym, _ = _torch_padding(pads)
    extra = list(a.get("output_padding", [0] * n))
    out = _CONV_T[n](t, w, x[2] if len(x) > 2 else None, a.get("strides", [1] * n), sym if sym is not None else
                     [0] * n, extra, a.get("group", 1), a.get("dilations", [1] * n))
    if sym is None:  # asymmetric pads: crop the full output
        begins, ends = pads[:n], pads[n:]
        index = [slice(None), slice(None)] + [slice(b, out.shape[2 + i] - e) for i, (b, e) in
                                              enumerate(zip(begins, ends))]
        out = out[tuple(index)]
    return [out]


def _pool_op(kind: str):
    def run(ctx, a, x):
        t = x[0]
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        pads = _same_pads(a, list(t.shape[2:]), kernel)
        strides = a.get("strides", [1] * n)
        ceil = bool(a.get("ceil_mode", 0))
        sym, flat = _torch_padding(pads)
        if kind == "MaxPool":
            if sym is None:
                t, sym = F.pad(t, flat, value=-math.inf), [0] * n
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return [fn(t, kernel, strides, sym, a.get("dilations", [1] * n), ceil_mode=ceil)]
        include = bool(a.get("count_include_pad", 0))
        if sym is None:
            if not include:
                raise NotImplementedError("AveragePool with asymmetric pads excluding the padding")
            t, sym = F.pad(t, flat), [0] * n
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return [fn(t, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)]
    return run


OPS["MaxPool"] = _pool_op("MaxPool")
OPS["AveragePool"] = _pool_op("AveragePool")


@op("GlobalAveragePool")
def _gap(ctx, a, x):
    return [torch.mean(x[0], dim=list(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(ctx, a, x):
    return [torch.amax(x[0], dim=list(range(2, x[0].dim())), keepdim=True)]


# ---------------------------------------------------------------- normalisation
@op("BatchNormalization")
def _batch_norm(ctx, a, x):
    t, scale, bias, mean, var = x[:5]
    training = ctx.train_bn and t.shape[0] > 1
    return [F.batch_norm(t, mean, var, scale, bias, training, 1.0 - a.get("momentum", 0.9), a.get("epsilon", 1e-5))]


@op("LRN")
def _lrn(ctx, a, x):
    return [F.local_response_norm(x[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))]


@op("InstanceNormalization")
def _instance_norm(ctx, a, x):
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]


@op("LayerNormalization")
def _layer_norm(ctx, a, x):
    t = x[0]
    axis = _axis(a.get("axis", -1), t.dim())
    shape = list(t.shape[axis:])
    scale = x[1].expand(shape) if x[1] is not None else None
    bias = x[2].expand(shape) if len(x) > 2 and x[2] is not None else None
    return [F.layer_norm(t, shape, scale, bias, a.get("epsilon", 1e-5))]


@op("GroupNormalization")
def _group_norm(ctx, a, x):
    t, scale, bias = x[:3]
    groups = a["num_groups"]
    if ctx.opset < 21 and scale.shape[0] == groups and groups != t.shape[1]:  # opset 18: per-group scale
        scale = scale.repeat_interleave(t.shape[1] // groups)
        bias = bias.repeat_interleave(t.shape[1] // groups)
    return [F.group_norm(t, groups, scale, bias, a.get("epsilon", 1e-5))]


# ---------------------------------------------------------------- shapes and data movement
@op("Shape")
def _shape(ctx, a, x):
    dims = torch.tensor(list(x[0].shape), dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end")
    return [dims[start:end]]


@op("Size")
def _size(ctx, a, x):
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]


@op("Reshape")
def _reshape(ctx, a, x):
    t, shape = x[0], _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [t.reshape(shape)]


@op("Flatten")
def _flatten(ctx, a, x):
    t = x[0]
    axis = _axis(a.get("axis", 1), t.dim())
    return [t.reshape(int(np.prod(t.shape[:axis])), -1)]


@op("Transpose")
def _transpose(ctx, a, x):
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(perm)]


@op("Squeeze")
def _squeeze(ctx, a, x):
    axes = a.get("axes") if "axes" in a else (_ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    t = x[0]
    if axes is None:
        return [t.squeeze()]
    return [t.squeeze([_axis(d, t.dim()) for d in axes])]


@op("Unsqueeze")
def _unsqueeze(ctx, a, x):
    axes = a["axes"] if "axes" in a else _ints(x[1])
    t = x[0]
    rank = t.dim() + len(axes)
    for d in sorted(_axis(d, rank) for d in axes):
        t = t.unsqueeze(d)
    return [t]


@op("Concat")
def _concat(ctx, a, x):
    parts = [t for t in x if t is not None and (t.dim() == 0 or t.numel() > 0 or t.dim() > 1)]
    return [torch.cat(parts, dim=a["axis"])]


@op("Split")
def _split(ctx, a, x):
    return split_outputs(ctx, a, x, ctx.n_outputs)


def split_outputs(ctx: OpContext, a: dict, x: list, n_out: int) -> list:
    t = x[0]
    axis = _axis(a.get("axis", 0), t.dim())
    sizes = a.get("split")
    if sizes is None and len(x) > 1 and x[1] is not None:
        sizes = _ints(x[1])
    if sizes is None:
        size = t.shape[axis]
        chunk = -(-size // n_out)
        sizes = [min(chunk, size - chunk * i) for i in range(n_out)]
    return list(torch.split(t, list(sizes), dim=axis))


@op("Slice")
def _slice(ctx, a, x):
    t = x[0]
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, t.dim())
        size = t.shape[axis]
        if step > 0:
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            t = t.narrow(axis, lo, max(hi - lo, 0))[(slice(None),) * axis + (slice(None, None, step),)] \
                if step > 1 else t.narrow(axis, lo, max(hi - lo, 0))
        else:
            lo = max(-1, min(size - 1, start + size if start < 0 else start))
            hi = max(-1, min(size - 1, end + size if end < 0 else end))
            index = torch.arange(lo, hi, step, device=t.device)
            t = t.index_select(axis, index)
    return [t]


@op("Gather")
def _gather(ctx, a, x):
    t, index = x[0], x[1].long()
    axis = _axis(a.get("axis", 0), t.dim())
    index = torch.where(index < 0, index + t.shape[axis], index)
    out = t.index_select(axis, index.reshape(-1))
    return [out.reshape(list(t.shape[:axis]) + list(index.shape) + list(t.shape[axis + 1:]))]


@op("GatherElements")
def _gather_elements(ctx, a, x):
    t, index = x[0], x[1].long()
    axis = _axis(a.get("axis", 0), t.dim())
    return [torch.gather(t, axis, torch.where(index < 0, index + t.shape[axis], index))]


@op("Expand")
def _expand(ctx, a, x):
    shape = _ints(x[1])
    t = x[0]
    rank = max(t.dim(), len(shape))
    full = [1] * (rank - len(shape)) + shape
    have = [1] * (rank - t.dim()) + list(t.shape)
    target = [h if s == 1 else s for h, s in zip(have, full)]
    return [t.reshape(have).expand(target)]


@op("Tile")
def _tile(ctx, a, x):
    return [x[0].repeat(_ints(x[1]))]


@op("ConstantOfShape")
def _constant_of_shape(ctx, a, x):
    value = a.get("value")
    arr = np.zeros(1, np.float32) if value is None else value
    return [torch.full(_ints(x[0]), arr.reshape(-1)[0].item(), dtype=TORCH_DTYPES[helper.np_dtype_to_tensor_dtype(
        arr.dtype)])]


@op("Range")
def _range(ctx, a, x):
    return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)]


@op("Pad")
def _pad(ctx, a, x):
    t = x[0]
    mode = _text(a.get("mode", "constant"))
    pads = a["pads"] if "pads" in a else _ints(x[1])
    value = a.get("value", 0.0)
    if len(x) > 2 and x[2] is not None and x[2].numel():
        value = float(x[2].reshape(-1)[0])
    rank = t.dim()
    axes = list(range(rank))
    if len(x) > 3 and x[3] is not None:
        axes = [_axis(d, rank) for d in _ints(x[3])]
    begins, ends = pads[:len(axes)], pads[len(axes):]
    full_b, full_e = [0] * rank, [0] * rank
    for d, b, e in zip(axes, begins, ends):
        full_b[d], full_e[d] = b, e
    flat: list[int] = []
    for d in reversed(range(rank)):
        flat += [full_b[d], full_e[d]]
    while len(flat) > 2 and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # torch pads only trailing dimensions in non-constant modes
    if mode == "constant":
        return [F.pad(t, flat, value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return [F.pad(t, flat, mode=torch_mode)]


@op("Resize", "Upsample")
def _resize(ctx, a, x):
    t = x[0]
    mode = _text(a.get("mode", "nearest"))
    ctm = _text(a.get("coordinate_transformation_mode", "half_pixel" if ctx.opset >= 11 else "asymmetric"))
    if len(x) == 2 or ctx.opset < 11:  # Upsample, Resize-10: (X, scales)
        scales, sizes = x[1], None
    else:
        scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        sizes = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
    if sizes is not None:
        out_size = _ints(sizes)[2:]
        factors = [o / i for o, i in zip(out_size, t.shape[2:])]
    else:
        values = [float(s) for s in scales.tolist()]
        if values[:2] != [1.0, 1.0]:
            raise NotImplementedError("Resize of the batch or channel axes")
        factors = values[2:]
        out_size = [int(math.floor(d * s)) for d, s in zip(t.shape[2:], factors)]
    if mode == "nearest":
        nearest = _text(a.get("nearest_mode", "round_prefer_floor"))
        for k, (size_in, size_out, factor) in enumerate(zip(t.shape[2:], out_size, factors)):
            index = _nearest_index(size_in, size_out, factor, ctm, nearest)
            t = t.index_select(2 + k, torch.from_numpy(index).to(t.device))
        return [t]
    if mode == "linear":
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[t.dim() - 2]
        if ctm == "align_corners":
            return [F.interpolate(t, size=out_size, mode=torch_mode, align_corners=True)]
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            if sizes is None:
                return [F.interpolate(t, scale_factor=factors, mode=torch_mode, align_corners=False)]
            return [F.interpolate(t, size=out_size, mode=torch_mode, align_corners=False)]
        raise NotImplementedError(f"Resize linear with {ctm}")
    raise NotImplementedError(f"Resize mode {mode}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nearest_index(size_in: int, size_out: int, scale: float, ctm: str, nearest: str) -> np.ndarray:
    """Source index of every output position along one axis, by the ONNX Resize formulas."""
    x = np.arange(size_out, dtype=np.float64)
    if ctm == "half_pixel" or (ctm == "pytorch_half_pixel" and size_out > 1):
        src = (x + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        src = np.zeros_like(x)
    elif ctm == "align_corners":
        src = x * (size_in - 1) / (size_out - 1) if size_out > 1 else np.zeros_like(x)
    elif ctm == "asymmetric":
        src = x / scale
    elif ctm == "tf_half_pixel_for_nn":
        src = (x + 0.5) / scale
    else:
        raise NotImplementedError(f"Resize with {ctm}")
    rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                "floor": np.floor, "ceil": np.ceil}[nearest]
    return np.clip(rounding(src), 0, size_in - 1).astype(np.int64)


@op("DepthToSpace")
def _depth_to_space(ctx, a, x):
    t, b = x[0], a["blocksize"]
    n, c, h, w = t.shape
    mode = _text(a.get("mode", "DCR"))
    if mode == "DCR":
        t = t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = t.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [t.reshape(n, c // (b * b), h * b, w * b)]


@op("Einsum")
def _einsum(ctx, a, x):
    return [torch.einsum(_text(a["equation"]), *x)]

