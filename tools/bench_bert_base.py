"""The transformer cost bar on a BERT-base-size export: prune wall time vs load + save, and realised speed-up.

Bars (the transformer issue): a 12-layer BERT-base export (random weights, ~440 MB) prunes in <= 2x the wall
time of ``onnx.load`` + ``onnx.save``; pruned at 0.5 it runs in <= 0.45x the original's onnxruntime CPU latency
(1 intra-op thread, batch 1, sequence 128).

Run from the repository root (the venv active; takes several minutes, nothing is downloaded)::

    python tools/bench_bert_base.py [--work DIR] [--ratio 0.5] [--repeat 3] [--rounds 30] [--warmup 5]
        [--seed 0] [--md tools/results/bert_base.md]

1. ``BertForSequenceClassification(BertConfig())`` (12 layers, hidden 768, 12 heads, MLP 3072, vocabulary
   30522; eager attention), seeded random weights with LayerNorm weights/biases re-randomised as in
   ``tools/transformer_models.py``, exported in a child process with the legacy exporter (opset 17, static
   inputs ``input_ids`` / ``attention_mask`` / ``token_type_ids`` int64 [1, 128]) to ``WORK/bert_base.onnx``
   (reused when it exists; ``--work`` keeps it, default a temp dir).
2. Fresh child processes, interleaved ``--repeat`` rounds (base, A, B, C, base, A, B, C, ...), medians:
   ``base`` ``python -c "import onnx"``; ``A`` ``onnx.load`` + ``onnx.save``; ``B``
   ``python -m onnxprune.cli MODEL --ratio R -o OUT -q --report REP`` (verification on, as a user runs it);
   ``C`` the same with ``--no-verify``.  Wall time (interpreter start included) and peak RSS (``ru_maxrss``
   from ``os.wait4`` in a small intermediate interpreter, see ``tools/bench_cost.py``), ratios B/A and C/A,
   peak RSS / file size.
3. onnxruntime CPU latency of the original and of B's pruned model: 1 intra-op thread, sequential, full graph
   optimisation, batch 1, sequence 128, the same random inputs (token ids in [0, 30522), mask of ones, token
   types 0); ``--warmup`` runs each, then ``--rounds`` rounds alternating which model goes first.  Ratio of
   the medians pruned/original, the median per-round ratio, and ``macs_kept`` / ``params_kept`` from B's report.
4. A markdown table printed and written to ``--md`` (versions, git commit and the command at the top).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))

from bench_cost import file_size, run_child  # noqa: E402

SEQ = 128
VOCAB = 30522
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CASES = ("base", "A", "B", "C")
LABELS = {
    "base": "python -c 'import onnx'",
    "A": "onnx.load + onnx.save",
    "B": "onnxprune CLI (verify)",
    "C": "onnxprune CLI --no-verify",
}
WALL_BAR = 2.0
LATENCY_BAR = 0.45


# --------------------------------------------------------------------------- export (child process)


def export_bert_base(path: Path, seed: int) -> None:
    """Build the seeded BERT-base classifier and export it (legacy exporter, opset 17) to ``path``.

    Runs in a child process (``--export-to``) so that torch never lives in the timing process.
    """
    import torch
    from transformer_models import KwargsWrapper, randomize_norms  # also stubs torchvision's compiled ops
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(attn_implementation="eager"))
    randomize_norms(model, seed)
    wrapped = KwargsWrapper(model.eval(), INPUTS, "logits").eval()
    feeds = make_inputs(seed)
    x = tuple(torch.from_numpy(feeds[n]) for n in INPUTS)
    tmp = path.with_name(path.name + ".partial")
    with torch.no_grad():
        ref = wrapped(*x).numpy()
        torch.onnx.export(wrapped, x, str(tmp), dynamo=False, opset_version=17, do_constant_folding=True,
                          input_names=list(INPUTS), output_names=["logits"])
    import onnxruntime as ort

    got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    err = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if err > 1e-3:
        raise SystemExit(f"export check failed: onnxruntime vs torch max rel error {err:.2e}")
    tmp.replace(path)
    print(f"exported {path} ({file_size(path) / 2**20:.1f} MiB), onnxruntime vs torch max rel error {err:.1e}")


def ensure_export(work: Path, seed: int) -> tuple[Path, float | None]:
    """``WORK/bert_base.onnx``, exported in a child process if missing; seconds taken (None if reused)."""
    path = work / "bert_base.onnx"
    if path.exists():
        return path, None
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--export-to", str(path), "--seed", str(seed)],
                   check=True)
    return path, time.perf_counter() - t0


def make_inputs(seed: int) -> dict[str, np.ndarray]:
    """Batch 1, sequence 128: token ids in [0, VOCAB), attention mask of ones, token types 0."""
    rng = np.random.default_rng(seed + 999)
    return {"input_ids": rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64),
            "attention_mask": np.ones((1, SEQ), dtype=np.int64),
            "token_type_ids": np.zeros((1, SEQ), dtype=np.int64)}


# --------------------------------------------------------------------------- tool cost


def case_cmd(case: str, model: Path, out: Path, report: Path, ratio: float) -> list[str]:
    """Command line of one timed case."""
    if case == "base":
        return [sys.executable, "-c", "import onnx"]
    if case == "A":
        code = "import sys, onnx\nonnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
        return [sys.executable, "-c", code, str(model), str(out)]
    cmd = [sys.executable, "-m", "onnxprune.cli", str(model), "--ratio", str(ratio), "-o", str(out), "-q",
           "--report", str(report)]
    return cmd + (["--no-verify"] if case == "C" else [])


def time_cases(model: Path, work: Path, ratio: float, repeat: int) -> tuple[dict[str, list[dict[str, Any]]], Path]:
    """Interleaved rounds of every case; B's last pruned model and report are kept (``WORK/out/pruned.onnx``)."""
    out_dir = work / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch, report = out_dir / "scratch.onnx", out_dir / "report.json"
    pruned, pruned_report = out_dir / "pruned.onnx", out_dir / "pruned.report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    for rep in range(repeat):
        for case in CASES:
            scratch.unlink(missing_ok=True)
            report.unlink(missing_ok=True)
            log = out_dir / f"{case}.{rep}.log"
            r = run_child(case_cmd(case, model, scratch, report, ratio), log, env)
            r["out_bytes"] = file_size(scratch) if scratch.exists() else None
            if r["rc"] != 0:
                lines = log.read_text(errors="replace").strip().splitlines()
                r["error"] = lines[-1] if lines else f"exit code {r['rc']}"
            elif case in ("B", "C") and report.exists():
                rep_json = json.loads(report.read_text())
                r["macs_kept"], r["params_kept"] = rep_json.get("macs_kept"), rep_json.get("params_kept")
                r["max_rel_error"] = (rep_json.get("verification") or {}).get("max_rel_error")
                if case == "B":
                    scratch.replace(pruned)
                    report.replace(pruned_report)
            runs[case].append(r)
            print(f"  round {rep + 1} {case:4s} wall {r['wall_s']:7.2f}s  peak RSS {r['rss'] / 2**20:7.1f} MiB  "
                  f"rc {r['rc']}" + (f"  {r['error']}" if r.get("error") else ""), flush=True)
    scratch.unlink(missing_ok=True)
    report.unlink(missing_ok=True)
    return runs, pruned


# --------------------------------------------------------------------------- latency


def make_session(path: Path, threads: int) -> Any:
    """CPU onnxruntime session, ``threads`` intra-op threads, sequential, full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_latency(orig: Path, pruned: Path, seed: int, warmup: int, rounds: int, threads: int) -> dict[str, Any]:
    """Median latencies (ms) of both models on the same inputs, alternating which runs first."""
    sessions = {"orig": make_session(orig, threads), "pruned": make_session(pruned, threads)}
    feeds = make_inputs(seed)
    for key, sess in sessions.items():
        names = {i.name for i in sess.get_inputs()}
        if names != set(INPUTS):
            raise RuntimeError(f"{key} model inputs {sorted(names)} differ from {list(INPUTS)}")
    outs = {key: sess.run(None, feeds)[0] for key, sess in sessions.items()}
    if outs["orig"].shape != outs["pruned"].shape:
        raise RuntimeError(f"output shapes differ: {outs['orig'].shape} vs {outs['pruned'].shape}")

    def once(key: str) -> float:
        t0 = time.perf_counter()
        sessions[key].run(None, feeds)
        return time.perf_counter() - t0

    for _ in range(warmup):
        for key in sessions:
            once(key)
    times: dict[str, list[float]] = {"orig": [], "pruned": []}
    for i in range(rounds):
        for key in (("orig", "pruned") if i % 2 == 0 else ("pruned", "orig")):
            times[key].append(once(key))
    o, p = statistics.median(times["orig"]), statistics.median(times["pruned"])
    return {"orig_ms": o * 1e3, "pruned_ms": p * 1e3, "ratio": p / o,
            "paired_ratio": statistics.median(b / a for a, b in zip(times["orig"], times["pruned"])),
            "orig_p10_p90_ms": [float(np.percentile(times["orig"], q)) * 1e3 for q in (10, 90)],
            "pruned_p10_p90_ms": [float(np.percentile(times["pruned"], q)) * 1e3 for q in (10, 90)]}


# --------------------------------------------------------------------------- report


def versions() -> str:
    """Versions of the packages involved."""
    out = [f"python {platform.python_version()}"]
    for pkg in ("onnx", "onnxruntime", "numpy", "torch", "transformers", "onnxprune"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def git_commit() -> str:
    """HEAD of the repository, with ``(+ uncommitted changes under onnxprune/)`` when that tree is dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onnxprune"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unknown)"
    return head + (" (+ uncommitted changes under onnxprune/)" if dirty else "")


def _verdict(value: float | None, bar: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value <= bar else "NOT met"


def build_markdown(meta: dict[str, Any], med: dict[str, dict[str, float]], ratios: dict[str, float | None],
                   lat: dict[str, Any] | None, prune_info: dict[str, Any], failures: list[str]) -> str:
    """The results as markdown."""
    mib = 2**20
    size = meta["model_bytes"]
    lines = [
        "# BERT-base (12 layers, 768 hidden, random weights): prune cost and realised speed-up",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"- onnxprune commit: {meta['commit']}",
        f"- versions: {meta['versions']}",
        f"- machine: {meta['cpus']} CPUs (shared), {meta['date']}",
        f"- model: `BertForSequenceClassification(BertConfig())`, seed {meta['seed']}, legacy exporter opset 17, "
        f"inputs int64 [1, {SEQ}], {size / mib:.1f} MiB ({size / 1e6:.0f} MB)",
        f"- cost: medians of {meta['repeat']} interleaved rounds of fresh processes (base, A, B, C, ...); "
        "wall includes interpreter start-up; peak RSS = ru_maxrss of the child",
        "",
        "| case | wall s (median) | vs A | peak RSS MiB | RSS / file |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        m = med[c]
        vs = "" if c == "base" else f"{m['wall_s'] / med['A']['wall_s']:.2f}x"
        lines.append(f"| {c}: {LABELS[c]} | {m['wall_s']:.2f} | {vs} | {m['rss'] / mib:.0f} | "
                     f"{m['rss'] / size:.2f} |")
    lines += ["", "| measure | value | bar | verdict |", "|---|---|---|---|"]
    for key, label in (("B/A", "prune wall / (load + save), verify on"),
                       ("C/A", "prune wall / (load + save), --no-verify")):
        v = ratios.get(key)
        lines.append(f"| {label} | {'-' if v is None else f'{v:.2f}'} | <= {WALL_BAR:g} | "
                     f"{_verdict(v, WALL_BAR)} |")
    if lat is not None:
        lines.append(f"| onnxruntime latency pruned / original (1 thread, seq {SEQ}) | {lat['ratio']:.3f} "
                     f"({lat['pruned_ms']:.1f} / {lat['orig_ms']:.1f} ms; paired {lat['paired_ratio']:.3f}) | "
                     f"<= {LATENCY_BAR:g} | {_verdict(lat['ratio'], LATENCY_BAR)} |")
    else:
        lines.append(f"| onnxruntime latency pruned / original | - | <= {LATENCY_BAR:g} | n/a (no pruned model) |")
    for key in ("macs_kept", "params_kept", "max_rel_error"):
        v = prune_info.get(key)
        lines.append(f"| {key} (prune report) | {'-' if v is None else f'{v:.4g}'} | | |")
    if lat is not None:
        lines += ["", f"Latency: {meta['warmup']} warm-up runs each, then {meta['rounds']} rounds alternating which "
                  f"model runs first; p10-p90 original {lat['orig_p10_p90_ms'][0]:.1f}-"
                  f"{lat['orig_p10_p90_ms'][1]:.1f} ms, pruned {lat['pruned_p10_p90_ms'][0]:.1f}-"
                  f"{lat['pruned_p10_p90_ms'][1]:.1f} ms."]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="export cache / output dir [default: a temp dir]")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the cost cases")
    ap.add_argument("--rounds", type=int, default=30, help="alternating latency rounds after warm-up")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md", type=Path, default=TOOLS / "results" / "bert_base.md", help="markdown output")
    ap.add_argument("--json", type=Path, default=None, help="also write all runs as JSON here")
    ap.add_argument("--export-to", type=Path, default=None, help=argparse.SUPPRESS)  # the export child
    args = ap.parse_args(argv)
    if args.export_to is not None:
        export_bert_base(args.export_to, args.seed)
        return 0

    argv_shown = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "tools/bench_bert_base.py", *argv_shown])
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune_bert_base_")
        args.work = Path(tmp.name)
    model, secs = ensure_export(args.work, args.seed)
    print(f"model {model} ({file_size(model) / 2**20:.1f} MiB)" +
          (f", exported in {secs:.0f}s" if secs is not None else ", reused"), flush=True)

    runs, pruned = time_cases(model, args.work, args.ratio, args.repeat)
    failures = [f"{c} round {i + 1}: rc {r['rc']}: {r['error']}" for c in CASES for i, r in enumerate(runs[c])
                if r["rc"] != 0]
    med = {c: {"wall_s": statistics.median(r["wall_s"] for r in runs[c]),
               "rss": statistics.median(r["rss"] for r in runs[c])} for c in CASES}
    ok = {c: all(r["rc"] == 0 for r in runs[c]) for c in CASES}
    ratios = {f"{c}/A": (med[c]["wall_s"] / med["A"]["wall_s"] if ok[c] and ok["A"] else None) for c in ("B", "C")}
    last_b = runs["B"][-1]
    prune_info = {k: last_b.get(k) for k in ("macs_kept", "params_kept", "max_rel_error")}

    lat = None
    if pruned.exists() and ok["B"]:
        print(f"latency: {args.warmup} warm-up + {args.rounds} alternating rounds, {args.threads} thread(s)",
              flush=True)
        try:
            lat = time_latency(model, pruned, args.seed, args.warmup, args.rounds, args.threads)
        except Exception as exc:  # noqa: BLE001 - report and go on
            failures.append(f"latency: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

    meta = {"command": command, "commit": git_commit(), "versions": versions(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seed": args.seed, "model_bytes": file_size(model),
            "repeat": args.repeat, "rounds": args.rounds, "warmup": args.warmup, "ratio": args.ratio}
    md = build_markdown(meta, med, ratios, lat, prune_info, failures)
    print()
    print(md)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(md)
    print(f"wrote {args.md}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "runs": runs, "medians": med, "ratios": ratios,
                                         "latency": lat, "prune": prune_info, "failures": failures}, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
