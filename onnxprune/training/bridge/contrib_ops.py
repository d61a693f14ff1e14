"""Torch implementations of the ``com.microsoft`` operators onnxruntime's transformer optimizer writes (and that
onnxprune prunes): the fused activations, SkipLayerNormalization / SkipSimplifiedLayerNormalization and
Attention with its packed QKV weight (``num_heads``, optional 2-D key mask, ``unidirectional``, ``scale``)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from onnxprune.training.bridge.registry import OpContext, op

MS = "com.microsoft."


def _with_bias(x: list[Any]) -> Any:
    return x[0] + x[1] if len(x) > 1 and x[1] is not None else x[0]


@op(MS + "Gelu", MS + "BiasGelu")
def _gelu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.gelu(_with_bias(x))]


@op(MS + "FastGelu")
def _fast_gelu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [F.gelu(_with_bias(x), approximate="tanh")]


@op(MS + "QuickGelu")
def _quick_gelu(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0] * torch.sigmoid(a.get("alpha", 1.702) * x[0])]


@op(MS + "BiasAdd")
def _bias_add(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return [x[0] + x[1] + x[2]]


def _skip_norm(ctx: OpContext, a: dict[str, Any], x: list[Any], rms: bool) -> list[Any]:
    gamma = x[2]
    beta = None if rms else (x[3] if len(x) > 3 else None)
    bias = x[3] if rms and len(x) > 3 else (x[4] if not rms and len(x) > 4 else None)
    total = x[0] + x[1] + (bias if bias is not None else 0)
    eps = a.get("epsilon", 1e-12)
    if rms:
        y = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps) * gamma
    else:
        y = F.layer_norm(total, (total.shape[-1],), gamma, beta, eps)
    return [y, None, None, total][:max(ctx.n_outputs, 1)]


@op(MS + "SkipLayerNormalization")
def _skip_layer_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return _skip_norm(ctx, a, x, rms=False)


@op(MS + "SkipSimplifiedLayerNormalization")
def _skip_rms_norm(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    return _skip_norm(ctx, a, x, rms=True)


@op(MS + "Attention")
def _attention(ctx: OpContext, a: dict[str, Any], x: list[Any]) -> list[Any]:
    """Packed QKV self-attention; a ``mask_index`` of key lengths [batch] or of 0/1 per key [batch, sequence]."""
    inp, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    mask = x[3] if len(x) > 3 else None
    if len(x) > 4 and x[4] is not None:
        raise NotImplementedError("com.microsoft.Attention with a past state")
    heads = int(a["num_heads"])
    qkv = inp @ weight + (bias if bias is not None else 0)
    batch, seq, width = qkv.shape
    d = width // 3
    q, k, v = (t.reshape(batch, seq, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=-1))
    scores = q @ k.transpose(-1, -2) * a.get("scale", 1.0 / math.sqrt(d // heads))
    if mask is not None:
        keys = torch.arange(seq, device=scores.device)
        if mask.dim() == 1 and mask.shape[0] == batch:  # key lengths: padding on the right
            keep = keys[None, :] < mask[:, None]
        elif mask.dim() == 2:  # 1 keep, 0 mask per key
            keep = mask != 0
        else:
            raise NotImplementedError(f"com.microsoft.Attention with a mask_index of shape {tuple(mask.shape)}")
        scores = scores.masked_fill(~keep[:, None, None, :], -10000.0)
    if a.get("unidirectional", 0):
        causal = torch.ones(seq, seq, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(causal, -10000.0)
    out = torch.softmax(scores, dim=-1) @ v
    return [out.transpose(1, 2).reshape(batch, seq, d)]
