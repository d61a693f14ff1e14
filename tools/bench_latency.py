"""Realised speed-up: onnxruntime CPU latency of original vs pruned torchvision exports.

For each architecture (legacy exporter, cached in ``--work``), prune with the
library at ``--ratio`` (verification on unless ``--no-verify``), open both
models in onnxruntime (CPU, ``--threads`` intra-op threads, default 1,
sequential, full graph optimisation), batch 1, one fixed random input.  After
``--warmup`` runs of each, ``--rounds`` rounds run both sessions back to back,
alternating which goes first.  Reported: median latency of each, the ratio of
the medians (pruned/original), the median of the per-round ratios, and
onnxprune's ``macs_kept`` for comparison.

    python tools/bench_latency.py [--archs resnet50,mobilenet_v2,resnet18] [--work DIR]
        [--ratio 0.5] [--rounds 30] [--warmup 5] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
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
import onnx

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))


def make_session(model: onnx.ModelProto, threads: int) -> Any:
    """CPU onnxruntime session with ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _once(sess: Any, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter()
    sess.run(None, feeds)
    return time.perf_counter() - t0


def bench_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export (or reuse), prune, and time original vs pruned for one architecture."""
    from bench_depth import ensure_export

    import onnxprune

    row: dict[str, Any] = {"arch": arch, "macs_kept": None, "params_kept": None, "max_rel_error": None,
                           "orig_ms": None, "pruned_ms": None, "ratio": None, "paired_ratio": None,
                           "error": None}
    stage = "export"
    try:
        path, _ = ensure_export(arch, args.work, "legacy", args.size)
        stage = "prune"
        model = onnxprune.load(path)
        result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=args.ratio, verify=not args.no_verify))
        rep = result.report
        row["macs_kept"], row["params_kept"] = rep["macs_kept"], rep["params_kept"]
        row["max_rel_error"] = (rep.get("verification") or {}).get("max_rel_error")
        stage = "time"
        sessions = {"orig": make_session(model, args.threads), "pruned": make_session(result.model, args.threads)}
        del model, result
        feeds_by = {}
        for key, sess in sessions.items():
            inp = sess.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            rng = np.random.default_rng(args.seed)
            feeds_by[key] = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        for _ in range(args.warmup):
            for key in ("orig", "pruned"):
                _once(sessions[key], feeds_by[key])
        times: dict[str, list[float]] = {"orig": [], "pruned": []}
        for i in range(args.rounds):
            order = ("orig", "pruned") if i % 2 == 0 else ("pruned", "orig")
            for key in order:
                times[key].append(_once(sessions[key], feeds_by[key]))
        orig = statistics.median(times["orig"])
        pruned = statistics.median(times["pruned"])
        row.update(orig_ms=orig * 1e3, pruned_ms=pruned * 1e3, ratio=pruned / orig,
                   paired_ratio=statistics.median(p / o for p, o in zip(times["pruned"], times["orig"])),
                   orig_p10_p90_ms=[float(np.percentile(times["orig"], q)) * 1e3 for q in (10, 90)],
                   pruned_p10_p90_ms=[float(np.percentile(times["pruned"], q)) * 1e3 for q in (10, 90)])
    except Exception as exc:  # noqa: BLE001 - report and go on
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        row["error"] = f"{stage}: {type(exc).__name__}: {msg}"
    return row


def _fmt(v: Any, spec: str, width: int) -> str:
    return ("-" if v is None else format(v, spec)).rjust(width)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet50,mobilenet_v2,resnet18")
    ap.add_argument("--work", type=Path, default=None, help="export cache dir [default: a temp dir]")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true", help="prune without verification")
    ap.add_argument("--json", type=Path, default=None, help="write results JSON here")
    args = ap.parse_args(argv)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune_latency_")
        args.work = Path(tmp.name)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    print(f"onnxruntime CPU, {args.threads} intra-op thread(s), batch 1, {args.size}x{args.size}, "
          f"warm-up {args.warmup}, {args.rounds} alternating rounds, ratio {args.ratio}", flush=True)
    rows = []
    for arch in archs:
        row = bench_arch(arch, args)
        rows.append(row)
        print(f"  {arch}: " + (row["error"] or f"{row['orig_ms']:.2f} ms -> {row['pruned_ms']:.2f} ms"),
              file=sys.stderr, flush=True)

    print()
    head = (f"{'arch':16s} {'orig_ms':>8s} {'pruned_ms':>9s} {'ratio':>6s} {'paired':>6s} {'speedup':>7s} "
            f"{'macs_kept':>9s} {'params_kept':>11s} {'max_rel_err':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch']:16s} {_fmt(r['orig_ms'], '.2f', 8)} {_fmt(r['pruned_ms'], '.2f', 9)} "
              f"{_fmt(r['ratio'], '.3f', 6)} {_fmt(r['paired_ratio'], '.3f', 6)} "
              f"{_fmt(1 / r['ratio'] if r['ratio'] else None, '.2f', 6)}x "
              f"{_fmt(r['macs_kept'], '.4f', 9)} {_fmt(r['params_kept'], '.4f', 11)} "
              f"{_fmt(r['max_rel_error'], '.2e', 11)}")
    print("ratio = median pruned / median original; paired = median of per-round ratios")
    errs = [r for r in rows if r["error"]]
    for r in errs:
        print(f"  error {r['arch']}: {r['error']}")

    if args.json:
        import onnxruntime as ort

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "meta": {"ratio": args.ratio, "rounds": args.rounds, "warmup": args.warmup, "threads": args.threads,
                     "size": args.size, "exporter": "legacy", "onnxruntime": ort.__version__,
                     "python": platform.python_version(), "cpus": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S")},
            "rows": rows,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
