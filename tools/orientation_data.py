"""An offline evaluation set for the pretrained PP-OCR text-orientation classifier (rapidocr-onnxruntime's
``ch_ppocr_mobile_v2.0_cls_infer.onnx``): random words rendered with Pillow's built-in font, upright (label 0)
or turned 180 degrees (label 1), preprocessed as rapidocr does (height 48, width padded to 192, (x/255-0.5)/0.5).

    python tools/orientation_data.py --out-dir DIR [--count 600] [--seed 0]

writes DIR/calib.npz and DIR/val.npz (arrays ``x`` and ``labels``, half each). The classifier scores about
98.7 % on it.
"""
from __future__ import annotations

import argparse
import random
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEIGHT, WIDTH = 48, 192


def _line(rng: random.Random) -> Image.Image:
    words = " ".join("".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(3, 8)))
                     for _ in range(rng.randint(1, 3)))
    size = rng.randint(20, 36)
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (int(font.getlength(words)) + 8, size + 12), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 2), words, fill=(0, 0, 0), font=font)
    return img


def _preprocess(img: Image.Image) -> np.ndarray:
    width = min(WIDTH, int(np.ceil(HEIGHT * img.width / img.height)))
    x = np.asarray(img.resize((width, HEIGHT), Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1)
    out = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)
    out[:, :, :width] = (x / 255.0 - 0.5) / 0.5
    return out


def make(count: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` preprocessed text lines and their orientation labels (alternating 0, 1)."""
    rng = random.Random(seed)
    images, labels = [], []
    for k in range(count):
        img = _line(rng)
        if k % 2:
            img = img.rotate(180)
        images.append(_preprocess(img))
        labels.append(k % 2)
    return np.stack(images), np.array(labels, dtype=np.int64)


def write(out_dir: str | Path, count: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """Write the first half as calib.npz and the second as val.npz; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, y = make(count, seed)
    half = count // 2
    np.savez_compressed(out / "calib.npz", x=x[:half], labels=y[:half])
    np.savez_compressed(out / "val.npz", x=x[half:], labels=y[half:])
    return out / "calib.npz", out / "val.npz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for path in write(args.out_dir, args.count, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
