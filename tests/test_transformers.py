"""Transformers in every export form (slow): each architecture of tools/transformer_models.py (random-weight Hugging
Face and torchvision models, built offline from configs) exported by the legacy and the dynamo exporter, fused by
onnxruntime's transformer optimizer, and exported at opset 23 with SDPA attention (ai.onnx Attention), pruned at
--ratio 0.5 (every kind cut) and with the hidden width left whole.

Every result must be valid (full checker), keep the inputs and outputs, run in onnxruntime and be mask-equivalent
(the library's verification, and the independent oracle of conftest); its MACs kept must stay at or under the
figure measured when this suite was written (tools/results/transformers.md), so a regression shows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_mask_equivalent, interface, random_feeds, run_ort

import onnxprune
from onnxprune.core.graph import checker_view

pytest.importorskip("transformers")
transformer_models = pytest.importorskip("transformer_models")

pytestmark = pytest.mark.slow

#: MACs kept at --ratio 0.5: (every kind cut, hidden width whole), per architecture and form (the fused decoders
#: hold onnxruntime's SimplifiedLayerNormalization in the default domain). Encoders returning their hidden states
#: keep the hidden width.
BARS: dict[tuple[str, str], tuple[float, float]] = {
    ("bert", "legacy"): (0.26, 0.50), ("bert", "dynamo"): (0.25, 0.50), ("bert", "fused"): (0.26, 0.50),
    ("bert_enc", "legacy"): (0.50, 0.50), ("bert_enc", "dynamo"): (0.50, 0.50), ("bert_enc", "fused"): (0.50, 0.50),
    ("vit", "legacy"): (0.30, 0.58), ("vit", "dynamo"): (0.30, 0.58), ("vit", "fused"): (0.27, 0.58),
    ("llama", "legacy"): (0.29, 0.56), ("llama", "dynamo"): (0.30, 0.55), ("llama", "fused"): (0.28, 0.56),
    ("llama_mqa", "legacy"): (0.29, 0.57), ("llama_mqa", "dynamo"): (0.31, 0.57), ("llama_mqa", "fused"): (0.29, 0.57),
    ("llama_mqa", "opset23"): (0.29, 0.57),
    ("qwen3", "legacy"): (0.29, 0.56), ("qwen3", "dynamo"): (0.30, 0.55), ("qwen3", "fused"): (0.28, 0.56),
    ("gpt2", "legacy"): (0.29, 0.56), ("gpt2", "dynamo"): (0.30, 0.55), ("gpt2", "fused"): (0.29, 0.56),
    ("whisper_enc", "legacy"): (0.50, 0.50), ("whisper_enc", "dynamo"): (0.50, 0.50),
    ("whisper_enc", "fused"): (0.50, 0.50),
    ("swin", "legacy"): (0.26, 0.57), ("swin", "dynamo"): (0.28, 0.57), ("swin", "fused"): (0.28, 0.57),
    ("tv_vit", "legacy"): (0.30, 0.58), ("tv_vit", "dynamo"): (0.30, 0.58), ("tv_vit", "fused"): (0.28, 0.58),
    # the dynamo exporter at opset 23 with SDPA attention: ai.onnx Attention, RotaryEmbedding, RMSNormalization
    ("bert", "opset23"): (0.26, 0.50), ("bert_enc", "opset23"): (0.50, 0.50), ("vit", "opset23"): (0.30, 0.58),
    ("llama", "opset23"): (0.29, 0.56), ("qwen3", "opset23"): (0.29, 0.56), ("gpt2", "opset23"): (0.29, 0.56),
    ("whisper_enc", "opset23"): (0.50, 0.50),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Export on first use: ``exported(arch, form)`` is the model's path (legacy exported first for fused)."""
    root = tmp_path_factory.mktemp("transformers")
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, form: str) -> Path:
        if (arch, form) not in cache:
            if form == "fused":
                get(arch, "legacy")
            cache[arch, form] = transformer_models.export(arch, form, root / f"{arch}.{form}.onnx")
        return cache[arch, form]

    return get


def _check(model: onnx.ModelProto, result: onnxprune.PruneResult) -> None:
    onnx.checker.check_model(checker_view(result.model, light=False), full_check=True)  # onnxruntime's own ops
    assert interface(result.model) == interface(model)
    assert result.verification is not None and result.verification.mask_equivalent is True
    assert_mask_equivalent(model, result.model, result.plan)
    _bridge_runs(result.model)


def _bridge_runs(model: onnx.ModelProto) -> None:
    """The torch bridge (finetune, the training schedules) runs the pruned model as onnxruntime does."""
    torch = pytest.importorskip("torch")
    from onnxprune.training.bridge import OnnxModule, unsupported_ops

    assert unsupported_ops(model) == []
    feeds = random_feeds(model, batch=1)
    with torch.no_grad():
        got = OnnxModule(model).eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for g, w in zip(got, run_ort(model, feeds)):
        assert float(np.abs(g.numpy() - w).max()) <= 1e-4 * max(float(np.abs(w).max()), 1e-6)


@pytest.mark.parametrize(("arch", "form"), sorted(BARS))
def test_prunes_every_kind_exactly(exported, arch: str, form: str) -> None:
    model = onnx.load(exported(arch, form))
    every, hidden_whole = BARS[arch, form]
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    _check(model, result)
    assert result.report["macs_kept"] <= every + 0.005
    whole = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, kind_ratios={"hidden": 0.0}))
    _check(model, whole)
    assert whole.report["macs_kept"] <= hidden_whole + 0.005
    assert all(row["kept"] == row["size"] for row in whole.report["groups"] if row["kind"] == "hidden")
    if arch not in ("bert_enc", "whisper_enc"):  # these return the hidden states: their hidden width stays
        assert any(row["kind"] == "head" and row["kept"] < row["size"] for row in result.report["groups"])
