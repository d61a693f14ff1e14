"""Tool cost of onnxprune on a ResNet-50 export: wall time and peak memory vs a plain load + save.

Every measurement is a fresh child process, started (like ``/usr/bin/time -v``
does) by a small intermediate interpreter that reports the child's wall time
(interpreter start included) and peak RSS (``ru_maxrss`` from ``os.wait4``).
The intermediate matters: a child's ru_maxrss starts from the RSS of the
process it was forked from, so a child forked from this script (which may hold
torch after an export) would report this script's RSS.
Cases, run interleaved ``--repeat`` times (base, a, b, c, base, a, b, c, ...):

* ``base``: ``python -c "import onnx, onnxruntime, numpy, onnxprune"`` (start-up + imports)
* ``a``: the same imports, then ``onnx.load`` + ``onnx.save`` of the model
* ``b``: ``onnxprune MODEL --ratio R -o OUT`` (the CLI, verification on)
* ``c``: the same with ``--no-verify``
* with ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base main~3``) also
  ``b0``/``c0``: ``b``/``c`` run from that checkout, and the ratios b/b0, c/c0 (is this commit slower?)

Medians are reported, absolute and as increments over ``base``, with the
ratios b/a and c/a and peak RSS per byte of model file.

    python tools/bench_cost.py [--model resnet50.onnx | --work DIR] [--ratio 0.5]
        [--repeat 3] [--json PATH] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

IMPORTS = "import onnx, onnxruntime, numpy, onnxprune"
CASES = ("base", "a", "b", "c")
LABELS = {
    "base": "python + imports",
    "a": "onnx.load + onnx.save",
    "b": "onnxprune CLI (verify)",
    "c": "onnxprune CLI --no-verify",
    "b0": "baseline CLI (verify)",
    "c0": "baseline CLI --no-verify",
}


def onnxprune_cmd() -> list[str]:
    """The installed ``onnxprune`` console script beside this interpreter (not a pyenv shim)."""
    beside = Path(sys.executable).parent / "onnxprune"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("onnxprune")
    return [found] if found else [sys.executable, "-m", "onnxprune.cli"]


def file_size(path: Path) -> int:
    """Bytes of the model file plus its external ``.data`` file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# Runs in a small intermediate interpreter (``python -S``): a child's ru_maxrss starts from the RSS of
# the process it was forked from, so children are never forked from this (possibly large) process.
_RUNNER = r"""
import os, subprocess, sys, time
log, cmd = sys.argv[1], sys.argv[2:]
with open(log, "wb") as fh:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
p.returncode = os.waitstatus_to_exitcode(status)
print(wall, usage.ru_maxrss, p.returncode)
"""


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` via the runner; return wall seconds, peak RSS (bytes) of that child, and its exit code."""
    res = subprocess.run([sys.executable, "-S", "-c", _RUNNER, str(log), *cmd], capture_output=True, text=True,
                         check=True, env=env)
    wall, maxrss, rc = res.stdout.split()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return {"wall_s": float(wall), "rss": int(maxrss) * scale, "rc": int(rc)}


def case_cmd(case: str, model: Path, out: Path, ratio: float, same_launch: bool = False) -> list[str]:
    """Command line of one case (``same_launch``: the CLI as ``python -m onnxprune.cli``, as the baseline runs)."""
    if case == "base":
        return [sys.executable, "-c", IMPORTS]
    if case == "a":
        code = f"{IMPORTS}\nimport sys\nonnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
        return [sys.executable, "-c", code, str(model), str(out)]
    cli = [sys.executable, "-m", "onnxprune.cli"] if case.endswith("0") or same_launch else onnxprune_cmd()
    cmd = [*cli, str(model), "--ratio", str(ratio), "-o", str(out)]
    return cmd + (["--no-verify"] if case.startswith("c") else [])


def _cleanup(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".data")):
        p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="ONNX model [default: WORK/legacy/<arch>.onnx, exported if missing]")
    ap.add_argument("--arch", default="resnet50", help="torchvision arch to export when --model is not given")
    ap.add_argument("--work", type=Path, default=None, help="export cache / output dir [default: a temp dir]")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write results JSON here")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of another commit to time side by side (cases b0, c0)")
    args = ap.parse_args(argv)
    cases = CASES + (("b0", "c0") if args.baseline else ())
    baseline_env = dict(os.environ, PYTHONPATH=str(args.baseline)) if args.baseline else None

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune_cost_")
        args.work = Path(tmp.name)
    model = args.model
    if model is None:
        from bench_depth import ensure_export

        model, secs = ensure_export(args.arch, args.work, "legacy")
        if secs is not None:
            print(f"exported {model} in {secs:.1f}s")
    size = file_size(model)
    out_dir = args.work / "cost_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "out.onnx"
    print(f"model {model} ({size / 2**20:.1f} MiB), ratio {args.ratio}, repeat {args.repeat}, "
          f"cli {' '.join(onnxprune_cmd())}", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    failures = []
    for rep in range(args.repeat):
        for case in cases:
            _cleanup(out)
            log = out_dir / f"{case}.{rep}.log"
            r = run_child(case_cmd(case, model, out, args.ratio, args.baseline is not None), log,
                          baseline_env if case.endswith("0") else None)
            if case != "base":
                r["out_bytes"] = file_size(out) if out.exists() else None
            runs[case].append(r)
            print(f"  round {rep + 1} {case:4s} wall {r['wall_s']:6.2f}s  peak RSS {r['rss'] / 2**20:7.1f} MiB"
                  f"  rc {r['rc']}", flush=True)
            if r["rc"] != 0:
                msg = log.read_text(errors="replace").strip().splitlines()
                failures.append(f"{case} round {rep + 1}: rc {r['rc']}: {msg[-1] if msg else ''}")
    _cleanup(out)

    med = {c: {"wall_s": statistics.median(r["wall_s"] for r in runs[c]),
               "rss": statistics.median(r["rss"] for r in runs[c])} for c in cases}
    base = med["base"]
    for c in cases:
        med[c]["wall_incr_s"] = med[c]["wall_s"] - base["wall_s"]
        med[c]["rss_incr"] = med[c]["rss"] - base["rss"]
        med[c]["rss_per_file"] = med[c]["rss"] / size
        med[c]["rss_incr_per_file"] = med[c]["rss_incr"] / size

    mib = 2**20
    print()
    print(f"medians of {args.repeat} runs; model file {size / mib:.1f} MiB")
    head = (f"{'case':28s} {'wall_s':>7s} {'+wall_s':>8s} {'RSS_MiB':>8s} {'+RSS_MiB':>9s} "
            f"{'RSS/file':>8s} {'+RSS/file':>9s}")
    print(head)
    print("-" * len(head))
    for c in cases:
        m = med[c]
        print(f"{c + ' ' + LABELS[c]:28s} {m['wall_s']:7.2f} {m['wall_incr_s']:8.2f} {m['rss'] / mib:8.1f} "
              f"{m['rss_incr'] / mib:9.1f} {m['rss_per_file']:8.2f} {m['rss_incr_per_file']:9.2f}")
    print("(+ = increment over 'base', the python start-up + imports child)")
    print()
    ratios: dict[str, dict[str, float]] = {}
    head = f"{'ratio':6s} {'wall':>6s} {'+wall':>6s} {'RSS':>6s} {'+RSS':>6s}"
    print(head)
    print("-" * len(head))
    pairs = [("b", "a"), ("c", "a")] + ([("b", "b0"), ("c", "c0")] if args.baseline else [])
    for c, d in pairs:
        m, a = med[c], med[d]
        ratios[f"{c}/{d}"] = {
            "wall": m["wall_s"] / a["wall_s"],
            "wall_incr": m["wall_incr_s"] / a["wall_incr_s"] if a["wall_incr_s"] > 0 else float("nan"),
            "rss": m["rss"] / a["rss"],
            "rss_incr": m["rss_incr"] / a["rss_incr"] if a["rss_incr"] > 0 else float("nan"),
        }
        r = ratios[f"{c}/{d}"]
        print(f"{c + '/' + d:6s} {r['wall']:6.2f} {r['wall_incr']:6.2f} {r['rss']:6.2f} {r['rss_incr']:6.2f}")
    if failures:
        print("\nfailures:")
        for f in failures:
            print("  " + f)

    if args.json:
        from bench_depth import _versions

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "meta": {"model": str(model), "model_bytes": size, "ratio": args.ratio, "repeat": args.repeat,
                     "cli": onnxprune_cmd(), "cpus": os.cpu_count(), "versions": _versions(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S")},
            "runs": runs, "medians": med, "ratios": ratios, "failures": failures,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
