"""Baseline MAC/param reduction of Torch-Pruning on the torchvision test models.

For every architecture in ``tools/torchvision_models.ARCHS``: build the model
(random weights), count MACs/params with
``torch_pruning.utils.count_ops_and_params``, prune 50% of the channels of
every group with ``tp.pruner.MetaPruner`` (an alias of ``BasePruner`` in
Torch-Pruning 1.6) and ``tp.importance.GroupMagnitudeImportance(p=2)``,
local (non-global) pruning, the final classifier ignored, then count again.

    python tools/bench_torch_pruning.py [--json tools/results/torch_pruning_baseline.json]
        [--archs resnet18,...] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torchvision_models import ARCHS, build  # noqa: E402


def classifier_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The final classifier: last nn.Linear, or the last Conv2d (squeezenet)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1]


def pruner_kwargs(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """Per-architecture extras following Torch-Pruning's torchvision benchmark."""
    kwargs: dict[str, Any] = {}
    if name.startswith("convnext"):
        # CNBlock.layer_scale is a bare (C, 1, 1) nn.Parameter: prune along dim 0.
        kwargs["unwrapped_parameters"] = [
            (m.layer_scale, 0) for m in model.modules() if type(m).__name__ == "CNBlock"
        ]
    return kwargs


def bench_one(name: str, ratio: float = 0.5, size: int = 224, seed: int = 0) -> dict[str, Any]:
    """Prune one architecture; return MAC/param figures and status."""
    rec: dict[str, Any] = {
        "macs_before": None, "macs_after": None, "macs_kept": None,
        "params_before": None, "params_after": None, "params_kept": None,
        "seconds": None, "ok": False, "error": None,
    }
    t0 = time.perf_counter()
    try:
        model = build(name, seed)
        x = torch.randn(1, 3, size, size)
        macs0, params0 = tp.utils.count_ops_and_params(model, x)
        rec.update(macs_before=int(macs0), params_before=int(params0))
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=x,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            global_pruning=False,
            ignored_layers=[classifier_layer(model)],
            **pruner_kwargs(name, model),
        )
        pruner.step()
        with torch.no_grad():
            out = model(x)
        if tuple(out.shape) != (1, 1000):
            raise RuntimeError(f"pruned model output shape {tuple(out.shape)}")
        macs1, params1 = tp.utils.count_ops_and_params(model, x)
        rec.update(
            macs_after=int(macs1), params_after=int(params1),
            macs_kept=macs1 / macs0, params_kept=params1 / params0, ok=True,
        )
    except Exception as exc:  # noqa: BLE001 - record and continue
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        rec["error"] = f"{type(exc).__name__}: {exc} (at {where})"
        traceback.print_exc(limit=3)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def main(argv: list[str] | None = None) -> int:
    """CLI: run the benchmark, print a table, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of ARCHS")
    ap.add_argument("--ratio", type=float, default=0.5, help="pruning_ratio")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    results: dict[str, dict[str, Any]] = {}
    for arch in archs:
        results[arch] = bench_one(arch, args.ratio, args.size, args.seed)

    print(f"\nTorch-Pruning {version('torch-pruning')}  pruning_ratio={args.ratio}  input 1x3x{args.size}x{args.size}")
    print(f"{'arch':20s} {'GMACs before':>12s} {'GMACs after':>12s} {'macs_kept':>10s} {'params_kept':>11s} "
          f"{'s':>6s}  status")
    for arch, r in results.items():
        if r["ok"]:
            print(f"{arch:20s} {r['macs_before'] / 1e9:12.3f} {r['macs_after'] / 1e9:12.3f} "
                  f"{r['macs_kept']:10.3f} {r['params_kept']:11.3f} {r['seconds']:6.1f}  ok")
        else:
            before = f"{r['macs_before'] / 1e9:12.3f}" if r["macs_before"] else f"{'-':>12s}"
            print(f"{arch:20s} {before} {'-':>12s} {'-':>10s} {'-':>11s} {r['seconds']:6.1f}  "
                  f"FAIL {str(r['error']).splitlines()[0][:120]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
