"""Calibration cost: throughput of onnxprune's statistics pass against plain onnxruntime inference on the same
batches, and peak memory against the number of samples (it must stay flat).

    python tools/bench_calibration.py [--arch resnet18] [--samples 256] [--batch-size 32] [--work DIR]

Exports the torchvision architecture (random weights) with tools/torchvision_models.py when missing, writes
random calibration samples as a memory-mapped .npy, then measures in fresh subprocesses, interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
import onnxprune
from onnxprune.measure.calibrate import collect, consumer_inputs
from onnxprune.measure.data import load_data
from onnxprune.measure.runtime import Session
mode, model_path, data_path, limit, batch = sys.argv[1:6]
limit, batch = int(limit), int(batch)
model = onnxprune.load(model_path)
data = load_data(data_path, model)
if mode == "plain":
    session = Session(model)
    start = time.perf_counter()
    for feeds, _ in data.batches(batch, limit):
        session.run(feeds)
else:
    analysis = onnxprune.analyze(model)
    names = consumer_inputs(analysis)
    start = time.perf_counter()
    collect(model, names, {n: analysis.labels[n].axis for n in names}, data, batch, limit)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(mode: str, model: Path, data: Path, limit: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(data), str(limit), str(batch)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="onnxprune_calib_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{args.arch}-{args.size}.onnx"
    if not model.exists():
        sys.path.insert(0, str(TOOLS))
        import torchvision_models

        torchvision_models.export(args.arch, model, "legacy", dynamic=True, size=args.size)
    data = work / f"calib-{args.samples}-{args.size}.npy"
    if not data.exists():
        import numpy as np

        rng = np.random.default_rng(0)
        array = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32,
                                          shape=(args.samples, 3, args.size, args.size))
        for start in range(0, args.samples, 64):
            array[start:start + 64] = rng.standard_normal(array[start:start + 64].shape, dtype=np.float32)
        array.flush()
    runs: dict[str, list[dict]] = {"plain": [], "collect": [], "collect_quarter": []}
    for _ in range(args.repeat):
        runs["plain"].append(_child("plain", model, data, args.samples, args.batch_size))
        runs["collect"].append(_child("collect", model, data, args.samples, args.batch_size))
        runs["collect_quarter"].append(_child("collect", model, data, args.samples // 4, args.batch_size))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "rss_mib")} for k, v in runs.items()}
    throughput = med["plain"]["seconds"] / med["collect"]["seconds"]
    print(f"{args.arch} {args.size}px, {args.samples} samples, batch {args.batch_size}, medians of {args.repeat}")
    print(f"plain onnxruntime   {med['plain']['seconds']:7.2f} s  peak {med['plain']['rss_mib']:7.0f} MiB")
    print(f"calibration         {med['collect']['seconds']:7.2f} s  peak {med['collect']['rss_mib']:7.0f} MiB")
    print(f"calibration (1/4)   {med['collect_quarter']['seconds']:7.2f} s  peak "
          f"{med['collect_quarter']['rss_mib']:7.0f} MiB")
    print(f"throughput ratio (plain time / calibration time): {throughput:.2f}")
    print(f"peak memory, all samples / a quarter: {med['collect']['rss_mib'] / med['collect_quarter']['rss_mib']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"medians": med, "throughput_ratio": throughput}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
