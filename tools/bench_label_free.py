"""Label-free recovery on a pretrained third-party model: the PP-OCR text-orientation classifier
(rapidocr-onnxruntime's ``ch_ppocr_mobile_v2.0_cls_infer.onnx``) pruned to about half its MACs, then distilled
from the original's outputs on unlabelled text lines (tools/orientation_data.py).

Fidelity is top-1 agreement with the original on held-out lines (labels are never used for training; the
accuracy column is for information). Recovered = (after - pruned) / (1 - pruned): the share of the fidelity
lost by pruning that distillation won back.

    python tools/bench_label_free.py [--train 2000] [--val 1000] [--epochs 5] [--out tools/results/label_free.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orientation_data  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.measure.data import Dataset  # noqa: E402
from onnxprune.measure.evaluate import evaluate  # noqa: E402
from onnxprune.training.finetune import FinetuneConfig, finetune  # noqa: E402


def cls_model_path() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("pip install --no-deps -r tests/requirements-real-models.txt")
    return Path(spec.submodule_search_locations[0]) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def run(train_count: int = 2000, val_count: int = 1000, epochs: int = 5, seed: int = 0,
        ft: FinetuneConfig | None = None) -> list[dict]:
    """One row per starting point (plain magnitude pruning, and calibrated pruning with lstsq recovery)."""
    model = onnxprune.load(cls_model_path())
    name = model.graph.input[0].name
    x, y = orientation_data.make(train_count + val_count, seed)
    train = Dataset({name: x[:train_count]})  # unlabelled
    val = Dataset({name: x[train_count:]}, y[train_count:])
    ft = ft or FinetuneConfig(epochs=epochs, batch_size=32, lr=1e-3, seed=seed)
    rows = []
    for label, calib in (("l2, no recovery", None), ("wanda + lstsq (256 samples)", train)):
        config = onnxprune.PruneConfig(target_macs=0.5, calib_samples=256)
        pruned = onnxprune.prune(model, config, calib=calib)
        before = evaluate(pruned.model, val, model)
        start = time.perf_counter()
        tuned = finetune(pruned.model, train, ft, teacher=model)
        seconds = time.perf_counter() - start
        after = evaluate(tuned.model, val, model)
        lost = 1.0 - before.agreement
        rows.append({"start": label, "macs_kept": pruned.report["macs_kept"],
                     "agreement_pruned": before.agreement, "agreement_distilled": after.agreement,
                     "recovered": (after.agreement - before.agreement) / lost if lost > 0 else 1.0,
                     "cosine_pruned": before.cosine, "cosine_distilled": after.cosine,
                     "accuracy_original": evaluate(model, val).accuracy, "accuracy_pruned": before.accuracy,
                     "accuracy_distilled": after.accuracy, "train_samples": train_count, "val_samples": val_count,
                     "epochs": ft.epochs, "finetune_seconds": round(seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.train, args.val, args.epochs, args.seed)
    print(f"{'start':30s} {'MACs':>6s} {'agree pruned':>12s} {'agree tuned':>11s} {'recovered':>9s} {'time':>6s}")
    for r in rows:
        print(f"{r['start']:30s} {r['macs_kept']:6.3f} {r['agreement_pruned']:12.4f} {r['agreement_distilled']:11.4f} "
              f"{r['recovered']:9.1%} {r['finetune_seconds']:5.0f}s")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
