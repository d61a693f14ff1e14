"""Sample data for calibration and evaluation: ``.npz`` (arrays named after the model inputs, optional
``labels``), ``.npy`` (single-input models) or a folder of images (class subfolders give labels) with the
preprocessing described by :class:`ImageSpec`. Batches are produced lazily, so statistics stream."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxprune.core.graph import static_input_shapes
from onnxprune.errors import UsageError

__all__ = ["Dataset", "ImageSpec", "load_data", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageSpec:
    """How images become model input: resize, scale, normalise, channel order and layout."""

    size: tuple[int, int] | None = None  # (height, width); default: the model input's static size
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"  # or NHWC
    color: str = "RGB"  # RGB, BGR or L (grey)

    @classmethod
    def from_file(cls, path: str | Path) -> "ImageSpec":
        """Read a JSON spec (keys: size, scale, mean, std, layout, color); unknown keys are errors."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read preprocessing spec '{path}': {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"preprocessing spec '{path}' has unknown keys: {', '.join(unknown)}")
        if not isinstance(data, dict):
            raise UsageError(f"preprocessing spec '{path}' must be a JSON object")
        if isinstance(data.get("size"), (int, float)):
            data["size"] = (int(data["size"]),) * 2  # a square size
        for key in ("size", "mean", "std"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key]) if isinstance(data[key], (list, tuple)) else (data[key],)
        return cls(**data)

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"image layout must be NCHW or NHWC, got '{self.layout}'")
        if self.color not in ("RGB", "BGR", "L"):
            raise UsageError(f"image color must be RGB, BGR or L, got '{self.color}'")


@dataclass
class Dataset:
    """Named input arrays (samples along axis 0) or image files, with optional integer labels."""

    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    files: list[Path] = field(default_factory=list)
    spec: ImageSpec | None = None
    image_input: str | None = None
    image_shape: list[int] | None = None
    image_dtype: np.dtype | None = None

    def __len__(self) -> int:
        if self.files:
            return len(self.files)
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], slice]]:
        """Feeds of at most ``batch_size`` samples (and the slice of samples they cover)."""
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            part = slice(start, min(start + batch_size, n))
            if self.files:
                yield self._images(self.files[part]), part
            else:
                yield {k: np.ascontiguousarray(v[part]) for k, v in self.inputs.items()}, part

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Feeds for the samples at ``indices`` (any order), e.g. a shuffled training batch."""
        if self.files:
            return self._images([self.files[i] for i in indices])
        return {k: np.ascontiguousarray(v[indices]) for k, v in self.inputs.items()}

    def _images(self, paths: list[Path]) -> dict[str, np.ndarray]:
        """Feeds for the image files at ``paths``."""
        spec, shape, name = self.spec, self.image_shape, self.image_input
        assert spec is not None and shape is not None and name is not None  # set for every image dataset
        return {name: np.stack([_read_image(p, spec, shape) for p in paths]).astype(self.image_dtype)}


def _model_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: vi for vi in model.graph.input if vi.name not in inits}


def load_data(path: str | Path, model: onnx.ModelProto, spec: ImageSpec | None = None) -> Dataset:
    """Load samples for ``model`` from ``path``, checking names, ranks and dtypes against its inputs."""
    p = Path(path)
    inputs = _model_inputs(model)
    if not p.exists():
        raise UsageError(f"data '{p}' does not exist")
    if p.is_dir():
        return _image_folder(p, model, inputs, spec or ImageSpec())
    if p.suffix == ".npy":
        if len(inputs) != 1:
            raise UsageError(f"'{p}' is a single array but the model has {len(inputs)} inputs; use .npz")
        arrays = {next(iter(inputs)): np.load(p, mmap_mode="r")}
        labels = None
    elif p.suffix == ".npz":
        try:
            archive = np.load(p)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read '{p}': {exc}") from exc
        missing = [n for n in inputs if n not in archive.files]
        if missing and len(inputs) == 1 and len([f for f in archive.files if f != "labels"]) == 1:
            arrays = {next(iter(inputs)): archive[next(f for f in archive.files if f != "labels")]}
        elif missing:
            raise UsageError(f"'{p}' has no array for model input(s) {', '.join(missing)} "
                             f"(arrays: {', '.join(archive.files)})")
        else:
            arrays = {n: archive[n] for n in inputs}
        labels = np.asarray(archive["labels"]).astype(np.int64) if "labels" in archive.files else None
        if labels is not None and labels.ndim != 1:
            raise UsageError(f"'{p}': labels must be a 1-D array of class indices, got shape {labels.shape}")
    else:
        raise UsageError(f"data '{p}' must be a .npz, a .npy or a folder of images")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"'{p}': every input array needs the same, non-zero number of samples")
    for name, array in arrays.items():
        _check_array(name, array, inputs[name], p)
    if labels is not None and labels.shape[0] != counts.pop():
        raise UsageError(f"'{p}': labels and inputs have different sample counts")
    return Dataset(arrays, labels)


def _check_array(name: str, array: np.ndarray, vi: onnx.ValueInfoProto, where: Path) -> None:
    tt = vi.type.tensor_type
    want = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if array.dtype != want:
        raise UsageError(f"'{where}': input '{name}' must be {want}, got {array.dtype}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) != array.ndim:
        raise UsageError(f"'{where}': input '{name}' needs rank {len(dims)} (samples first), got {array.shape}")
    for k, (d, a) in enumerate(zip(dims[1:], array.shape[1:]), start=1):
        if d is not None and d > 0 and d != a:
            raise UsageError(f"'{where}': input '{name}' dimension {k} must be {d}, got {a}")


def _image_folder(root: Path, model: onnx.ModelProto, inputs: dict, spec: ImageSpec) -> Dataset:
    if len(inputs) != 1:
        raise UsageError("an image folder can feed only single-input models")
    name, vi = next(iter(inputs.items()))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for k, cls in enumerate(classes or [""]):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(k)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in '{root}'")
    shape = static_input_shapes(model)[name]
    if spec.size is not None:
        h_axis, w_axis = (2, 3) if spec.layout == "NCHW" else (1, 2)
        shape[h_axis], shape[w_axis] = spec.size
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    channels = shape[1] if spec.layout == "NCHW" else shape[-1]
    if len(shape) != 4 or channels != (1 if spec.color == "L" else 3):
        raise UsageError(f"model input '{name}' has shape {shape}: images in {spec.layout} with color "
                         f"{spec.color} do not fit (use --color L for one channel, --layout for NHWC)")
    return Dataset({}, np.array(labels, dtype=np.int64) if classes else None, files, spec, name, shape, dtype)


def _bilinear(image: Any) -> Any:
    """Pillow's bilinear filter (``Image.Resampling.BILINEAR`` from Pillow 9.1, ``Image.BILINEAR`` before)."""
    return getattr(image, "Resampling", image).BILINEAR


def _read_image(path: Path, spec: ImageSpec, shape: list[int]) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError("reading image folders needs Pillow: pip install 'onnxprune[images]'") from exc
    h, w = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
    with Image.open(path) as img:
        img = img.convert("L" if spec.color == "L" else "RGB").resize((w, h), _bilinear(Image))
        x: np.ndarray = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.color == "BGR":
        x = x[:, :, ::-1]
    x = (x * spec.scale - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return x.transpose(2, 0, 1) if spec.layout == "NCHW" else x
