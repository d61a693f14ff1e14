"""Build and export small random-weight transformers to ONNX (offline test material).

Importable module and script::

    python tools/transformer_models.py --out-dir /tmp/tf_exports [--archs bert,vit,...]
        [--forms legacy,dynamo,fused] [--seed 0] [--json table.json]
        [--baseline tools/results/transformers_baseline.md [--ratio 0.5] [--onnxprune-path /work/base]]

    from transformer_models import build, export, example_inputs
    export("llama", "dynamo", "/tmp/llama.dynamo.onnx")   # build(name, seed) gives the torch module

Every model is built from a Hugging Face config (``transformers==5.23.0``) or a
torchvision constructor with seeded random weights; nothing is downloaded.  All
are small (2 layers, hidden 32-128, head_dim 16, vocabulary 256, < 2 MB per file), use
``attn_implementation="eager"`` and ``use_cache=False``, and get their
LayerNorm / RMSNorm weights (and biases) re-randomised so that channels differ.

Architectures (``ARCHS``):

* ``bert``: ``BertForSequenceClassification`` (post-norm, GELU, pooler + classifier);
  inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64); output ``logits``.
* ``bert_enc``: ``BertModel`` without pooler, MLP 4x hidden; output ``last_hidden_state``.
* ``vit``: ``ViTForImageClassification`` (32x32, patch 8); input ``pixel_values``.
* ``llama``: ``LlamaForCausalLM``, GQA with 8 query / 2 KV heads, SwiGLU, RMSNorm, RoPE.
* ``qwen3``: ``Qwen3ForCausalLM``, GQA 8/2 with per-head q/k RMSNorm.
* ``gpt2``: ``GPT2LMHeadModel`` (Conv1D layers, packed ``c_attn``, tied LM head).
* ``whisper_enc``: ``WhisperEncoder`` (two Conv1d stem, sinusoidal positions);
  input ``input_features`` (B, 16 mel bins, 64 frames); output ``last_hidden_state``.
* ``swin``: ``SwinForImageClassification`` (window attention with relative position bias).
* ``tv_vit``: ``torchvision.models.VisionTransformer`` shrunk (the ``vit_b_16`` class:
  ``nn.MultiheadAttention`` with packed ``in_proj``); input ``pixel_values``.

Export forms (``FORMS``):

* ``legacy``: TorchScript exporter (``dynamo=False``), opset 17, static shapes
  (batch 1, sequence 16), one self-contained file.
* ``dynamo``: ``torch.onnx.export(dynamo=True)`` (opset 20) with a dynamic batch
  (and, for text models, a dynamic sequence) dimension named ``batch`` / ``sequence``,
  traced at batch 2 (torch.export specialises a size-1 dimension); weights in
  ``<file name>.data``.
* ``opset23``: the dynamo exporter at opset 23 with ``attn_implementation="sdpa"`` (the
  architectures of ``SDPA_ARCHS``), static shapes like ``legacy``: ai.onnx ``Attention``
  (4-D Q/K/V), ``RotaryEmbedding`` and ``RMSNormalization``; weights in ``<file name>.data``.
* ``fused``: ``onnxruntime.transformers.optimizer.optimize_model`` applied to
  the legacy export (``com.microsoft`` Attention, SkipLayerNormalization, ...),
  one self-contained file.  Only BERT and Whisper get ``Attention``; Llama/Qwen3 get
  ``SimplifiedLayerNormalization`` in the *default* domain (an onnxruntime op that
  ``onnx.checker`` rejects) and ``com.microsoft`` QuickGelu for SiLU.

Each written file is checked: onnxruntime against torch on a fixed input
(the fused form against the unfused legacy export, in onnxruntime), and the
``(domain, op_type)`` histogram is recorded.  ``--baseline`` then runs
``python -m onnxprune.cli FILE --ratio R`` on every file and writes a Markdown table
(exit code, MACs kept, groups cut, blocked reasons).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

for _n in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    # torchvision's compiled ops do not load beside the CPU-only torch build; transformers
    # imports torchvision internally, so the stubs must precede the transformers import too.
    sys.modules.setdefault(_n, types.ModuleType(_n))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchvision_models import signed_uniform  # noqa: E402

FORMS: tuple[str, ...] = ("legacy", "dynamo", "fused", "opset23")
#: Architectures whose attention has an SDPA implementation (the ``opset23`` form).
SDPA_ARCHS: tuple[str, ...] = ("bert", "bert_enc", "vit", "llama", "llama_mqa", "qwen3", "gpt2", "whisper_enc")
_ATTENTION = ["eager"]  # the attn_implementation build() asks for (sdpa for the opset23 form)
SEQ_LEN = 16
VOCAB = 256
IMAGE_SIZE = 32
N_MELS = 16
N_FRAMES = 64  # WhisperEncoder requires 2 * max_source_positions frames


@dataclass(frozen=True)
class ArchSpec:
    """How to build, feed and fuse one architecture."""

    kind: str  # "text" or "image" or "audio"
    inputs: tuple[str, ...]
    output: str
    num_heads: int
    hidden_size: int
    fuse_type: str  # onnxruntime.transformers.optimizer model_type
    description: str
    fuse_opt_level: int = 2  # opt_level for optimize_model (see _export_fused)


ARCH_SPECS: dict[str, ArchSpec] = {
    "bert": ArchSpec("text", ("input_ids", "attention_mask", "token_type_ids"), "logits", 8, 128, "bert",
                     "BertForSequenceClassification, post-norm, GELU, 8 heads x 16", fuse_opt_level=0),
    "bert_enc": ArchSpec("text", ("input_ids", "attention_mask", "token_type_ids"), "last_hidden_state", 8, 128,
                         "bert", "BertModel without pooler, MLP 4x (512), 8 heads x 16", fuse_opt_level=0),
    "vit": ArchSpec("image", ("pixel_values",), "logits", 4, 64, "vit",
                    "ViTForImageClassification 32x32 patch 8, 4 heads x 16"),
    "llama": ArchSpec("text", ("input_ids", "attention_mask"), "logits", 8, 128, "gpt2",
                      "LlamaForCausalLM, GQA 8/2 heads x 16, SwiGLU, RMSNorm, RoPE"),
    "llama_mqa": ArchSpec("text", ("input_ids", "attention_mask"), "logits", 8, 128, "gpt2",
                          "LlamaForCausalLM, multi-query attention (8 query heads, 1 KV head) x 16"),
    "qwen3": ArchSpec("text", ("input_ids", "attention_mask"), "logits", 8, 128, "qwen3",
                      "Qwen3ForCausalLM, GQA 8/2 heads x 16, q/k RMSNorm"),
    "gpt2": ArchSpec("text", ("input_ids", "attention_mask"), "logits", 8, 128, "gpt2",
                     "GPT2LMHeadModel, Conv1D, packed c_attn, tied head, 8 heads x 16"),
    "whisper_enc": ArchSpec("audio", ("input_features",), "last_hidden_state", 4, 64, "bart",
                            "WhisperEncoder, conv stem, pre-norm, 4 heads x 16"),
    "swin": ArchSpec("image", ("pixel_values",), "logits", 2, 32, "swin",
                     "SwinForImageClassification 32x32 patch 2, window 4, depths 1+1, 2/4 heads x 16"),
    "tv_vit": ArchSpec("image", ("pixel_values",), "logits", 4, 64, "vit",
                       "torchvision VisionTransformer (vit_b_16 class) 32x32 patch 8, 4 heads x 16"),
}
ARCHS: tuple[str, ...] = tuple(ARCH_SPECS)


# --------------------------------------------------------------------------- building


@torch.no_grad()
def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every LayerNorm / RMSNorm weight (and bias) in place, seeded."""
    gen = torch.Generator().manual_seed(seed + 12345)
    for m in model.modules():
        is_ln = isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine
        is_rms = type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), torch.Tensor)
        if not (is_ln or is_rms):
            continue
        m.weight.copy_(signed_uniform(m.weight.shape, gen))
        bias = getattr(m, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
    return model


@torch.no_grad()
def _randomize_zero_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Give all-zero weight matrices (torchvision ViT's head and class token) random values."""
    gen = torch.Generator().manual_seed(seed + 4242)
    for p in model.parameters():
        if p.ndim >= 2 and not bool(p.any()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _hf_common() -> dict:
    return {"attn_implementation": _ATTENTION[0], "use_cache": False, "initializer_range": 0.1}


def _build_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                     intermediate_size=256, max_position_embeddings=64, type_vocab_size=2, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **_hf_common())
    return BertForSequenceClassification(cfg)


def _build_bert_enc() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                     intermediate_size=512, max_position_embeddings=64, type_vocab_size=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **_hf_common())
    return BertModel(cfg, add_pooling_layer=False)


def _build_vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, num_labels=10, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, **_hf_common())
    return ViTForImageClassification(cfg)


def _build_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=False, **_hf_common())
    return LlamaForCausalLM(cfg)


def _build_llama_mqa() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=False, **_hf_common())
    return LlamaForCausalLM(cfg)


def _build_qwen3() -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=False, max_window_layers=2, use_sliding_window=False, **_hf_common())
    return Qwen3ForCausalLM(cfg)


def _build_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=128, n_layer=2, n_head=8, n_inner=256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_hf_common())
    return GPT2LMHeadModel(cfg)


def _build_whisper_enc() -> torch.nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(vocab_size=VOCAB, num_mel_bins=N_MELS, d_model=64, encoder_layers=2,
                        encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                        decoder_attention_heads=4, decoder_ffn_dim=128, max_source_positions=N_FRAMES // 2,
                        max_target_positions=32, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        init_std=0.1, attn_implementation=_ATTENTION[0], use_cache=False)
    return WhisperEncoder(cfg)


def _build_swin() -> torch.nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(image_size=IMAGE_SIZE, patch_size=2, num_channels=3, embed_dim=32, depths=[1, 1],
                     num_heads=[2, 4], window_size=4, mlp_ratio=2.0, num_labels=10, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, drop_path_rate=0.0, **_hf_common())
    return SwinForImageClassification(cfg)


def _build_tv_vit() -> torch.nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=IMAGE_SIZE, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                             mlp_dim=128, num_classes=10)


_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": _build_bert, "bert_enc": _build_bert_enc, "vit": _build_vit, "llama": _build_llama,
    "llama_mqa": _build_llama_mqa, "qwen3": _build_qwen3,
    "gpt2": _build_gpt2, "whisper_enc": _build_whisper_enc, "swin": _build_swin, "tv_vit": _build_tv_vit,
}


class KwargsWrapper(torch.nn.Module):
    """Call the wrapped model with keyword arguments and return one tensor.

    Positional argument order differs between Hugging Face models, so the
    exported graph takes the inputs named in ``input_names`` in that order.
    """

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...], output: str, hf: bool = True):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output
        self.hf = hf

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.hf:
            return self.model(*args)
        out = self.model(**dict(zip(self.input_names, args, strict=True)), return_dict=True)
        return out[self.output]


def build(name: str, seed: int = 0, attention: str = "eager") -> torch.nn.Module:
    """Return architecture ``name`` in eval mode with seeded random weights.

    The returned module takes the tensors of :func:`example_inputs` positionally
    (a :class:`KwargsWrapper` around the Hugging Face model) and returns one tensor.
    """
    if name not in ARCH_SPECS:
        raise ValueError(f"unknown arch {name!r}; choose from {', '.join(ARCHS)}")
    spec = ARCH_SPECS[name]
    torch.manual_seed(seed)
    _ATTENTION[0] = attention
    try:
        model = _BUILDERS[name]()
    finally:
        _ATTENTION[0] = "eager"
    randomize_norms(model, seed)
    _randomize_zero_weights(model, seed)
    return KwargsWrapper(model.eval(), spec.inputs, spec.output, hf=name != "tv_vit").eval()


def example_inputs(name: str, batch: int = 1, seq: int = SEQ_LEN, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs for ``name`` (token ids in range, attention mask of ones)."""
    spec = ARCH_SPECS[name]
    gen = torch.Generator().manual_seed(seed + 999)
    if spec.kind == "image":
        return (torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),)
    if spec.kind == "audio":
        return (torch.randn(batch, N_MELS, N_FRAMES, generator=gen),)
    out = []
    for inp in spec.inputs:
        if inp == "input_ids":
            out.append(torch.randint(0, VOCAB, (batch, seq), generator=gen, dtype=torch.int64))
        elif inp == "attention_mask":
            out.append(torch.ones(batch, seq, dtype=torch.int64))
        elif inp == "token_type_ids":
            tt = torch.zeros(batch, seq, dtype=torch.int64)
            tt[:, seq // 2:] = 1
            out.append(tt)
        else:  # pragma: no cover - specs only name the inputs above
            raise ValueError(inp)
    return tuple(out)


# --------------------------------------------------------------------------- exporting


def _dynamic_axes(name: str) -> dict[str, dict[int, str]]:
    spec = ARCH_SPECS[name]
    axes: dict[str, dict[int, str]] = {}
    for inp in spec.inputs:
        axes[inp] = {0: "batch", 1: "sequence"} if spec.kind == "text" else {0: "batch"}
    axes[spec.output] = {0: "batch", 1: "sequence"} if spec.kind == "text" else {0: "batch"}
    return axes


def _export_legacy(name: str, model: torch.nn.Module, x: tuple[torch.Tensor, ...], path: Path) -> None:
    spec = ARCH_SPECS[name]
    with torch.no_grad():
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                          input_names=list(spec.inputs), output_names=[spec.output])


def _export_dynamo(name: str, model: torch.nn.Module, x: tuple[torch.Tensor, ...], path: Path,
                   opset: int | None = None) -> None:
    import onnx

    spec = ARCH_SPECS[name]
    batch = torch.export.Dim("batch", min=1, max=64)
    if spec.kind == "text":
        seq = torch.export.Dim("sequence", min=2, max=64)
        dyn = tuple({0: batch, 1: seq} for _ in spec.inputs)
    else:
        dyn = tuple({0: batch} for _ in spec.inputs)
    dyn_args = (dyn,) if opset is None else None  # KwargsWrapper.forward(*args): one entry for the varargs tuple
    # opset 23: static shapes, as onnxruntime's RotaryEmbedding wants the cos cache (built for batch 1) to have
    # the input's batch
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    if data_path.exists():
        data_path.unlink()  # onnx appends to an existing external data file
    with torch.no_grad():
        program = torch.onnx.export(model, x, dynamo=True, external_data=True, verbose=False,
                                    **({"opset_version": opset} if opset else {}),
                                    input_names=list(spec.inputs), output_names=[spec.output],
                                    dynamic_shapes=dyn_args)
    program.save(str(path), external_data=True)
    if not data_path.exists():
        proto = onnx.load(str(path))
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=0)


def _export_fused(name: str, legacy_path: Path, path: Path) -> None:
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    spec = ARCH_SPECS[name]
    # opt_level: onnxruntime's own graph optimisations run before the Python fusions.  Level 2
    # (extended) fuses the most (whisper: Attention; llama/qwen3: QuickGelu for SiLU; BiasGelu) and the
    # result still loads.  BERT needs 0: after levels 1-2 the Attention fusion no longer matches and
    # onnxruntime 1.32 refuses the result ("AddInitializedOrtValue Attempt to replace the existing tensor").
    opt = optimize_model(str(legacy_path), model_type=spec.fuse_type, num_heads=spec.num_heads,
                         hidden_size=spec.hidden_size, opt_level=spec.fuse_opt_level)
    opt.save_model_to_file(str(path), use_external_data_format=False)


def export(name: str, form: str, path: str | Path, seed: int = 0) -> Path:
    """Export ``build(name, seed)`` in ``form`` (legacy / dynamo / fused) to ``path``; return the path.

    ``fused`` writes (or reuses) the legacy export next to ``path`` as
    ``<stem>.legacy-src.onnx`` unless ``<dir>/<name>.legacy.onnx`` already exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose from {FORMS}")
    if form == "fused":
        src = path.with_name(f"{name}.legacy.onnx")
        if not src.exists():
            src = path.with_name(path.stem + ".legacy-src.onnx")
            export(name, "legacy", src, seed)
        _export_fused(name, src, path)
        return path
    if form == "opset23" and name not in SDPA_ARCHS:
        raise ValueError(f"{name} has no SDPA attention: no opset23 form")
    model = build(name, seed, attention="sdpa" if form == "opset23" else "eager")
    # Batch 2 for dynamo: torch.export specialises a dimension traced at size 1.
    x = example_inputs(name, batch=2 if form == "dynamo" else 1, seed=seed)
    # nn.MultiheadAttention (torchvision ViT) takes a fused fast path in eval mode without grad,
    # aten::_native_multi_head_attention, which neither exporter handles: export the plain math.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if form == "legacy":
            _export_legacy(name, model, x, path)
        else:
            _export_dynamo(name, model, x, path, opset=23 if form == "opset23" else None)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


# --------------------------------------------------------------------------- checking


def file_size(path: str | Path) -> int:
    """Bytes of the model file plus its external ``.data`` file, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def op_histogram(path: str | Path) -> dict[str, int]:
    """Count of each ``domain::op_type`` in the main graph (domain ``ai.onnx`` when empty)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    hist = collections.Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in proto.graph.node)
    return dict(sorted(hist.items()))


def _ort_run(path: str | Path, feeds: tuple[torch.Tensor, ...]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, feeds, strict=True)})[0]


def check_inputs(name: str, form: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fixed check input: the export shape, except batch 3 (and sequence 12 for text) for dynamo."""
    if form == "dynamo":
        return example_inputs(name, batch=3, seq=12, seed=seed + 1)
    return example_inputs(name, seed=seed + 1)


def ort_diff(name: str, form: str, path: str | Path, seed: int = 0, reference: str | Path | None = None) -> float:
    """Max abs diff of onnxruntime on ``path`` vs torch (or vs onnxruntime on ``reference``)."""
    x = check_inputs(name, form, seed)
    if reference is not None:
        ref = _ort_run(reference, x)
    else:
        with torch.no_grad():
            ref = build(name, seed)(*x).numpy()
    got = _ort_run(path, x)
    if got.shape != ref.shape:
        raise AssertionError(f"shape mismatch: onnx {got.shape} vs reference {ref.shape}")
    return float(np.max(np.abs(got - ref)))


def build_all(out_dir: Path, archs: list[str], forms: list[str], seed: int = 0,
              log: Callable[[str], None] | None = print) -> list[dict]:
    """Write ``<out_dir>/<arch>.<form>.onnx`` for each pair; return one record per file."""
    rows: list[dict] = []
    for arch in archs:
        for form in forms:
            if form == "opset23" and arch not in SDPA_ARCHS:
                continue
            path = out_dir / f"{arch}.{form}.onnx"
            row: dict = {"arch": arch, "form": form, "file": str(path)}
            t0 = time.perf_counter()
            try:
                legacy = out_dir / f"{arch}.legacy.onnx"
                if form == "fused" and not legacy.exists():
                    export(arch, "legacy", legacy, seed)
                export(arch, form, path, seed)
                row["export_s"] = round(time.perf_counter() - t0, 2)
                row["size_bytes"] = file_size(path)
                row["ops"] = op_histogram(path)
                if form == "fused":  # vs the unfused export, and vs torch for information
                    row["max_abs_diff"] = ort_diff(arch, form, path, seed, reference=legacy)
                    row["max_abs_diff_torch"] = ort_diff(arch, form, path, seed)
                else:
                    row["max_abs_diff"] = ort_diff(arch, form, path, seed)
                row["status"] = "OK"
            except Exception as exc:  # noqa: BLE001 - report and continue
                row["export_s"] = round(time.perf_counter() - t0, 2)
                row["status"] = "FAIL"
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            rows.append(row)
            if log is not None:
                log(format_row(row))
    return rows


def _short_ops(ops: dict[str, int]) -> str:
    return " ".join(f"{k.replace('ai.onnx::', '').replace('com.microsoft::', 'ms.')}:{v}" for k, v in ops.items())


HEADER = f"{'arch':12s} {'form':7s} {'size_KB':>8s} {'max_abs':>10s} {'nodes':>6s} {'export_s':>8s}  status / ops"


def format_row(row: dict) -> str:
    """One line of the CLI table."""
    if row["status"] != "OK":
        return (f"{row['arch']:12s} {row['form']:7s} {'-':>8s} {'-':>10s} {'-':>6s} {row['export_s']:8.2f}"
                f"  FAIL {row['error']}")
    return (f"{row['arch']:12s} {row['form']:7s} {row['size_bytes'] / 1024:8.1f} {row['max_abs_diff']:10.2e}"
            f" {sum(row['ops'].values()):6d} {row['export_s']:8.2f}  OK {_short_ops(row['ops'])}")


# --------------------------------------------------------------------------- onnxprune baseline


def _normalise_reason(reason: str) -> str:
    """A blocked reason with node and tensor names elided, so that equal causes count together."""
    reason = re.sub(r"'[^']*'", "'…'", reason)
    reason = re.sub(r"\([^)]*\)", "(…)", reason)
    reason = re.sub(r"^([A-Z]\w*) \S+ ", r"\1 … ", reason)  # "<OpType> <node name> ..."
    reason = re.sub(r"\S*/\S*", "…", reason)
    return reason


def prune_baseline(path: str | Path, ratio: float = 0.5, pythonpath: str | None = None,
                   timeout: float = 600.0) -> dict:
    """Run ``python -m onnxprune.cli FILE --ratio R`` on ``path``; return exit code, MACs kept, blocked reasons."""
    import subprocess
    import tempfile

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        out, rep = Path(tmp) / "x.onnx", Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "onnxprune.cli", str(path), "--ratio", str(ratio), "-o", str(out),
               "--report", str(rep), "--quiet"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, (proc.stderr or proc.stdout).strip()
        except subprocess.TimeoutExpired:
            rc, err = 124, f"timeout after {timeout:.0f} s"
        res: dict = {"rc": rc, "prune_s": round(time.perf_counter() - t0, 1)}
        if rc != 0:
            res["error"] = err.splitlines()[-1][:400] if err else ""
        if rep.exists():
            report = json.loads(rep.read_text())
            res["macs_kept"] = report.get("macs_kept")
            res["params_kept"] = report.get("params_kept")
            groups = report.get("groups", [])
            res["groups"] = len(groups)
            res["groups_cut"] = sum(1 for g in groups if g.get("kept", g.get("size")) != g.get("size"))
            reasons = collections.Counter(_normalise_reason(g["blocked"]) for g in groups if g.get("blocked"))
            res["blocked"] = dict(reasons.most_common())
            res["cut_sizes"] = [f"{g['size']}->{g['kept']}" for g in groups
                                if g.get("kept", g.get("size")) != g.get("size")]
    return res


def build_markdown(rows: list[dict]) -> str:
    """The exported files (size, check, node count, non-standard ops) as a Markdown table."""
    lines = ["| model | form | size KB | max abs diff | nodes | fused / contrib ops |", "|---|---|---|---|---|---|"]
    standard = None
    try:
        import onnx.defs

        standard = {d.name for d in onnx.defs.get_all_schemas() if d.domain in ("", "ai.onnx")}
    except Exception:  # noqa: BLE001 - the column then lists every op of a non-default domain only
        pass
    for r in rows:
        if r["status"] != "OK":
            lines.append(f"| {r['arch']} | {r['form']} | — | — | — | export failed: {r.get('error', '')} |")
            continue
        special = {k: v for k, v in r["ops"].items()
                   if not k.startswith("ai.onnx::") or (standard is not None and k[9:] not in standard)}
        diff = f"{r['max_abs_diff']:.1e}" + (" (vs legacy)" if r["form"] == "fused" else "")
        ops = ", ".join(f"{k} ×{v}" for k, v in special.items())
        lines.append(f"| {r['arch']} | {r['form']} | {r['size_bytes'] / 1024:.0f} | {diff} "
                     f"| {sum(r['ops'].values())} | {ops} |")
    return "\n".join(lines) + "\n"


def baseline_markdown(rows: list[dict], ratio: float) -> str:
    """The baseline table (one row per exported file) as Markdown."""
    lines = [f"| model | form | exit | MACs kept at {ratio} | params kept | groups cut / total | cut (size->kept) "
             "| blocked reasons (count × reason, names elided) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r.get("baseline")
        if r["status"] != "OK" or b is None:
            lines.append(f"| {r['arch']} | {r['form']} | export failed | | | | | {r.get('error', '')} |")
            continue
        macs = f"{b['macs_kept']:.3f}" if b.get("macs_kept") is not None else "—"
        params = f"{b['params_kept']:.3f}" if b.get("params_kept") is not None else "—"
        groups = f"{b.get('groups_cut', '—')} / {b.get('groups', '—')}"
        reasons = "<br>".join(f"{n} × {t}".replace("|", "\\|") for t, n in b.get("blocked", {}).items())
        if b["rc"] != 0:
            err = b.get("error", "").replace("|", "\\|")
            reasons = f"**exit {b['rc']}**: {err}" + (f"<br>{reasons}" if reasons else "")
        cut = ", ".join(b.get("cut_sizes", []))
        lines.append(f"| {r['arch']} | {r['form']} | {b['rc']} | {macs} | {params} | {groups} | {cut} | {reasons} |")
    return "\n".join(lines) + "\n"


def _onnxprune_revision(pythonpath: str | None) -> str:
    """Where the pruned-with onnxprune lives and its git revision (``-dirty`` with local changes)."""
    import subprocess

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    try:
        probe = "import onnxprune, os; print(os.path.dirname(onnxprune.__file__))"
        where = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                               timeout=60).stdout.strip()
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=where or ".", capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unknown revision)"
    return f"at {where}, git {rev or '?'}"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("transformers", "torchvision", "onnx", "onnxruntime", "onnxscript"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    """CLI: export the architectures in each form, check them, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    ap.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset of legacy,dynamo,fused,opset23")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs diff for OK")
    ap.add_argument("--json", type=Path, help="also write the records (ops histograms included) here")
    ap.add_argument("--baseline", type=Path, metavar="MD",
                    help="also prune every file with `python -m onnxprune.cli --ratio R` and write a Markdown table")
    ap.add_argument("--ratio", type=float, default=0.5, help="ratio for --baseline")
    ap.add_argument("--onnxprune-path", help="PYTHONPATH for --baseline (another checkout of onnxprune)")
    args = ap.parse_args(argv)

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    for a in archs:
        if a not in ARCH_SPECS:
            ap.error(f"unknown arch {a!r}; choose from {', '.join(ARCHS)}")
    for f in forms:
        if f not in FORMS:
            ap.error(f"unknown form {f!r}; choose from {', '.join(FORMS)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    t0 = time.perf_counter()
    rows = build_all(args.out_dir, archs, forms, args.seed, log=lambda s: print(s, flush=True))
    for row in rows:
        if row["status"] == "OK" and row["max_abs_diff"] > args.tol:
            row["status"] = "MISMATCH"
            print(f"MISMATCH {row['arch']} {row['form']}: max abs diff {row['max_abs_diff']:.3e}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.baseline:
        for row in rows:
            if row["status"] == "OK":
                row["baseline"] = prune_baseline(row["file"], args.ratio, args.onnxprune_path)
                b = row["baseline"]
                print(f"prune {row['arch']:12s} {row['form']:7s} exit {b['rc']} macs_kept {b.get('macs_kept')}"
                      f" {b.get('error', '')}", flush=True)
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(["python tools/transformer_models.py", *(argv if argv is not None else sys.argv[1:])])
        doc = [f"# onnxprune on small random-weight transformers, --ratio {args.ratio}", "",
               f"Generated by `{cmd}`", f"(torch {torch.__version__}, {_versions()};",
               f"onnxprune {_onnxprune_revision(args.onnxprune_path)}).", "",
               "## Exported files", "", build_markdown(rows),
               f"## `python -m onnxprune.cli FILE --ratio {args.ratio}`", "", baseline_markdown(rows, args.ratio)]
        args.baseline.write_text("\n".join(doc))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["status"] != "OK" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
