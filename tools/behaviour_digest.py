"""Digest of what onnxprune writes for a fixed set of commands: models, plans and reports (timings aside).

Run it on two commits and compare the printed digests to show that a refactor changed no behaviour::

    python tools/behaviour_digest.py --models /tmp/tv_exports --out /tmp/digest_new.json
    git stash; python tools/behaviour_digest.py --models /tmp/tv_exports --out /tmp/digest_old.json; git stash pop
    diff /tmp/digest_old.json /tmp/digest_new.json

``--models`` is a folder of torchvision exports (``python tools/torchvision_models.py --out-dir DIR
--archs resnet18,mobilenet_v2,densenet121,convnext_tiny``; the dynamo ones with ``--exporter dynamo``); the
bundled MNIST model and data are always used. Each command runs the ``onnxprune`` of the Python it is run with.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_resnet.onnx"
CALIB = ROOT / "models" / "mnist_calib.npz"
VAL = ROOT / "models" / "mnist_val.npz"
VOLATILE = {"seconds", "wall_s", "time", "timings", "latency", "elapsed", "peak_memory", "created",
            "tool_version", "path", "output", "plan_path", "report_path", "config"}


def _commands(models: list[Path]) -> list[tuple[str, list[str]]]:
    m, c, v = str(MNIST), str(CALIB), str(VAL)
    cmds = [
        ("mnist-0.5", [m, "--ratio", "0.5"]),
        ("mnist-0", [m, "--ratio", "0"]),
        ("mnist-global-l1", [m, "--ratio", "0.4", "--global", "--criterion", "l1"]),
        ("mnist-round", [m, "--ratio", "0.3", "--round-to", "4", "--min-channels", "3"]),
        ("mnist-calib", [m, "--ratio", "0.5", "--calib", c]),
        ("mnist-calib-bias", [m, "--ratio", "0.3", "--calib", c, "--recover", "bias", "--criterion", "act-var"]),
        ("mnist-meanact", [m, "--ratio", "0.3", "--calib", c, "--criterion", "mean-act", "--recover", "none"]),
        ("mnist-apoz", [m, "--ratio", "0.3", "--calib", c, "--criterion", "apoz"]),
        ("mnist-iter", [m, "--ratio", "0.5", "--calib", c, "--schedule", "iterative", "--step", "0.25"]),
        ("mnist-macs", [m, "--target-macs", "0.4"]),
        ("mnist-params", [m, "--target-params", "0.5", "--criterion", "l1"]),
        ("mnist-maxdrop", [m, "--max-drop", "0.02", "--calib", c, "--eval", v]),
        ("mnist-exclude", [m, "--ratio", "0.5", "--exclude", "*conv1*"]),
    ]
    for folder in models:
        for f in sorted(folder.glob("*.onnx")):
            if ".pruned" in f.name:
                continue
            cmds.append((f"{folder.name}/{f.stem}-0.5", [str(f), "--ratio", "0.5"]))
            cmds.append((f"{folder.name}/{f.stem}-macs", [str(f), "--target-macs", "0.4", "--criterion", "l1"]))
    return cmds


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "-"


def digest(models: list[Path]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, args in _commands(models):
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            model, plan, report = t / "out.onnx", t / "plan.json", t / "report.json"
            cmd = [sys.executable, "-m", "onnxprune.cli", *args, "-o", str(model), "--plan", str(plan),
                   "--report", str(report), "--quiet"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            entry = {"exit": str(proc.returncode), "model": _sha(model)}
            data = t / "out.onnx.data"
            if data.exists():
                entry["data"] = _sha(data)
            if plan.exists():
                p = json.loads(plan.read_text())
                entry["plan"] = hashlib.sha256(json.dumps(_scrub(p), sort_keys=True).encode()).hexdigest()[:16]
            if report.exists():
                r = json.loads(report.read_text())
                entry["report"] = hashlib.sha256(json.dumps(_scrub(r), sort_keys=True).encode()).hexdigest()[:16]
            if proc.returncode:
                entry["stderr"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            out[name] = entry
            print(name, entry, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, action="append", default=[], help="a folder of exports (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write the digests to")
    args = ap.parse_args(argv)
    result = digest(args.models)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
