"""``--round-to auto`` against ``--round-to 1`` at the same ``--ratio``: onnxruntime CPU latency of torchvision
exports, the original and both pruned models timed side by side.

For each architecture (legacy exporter, cached in ``--work``) and ratio, prune twice with the library
(``round_to=1`` and ``round_to="auto"``, the per-group multiples measured by ``onnxprune.tuning.rounding`` on the CPU
provider, 1 thread), then open the three models in onnxruntime (CPU, ``--threads`` intra-op threads, full graph
optimisation), batch 1, one fixed random input. After ``--warmup`` runs of each, ``--rounds`` rounds run the
three sessions back to back, the order rotating every round. Reported: median latency of each, pruned/original
ratios, MACs and parameters kept, the chosen multiples and how long measuring them took; fixed ``--round-to``
values (``--fixed``, default 8 and 16) are timed in the same rounds for comparison.

    python tools/bench_round_to.py [--archs resnet18,mobilenet_v2] [--ratios 0.3,0.5] [--work DIR]
        [--rounds 40] [--warmup 5] [--threads 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))


def bench(arch: str, ratios: list[float], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prune ``arch`` at every ratio with both roundings and time the three models side by side."""
    from bench_depth import ensure_export
    from bench_latency import make_session

    import onnxprune

    path, _ = ensure_export(arch, args.work, "legacy", args.size)
    model = onnxprune.load(path)
    t0 = time.perf_counter()
    auto = onnxprune.PruneConfig(round_to="auto").measure_round_to(model)
    measure_s = time.perf_counter() - t0
    rows = []
    for ratio in ratios:
        plain = onnxprune.prune(model, onnxprune.PruneConfig(ratio=ratio))
        rounded = onnxprune.prune(model, onnxprune.PruneConfig(ratio=ratio, round_to="auto",
                                                               round_to_map=auto.round_to_map))
        fixed = [onnxprune.prune(model, onnxprune.PruneConfig(ratio=ratio, round_to=m)) for m in args.fixed]
        sessions = [make_session(m, args.threads)
                    for m in (model, plain.model, rounded.model, *(f.model for f in fixed))]
        inp = sessions[0].get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds = {inp.name: np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)}
        for _ in range(args.warmup):
            for s in sessions:
                s.run(None, feeds)
        times: list[list[float]] = [[] for _ in sessions]
        for k in range(args.rounds):
            for j in range(len(sessions)):
                i = (j + k) % len(sessions)
                start = time.perf_counter()
                sessions[i].run(None, feeds)
                times[i].append(time.perf_counter() - start)
        ms = [statistics.median(t) * 1e3 for t in times]
        changed = sum(1 for a, b in zip(plain.report["groups"], rounded.report["groups"]) if a["kept"] != b["kept"])
        rows.append({
            "arch": arch, "ratio": ratio, "orig_ms": ms[0], "round1_ms": ms[1], "auto_ms": ms[2],
            "round1_ratio": ms[1] / ms[0], "auto_ratio": ms[2] / ms[0], "auto_vs_round1": ms[2] / ms[1],
            "paired_auto_vs_round1": statistics.median(a / b for a, b in zip(times[2], times[1])),
            "round1_macs_kept": plain.report["macs_kept"], "auto_macs_kept": rounded.report["macs_kept"],
            "round1_params_kept": plain.report["params_kept"], "auto_params_kept": rounded.report["params_kept"],
            "groups_changed": changed,
            "multiples": dict(sorted(collections.Counter(auto.round_to_map.values()).items())),
            "measure_s": measure_s,
            "verified": bool(rounded.verification and rounded.verification.mask_equivalent),
            "fixed": {str(m): {"ms": t, "ratio": t / ms[0], "macs_kept": f.report["macs_kept"]}
                      for m, t, f in zip(args.fixed, ms[3:], fixed)},
        })
        print(f"  {arch} ratio {ratio}: orig {ms[0]:.2f} ms, round-to 1 {ms[1]:.2f} ms, auto {ms[2]:.2f} ms",
              file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet18,mobilenet_v2")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--work", type=Path, default=None, help="export cache dir [default: a temp dir]")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixed", default="8,16", help="fixed --round-to values timed alongside, for comparison")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune_round_to_")
        args.work = Path(tmp.name)
    ratios = [float(r) for r in args.ratios.split(",")]
    args.fixed = [int(m) for m in args.fixed.split(",") if m.strip()]
    print(f"onnxruntime CPU, {args.threads} intra-op thread(s), batch 1, {args.size}x{args.size}, "
          f"warm-up {args.warmup}, {args.rounds} rotating rounds", flush=True)
    rows = [row for arch in args.archs.split(",") if arch.strip() for row in bench(arch.strip(), ratios, args)]
    head = (f"{'arch':14s} {'ratio':>5s} {'orig_ms':>8s} {'r1_ms':>7s} {'auto_ms':>7s} {'auto/r1':>7s} "
            f"{'paired':>6s} {'macs r1':>7s} {'macs auto':>9s} {'changed':>7s}  multiples  fixed N: ms (MACs kept)")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch']:14s} {r['ratio']:5.2f} {r['orig_ms']:8.2f} {r['round1_ms']:7.2f} {r['auto_ms']:7.2f} "
              f"{r['auto_vs_round1']:7.3f} {r['paired_auto_vs_round1']:6.3f} {r['round1_macs_kept']:7.3f} "
              f"{r['auto_macs_kept']:9.3f} {r['groups_changed']:7d}  {r['multiples']}  "
              + ", ".join(f"{m}: {f['ms']:.2f} ({f['macs_kept']:.3f})" for m, f in r["fixed"].items()))
    if args.json:
        import onnxruntime as ort

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "meta": {"command": "python tools/bench_round_to.py " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:]),
                     "rounds": args.rounds, "warmup": args.warmup, "threads": args.threads, "size": args.size,
                     "exporter": "legacy", "onnxruntime": ort.__version__, "python": platform.python_version(),
                     "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")},
            "rows": rows,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
