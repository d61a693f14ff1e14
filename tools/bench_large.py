"""Memory and time of onnxprune on multi-GB models with external data, beside a plain onnx.load + onnx.save.

Every case is a fresh child process whose wall time and peak RSS (``ru_maxrss`` from ``os.wait4``, through the
small intermediate interpreter of ``bench_cost.py``) are measured; cases run one after another, never two at
once. Per model (``tools/build_large_models.py`` writes them):

* ``load+save``: ``onnx.load`` + ``onnx.save`` with external data (what any tool pays to rewrite the files)
* ``--no-verify``: ``onnxprune MODEL --ratio R --no-verify``
* ``verified``: ``onnxprune MODEL --ratio R`` (checker, onnxruntime, mask equivalence)
* ``--calib`` (the decoder): ``onnxprune MODEL --ratio R --calib calib.npz`` with 64 random sequences
* with ``--baseline DIR`` (a checkout of another commit) the onnxprune cases again, run from there

Peak RSS is given in GB and as a multiple of the model's size (model file + data file); the report written with
``--report`` records each stage's time and memory, summarised in the last column.

    python tools/bench_large.py --models /tmp/large [--which conv llama] [--ratio 0.5] [--out tools/results/large.md]
        [--baseline /tmp/base [--baseline-models conv]] [--repeat 3] [--skip=--calib]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_cost import file_size, run_child  # noqa: E402

LOAD_SAVE = ("import onnx, sys\n"
             "m = onnx.load(sys.argv[1])\n"
             "onnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,"
             " location=sys.argv[2].rsplit('/', 1)[-1] + '.data')")
BARS = {("conv", "--no-verify"): 1.3, ("conv", "verified"): 2.0, ("llama", "verified"): 2.0,
        ("llama", "--calib"): 2.5}


def calib_file(model: Path, out: Path, samples: int = 64, seed: int = 0) -> Path:
    """64 random token sequences (or images) shaped like the model's inputs, as an .npz."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim][1:]
        if vi.name == "attention_mask":
            arrays[vi.name] = np.ones([samples, *dims], np.int64)
        elif vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            arrays[vi.name] = rng.integers(0, 32000, [samples, *dims]).astype(np.int64)
        else:
            arrays[vi.name] = rng.standard_normal([samples, *dims]).astype(np.float32)
    np.savez(out, **arrays)
    return out


def _cli(baseline: Path | None) -> tuple[list[str], dict[str, str] | None]:
    if baseline is None:
        return [sys.executable, "-P", "-m", "onnxprune.cli"], None
    return [sys.executable, "-P", "-m", "onnxprune.cli"], dict(os.environ, PYTHONPATH=str(baseline))


def cases(name: str, model: Path, work: Path, ratio: float, baseline: Path | None
          ) -> list[tuple[str, list[str], dict[str, str] | None, Path | None]]:
    """(label, command, environment, report path) of each case for one model."""
    out = work / f"{name}.out.onnx"
    runs: list[tuple[str, list[str], dict[str, str] | None, Path | None]] = [
        ("load+save", [sys.executable, "-c", LOAD_SAVE, str(model), str(out)], None, None)]
    variants = [("--no-verify", ["--no-verify"]), ("verified", [])]
    if name == "llama":
        variants.append(("--calib", ["--calib", str(calib_file(model, work / "calib.npz")), "--calib-samples",
                                     "64"]))
    for tag, base in ((None, None), ("main", baseline)) if baseline else ((None, None),):
        cli, env = _cli(base)
        for label, extra in variants:
            report = work / f"{name}.{label.strip('-')}.{tag or 'here'}.report.json"
            cmd = [*cli, str(model), "--ratio", str(ratio), "-o", str(out), "-q", "--report", str(report), *extra]
            runs.append((label if tag is None else f"{label} ({tag})", cmd, env, report))
    return runs


def _stages(report: Path | None) -> str:
    """The report's per-stage summary: ``stage s/GB`` for the stages that took time or memory."""
    if report is None or not report.exists():
        return ""
    resources = json.loads(report.read_text()).get("resources")
    if not resources:
        return ""
    parts = [f"{s['stage']} {s['seconds']:.1f}s/{s['rss_peak_bytes'] / 1e9:.2f}" for s in resources["stages"]
             if s["seconds"] >= 0.5]
    return ", ".join(parts)


def bench(name: str, model: Path, work: Path, ratio: float, baseline: Path | None, repeat: int = 1,
          skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each case once per round, ``repeat`` rounds interleaved; the median wall time and peak RSS per case."""
    size = file_size(model)
    runs = [c for c in cases(name, model, work, ratio, baseline) if c[0] not in skip]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in runs}
    for _ in range(repeat):
        for k, (label, cmd, env, report) in enumerate(runs):
            log = work / f"{name}.{k}.log"
            res = run_child(cmd, log, env)
            results[label].append({**res, "stages": _stages(report),
                                   "error": log.read_text()[-300:] if res["rc"] else ""})
            print(f"{name:6s} {label:22s} rc={res['rc']} {res['wall_s']:7.1f} s  {res['rss'] / 1e9:6.2f} GB "
                  f"({res['rss'] / size:.2f}x)", file=sys.stderr, flush=True)
            for p in work.glob(f"{name}.out.onnx*"):
                p.unlink()
    rows = []
    for label, got in results.items():
        middle = sorted(got, key=lambda r: r["wall_s"])[len(got) // 2]
        rows.append({"model": name, "case": label, "size": size, **middle,
                     "wall_s": statistics.median(r["wall_s"] for r in got),
                     "rss": int(statistics.median(r["rss"] for r in got)), "runs": len(got),
                     "rc": max(r["rc"] for r in got)})
    return rows


def markdown(rows: list[dict[str, Any]], command: str, ratio: float, wall: float) -> str:
    import onnx
    import onnxruntime

    head = subprocess.run(["git", "-C", str(TOOLS), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    lines = [f"# onnxprune on large external-data models, ratio {ratio}", "",
             f"Generated by `{command}` ({wall:.0f} s wall) on {os.cpu_count()} cores, "
             f"{platform.machine()}; onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
             f"onnxprune at git {head} (uncommitted changes, if any, included).", "",
             "Peak RSS is the child's `ru_maxrss` (file-backed pages of mapped weights included); x size = peak "
             "RSS / (model file + data file). Bars are issue 15's. Stages (from `--report`): seconds / peak "
             "RSS in GB at the end of the stage. Medians of the runs column's interleaved runs.", "",
             "| model | size | case | runs | exit | wall s | peak RSS GB | x size | bar | stages |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    load_save = {r["model"]: r["wall_s"] for r in rows if r["case"] == "load+save"}
    for r in rows:
        bar = BARS.get((r["model"], r["case"]))
        verdict = "" if bar is None else f"≤ {bar}x: {'met' if r['rss'] <= bar * r['size'] else 'MISSED'}"
        if r["model"] == "conv" and r["case"] == "--no-verify":
            verdict += f"; wall ≤ load+save: {'met' if r['wall_s'] <= load_save.get('conv', 0) else 'MISSED'}"
        lines.append(f"| {r['model']} | {r['size'] / 1e9:.2f} GB | {r['case']} | {r['runs']} | {r['rc']} | "
                     f"{r['wall_s']:.1f} | "
                     f"{r['rss'] / 1e9:.2f} | {r['rss'] / r['size']:.2f} | {verdict} | {r['stages']} |")
    errors = [r for r in rows if r["rc"]]
    for r in errors:
        last = r['error'].strip().splitlines()[-1] if r['error'].strip() else ''
        lines += ["", f"`{r['model']} {r['case']}` failed: `{last}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("/tmp/large"), help="folder of conv.onnx / llama.onnx")
    ap.add_argument("--which", nargs="+", choices=("conv", "llama"), default=["conv", "llama"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout of another commit (cases '(main)')")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of interleaved runs (medians reported)")
    ap.add_argument("--skip", action="append", default=[], metavar="CASE",
                    help="a case to leave out (repeatable), e.g. --skip=--calib")
    ap.add_argument("--baseline-models", nargs="+", default=["conv"],
                    help="models the baseline runs on [default: conv; the decoder may not fit at 3x its size]")
    args = ap.parse_args(argv)
    work = args.models / "bench_work"
    work.mkdir(exist_ok=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.which:
        baseline = args.baseline if name in args.baseline_models else None
        rows += bench(name, args.models / f"{name}.onnx", work, args.ratio, baseline, args.repeat, tuple(args.skip))
    text = markdown(rows, "python tools/bench_large.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    args.ratio, time.perf_counter() - start)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
