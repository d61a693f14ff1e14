"""Convolution, pooling, normalisation and resizing operators for the torch bridge."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnxprune.errors import UnsupportedError
from onnxprune.training.bridge.registry import Op, OpContext, axis_of, ints_of, op, register_op, text_of


# ---- convolution and pooling
def _same_pads(a: dict, spatial: list[int], kernel: list[int]) -> list[int]:
    """Explicit ONNX pads [begins..., ends...] for auto_pad / pads attributes."""
    n = len(spatial)
    mode = text_of(a.get("auto_pad", "NOTSET"))
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
def _conv(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
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
def _conv_transpose(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, w = x[0], x[1]
    n = w.dim() - 2
    if a.get("output_shape") is not None or text_of(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise UnsupportedError("the torch bridge does not support ConvTranspose with output_shape/auto_pad")
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


def _pool_op(kind: str) -> Op:
    def run(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
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
            pool: Callable[..., torch.Tensor] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return [pool(t, kernel, strides, sym, a.get("dilations", [1] * n), ceil_mode=ceil)]
        include = bool(a.get("count_include_pad", 0))
        if sym is None:
            if not include:
                raise UnsupportedError("the torch bridge does not support AveragePool with asymmetric pads "
                                       "excluding the padding")
            t, sym = F.pad(t, flat), [0] * n
        average: Callable[..., torch.Tensor] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return [average(t, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)]
    return run


register_op("MaxPool", _pool_op("MaxPool"))
register_op("AveragePool", _pool_op("AveragePool"))


@op("GlobalAveragePool")
def _gap(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.mean(x[0], dim=list(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [torch.amax(x[0], dim=list(range(2, x[0].dim())), keepdim=True)]


# ---- normalisation
@op("BatchNormalization")
def _batch_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, scale, bias, mean, var = x[:5]
    training = ctx.train_bn and t.shape[0] > 1
    return [F.batch_norm(t, mean, var, scale, bias, training, 1.0 - a.get("momentum", 0.9), a.get("epsilon", 1e-5))]


@op("LRN")
def _lrn(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.local_response_norm(x[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))]


@op("InstanceNormalization")
def _instance_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]


@op("LayerNormalization")
def _layer_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    axis = axis_of(a.get("axis", -1), t.dim())
    shape = list(t.shape[axis:])
    scale = x[1].expand(shape) if x[1] is not None else None
    bias = x[2].expand(shape) if len(x) > 2 and x[2] is not None else None
    return [F.layer_norm(t, shape, scale, bias, a.get("epsilon", 1e-5))]


@op("RMSNormalization")  # opset 23
@op("SimplifiedLayerNormalization")  # onnxruntime's, in the default domain
def _rms_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    axes = list(range(axis_of(a.get("axis", -1), t.dim()), t.dim()))
    square = t.float().pow(2).mean(dim=axes, keepdim=True)  # stash_type 1: float statistics
    return [(t.float() * torch.rsqrt(square + a.get("epsilon", 1e-5))).to(t.dtype) * x[1]]


@op("Attention")  # opset 23
def _attention(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    """Scaled dot-product attention, 3-D (heads from q_num_heads / kv_num_heads) or 4-D Q/K/V; grouped-query
    heads repeat K and V; optional mask (bool: attend where true; float: added), is_causal, softcap."""
    q, k, v = x[:3]
    mask = x[3] if len(x) > 3 else None
    if any(t is not None for t in x[4:]) or ctx.n_outputs > 1:
        raise UnsupportedError("Attention with a KV cache or extra outputs is not supported by the torch bridge")
    flat = q.dim() == 3
    if flat:
        def split(t: Any, heads: int) -> Any:
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
        q, k, v = split(q, a["q_num_heads"]), split(k, a["kv_num_heads"]), split(v, a["kv_num_heads"])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) * a.get("scale", 1.0 / math.sqrt(q.shape[-1]))
    if a.get("softcap", 0.0) > 0:
        scores = a["softcap"] * torch.tanh(scores / a["softcap"])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if a.get("is_causal", 0):
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return [y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1) if flat else y]


@op("RotaryEmbedding")  # opset 23: X, cos_cache, sin_cache, position_ids
def _rotary(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    """Rotate the first rotary_embedding_dim channels of each head (halves, or pairs when interleaved)."""
    t, cos, sin = x[:3]
    positions = x[3] if len(x) > 3 else None
    if positions is not None:
        cos, sin = cos[positions], sin[positions]  # [B, S, rotary_dim / 2]
    flat = t.dim() == 3
    heads = t.reshape(t.shape[0], t.shape[1], a["num_heads"], -1) if flat else t.transpose(1, 2)  # [B, S, H, D]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rotary = a.get("rotary_embedding_dim", 0) or heads.shape[-1]
    turned, rest = heads[..., :rotary], heads[..., rotary:]
    if a.get("interleaved", 0):
        first, second = turned[..., 0::2], turned[..., 1::2]
        turned = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=-1).flatten(-2)
    else:
        first, second = turned.chunk(2, dim=-1)
        turned = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    out = torch.cat([turned, rest], dim=-1)
    return [out.reshape(t.shape) if flat else out.transpose(1, 2)]


@op("GroupNormalization")
def _group_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, scale, bias = x[:3]
    groups = a["num_groups"]
    if ctx.opset < 21 and scale.shape[0] == groups and groups != t.shape[1]:  # opset 18: per-group scale
        scale = scale.repeat_interleave(t.shape[1] // groups)
        bias = bias.repeat_interleave(t.shape[1] // groups)
    return [F.group_norm(t, groups, scale, bias, a.get("epsilon", 1e-5))]


@op("Resize", "Upsample")
def _resize(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t = x[0]
    mode = text_of(a.get("mode", "nearest"))
    ctm = text_of(a.get("coordinate_transformation_mode", "half_pixel" if ctx.opset >= 11 else "asymmetric"))
    if len(x) == 2 or ctx.opset < 11:  # Upsample, Resize-10: (X, scales)
        scales, sizes = x[1], None
    else:
        scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        sizes = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
    if sizes is not None:
        out_size = ints_of(sizes)[2:]
        factors = [o / i for o, i in zip(out_size, t.shape[2:])]
    else:
        values = [float(s) for s in scales.tolist()]
        if values[:2] != [1.0, 1.0]:
            raise UnsupportedError("the torch bridge does not support Resize of the batch or channel axes")
        factors = values[2:]
        out_size = [int(math.floor(d * s)) for d, s in zip(t.shape[2:], factors)]
    if mode == "nearest":
        nearest = text_of(a.get("nearest_mode", "round_prefer_floor"))
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
        raise UnsupportedError(f"the torch bridge does not support Resize linear with {ctm}")
    raise UnsupportedError(f"the torch bridge does not support Resize mode {mode}")


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
        raise UnsupportedError(f"the torch bridge does not support Resize with {ctm}")
    roundings: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
        "floor": np.floor, "ceil": np.ceil}
    rounding = roundings[nearest]
    return np.clip(rounding(src), 0, size_in - 1).astype(np.int64)


@op("DepthToSpace")
def _depth_to_space(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    t, b = x[0], a["blocksize"]
    n, c, h, w = t.shape
    mode = text_of(a.get("mode", "DCR"))
    if mode == "DCR":
        t = t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = t.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [t.reshape(n, c // (b * b), h * b, w * b)]

