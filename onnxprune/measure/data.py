"""Sample data for calibration and evaluation: ``.npz`` (arrays named after the model inputs, optional
``labels``), ``.npy`` (single-input models) or a folder of images (class subfolders give labels: digit names are
the class numbers, other names count in sorted order) with the preprocessing described by :class:`ImageSpec`.
Batches are produced lazily, so statistics stream. Every conversion made on the way (a cast, a resize, a
skipped file) is a line in :attr:`Dataset.notes`; a likely mistake (classes that do not fit the model) is one in
``warnings``. The library never prints them; the command line does."""
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
    #: Image folders with class subfolders: folder name -> label, in label order (for the report).
    classes: dict[str, int] | None = None
    #: One line per conversion made while loading (cast, resize, skipped files), for the user to read.
    notes: list[str] = field(default_factory=list)
    #: One line per likely mistake found while loading (labels that do not fit the model's classes).
    warnings: list[str] = field(default_factory=list)
    #: Inputs whose arrays are cast to the model's dtype batch by batch (float64 data for a float32 model).
    casts: dict[str, np.dtype] = field(default_factory=dict)

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
                yield self._arrays(part), part

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Feeds for the samples at ``indices`` (any order), e.g. a shuffled training batch."""
        if self.files:
            return self._images([self.files[i] for i in indices])
        return self._arrays(indices)

    def _arrays(self, index: slice | np.ndarray) -> dict[str, np.ndarray]:
        """Feeds for the array samples at ``index``, cast where :attr:`casts` says."""
        return {k: np.ascontiguousarray(v[index], dtype=self.casts.get(k)) for k, v in self.inputs.items()}

    def _images(self, paths: list[Path]) -> dict[str, np.ndarray]:
        """Feeds for the image files at ``paths``."""
        spec, shape, name = self.spec, self.image_shape, self.image_input
        assert spec is not None and shape is not None and name is not None  # set for every image dataset
        return {name: np.stack([_read_image(p, spec, shape) for p in paths]).astype(self.image_dtype)}


def _model_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: vi for vi in model.graph.input if vi.name not in inits}


def load_data(path: str | Path, model: onnx.ModelProto, spec: ImageSpec | None = None) -> Dataset:
    """Load samples for ``model`` from ``path``, checking names, ranks and dtypes against its inputs (float64
    arrays are cast to a float input's type); what was converted is in the result's ``notes``."""
    p = Path(path)
    inputs = _model_inputs(model)
    if not p.exists():
        raise UsageError(f"data '{p}' does not exist")
    if p.is_dir():
        data = _image_folder(p, model, inputs, spec or ImageSpec())
    elif p.suffix in (".npy", ".npz"):
        data = _array_file(p, inputs)
    else:
        raise UsageError(f"data '{p}' must be a .npz, a .npy or a folder of images")
    data.warnings += _label_warnings(p, data, _class_count(model))
    batch = _pinned_batch(inputs)
    if batch and len(data) % batch:
        data.notes.append(f"'{p.name}': the model takes batches of exactly {batch}: the last {len(data) % batch} "
                          f"of {len(data)} samples are left out")
    return data


def _array_file(p: Path, inputs: dict[str, onnx.ValueInfoProto]) -> Dataset:
    """A ``.npy`` (single input) or ``.npz`` (arrays named after the inputs, optional ``labels``)."""
    notes: list[str] = []
    labels = None
    if p.suffix == ".npy":
        if len(inputs) != 1:
            raise UsageError(f"'{p}' is a single array but the model has {len(inputs)} inputs; use .npz")
        try:
            arrays = {next(iter(inputs)): np.load(p, mmap_mode="r")}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read '{p}': {exc}") from exc
    else:
        arrays, labels = _npz_arrays(p, inputs, notes)
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"'{p}': every input array needs the same, non-zero number of samples")
    casts = {}
    for name, array in arrays.items():
        if _check_array(name, array, inputs[name], p) is not None:
            casts[name] = helper.tensor_dtype_to_np_dtype(inputs[name].type.tensor_type.elem_type)
            notes.append(f"'{p.name}': cast input '{name}' {array.dtype} -> {casts[name]} (the model's type)")
    if labels is not None and labels.shape[0] != counts.pop():
        raise UsageError(f"'{p}': labels and inputs have different sample counts")
    return Dataset(arrays, labels, notes=notes, casts=casts)


def _npz_arrays(p: Path, inputs: dict[str, onnx.ValueInfoProto], notes: list[str]
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(arrays by input name, labels or ``None``) of an ``.npz``; a lone array feeds a single-input model."""
    try:
        archive = np.load(p)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read '{p}': {exc}") from exc
    stored = [f for f in archive.files if f != "labels"]
    missing = [n for n in inputs if n not in archive.files]
    if missing and len(inputs) == 1 and len(stored) == 1:
        arrays = {missing[0]: archive[stored[0]]}
        notes.append(f"'{p.name}': its only array '{stored[0]}' feeds the model's input '{missing[0]}'")
    elif missing:
        raise UsageError(f"'{p}' has no array for model input(s) {', '.join(missing)} "
                         f"(arrays: {', '.join(archive.files)})")
    else:
        arrays = {n: archive[n] for n in inputs}
        unused = [f for f in stored if f not in inputs]
        if unused:
            notes.append(f"'{p.name}': ignored arrays that name no model input: {', '.join(unused)}")
    labels = np.asarray(archive["labels"]) if "labels" in archive.files else None
    return arrays, None if labels is None else _int_labels(labels, p, notes)


def _int_labels(labels: np.ndarray, p: Path, notes: list[str]) -> np.ndarray:
    """``labels`` as int64 class indices: a 1-D integer array, or floats holding whole numbers (noted)."""
    if labels.ndim != 1:
        raise UsageError(f"'{p}': labels must be a 1-D array of class indices, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise UsageError(f"'{p}': labels must be whole class indices, got {labels.dtype} with fractions")
        notes.append(f"'{p.name}': cast labels {labels.dtype} -> int64")
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise UsageError(f"'{p}': labels must be integer class indices, got {labels.dtype}")
    return labels.astype(np.int64)


def _check_array(name: str, array: np.ndarray, vi: onnx.ValueInfoProto, where: Path) -> str | None:
    """Refuse an array that does not fit input ``vi``; ``"cast"`` for float64 data of a float input."""
    tt = vi.type.tensor_type
    want = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    cast = array.dtype == np.float64 and np.issubdtype(want, np.floating) and want != array.dtype
    if array.dtype != want and not cast:
        hint = " (scale integer pixels to floats first)" if np.issubdtype(array.dtype, np.integer) and \
            np.issubdtype(want, np.floating) else ""
        raise UsageError(f"'{where}': input '{name}' must be {want}, got {array.dtype}{hint}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) != array.ndim:
        raise UsageError(f"'{where}': input '{name}' needs rank {len(dims)} (samples first), got {array.shape}")
    for k, (d, a) in enumerate(zip(dims[1:], array.shape[1:]), start=1):
        if d is not None and d > 0 and d != a:
            raise UsageError(f"'{where}': input '{name}' dimension {k} must be {d}, got {a}")
    return "cast" if cast else None


def _pinned_batch(inputs: dict[str, onnx.ValueInfoProto]) -> int | None:
    """The batch size the model's inputs pin (``None`` when free)."""
    for vi in inputs.values():
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _class_count(model: onnx.ModelProto) -> int | None:
    """How many class scores the first output gives per sample (``None`` when its shape is not static)."""
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim[1:]
    if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims]))


def _label_warnings(p: Path, data: Dataset, width: int | None) -> list[str]:
    """A line when the labels do not fit the model's class scores (class folders or label values)."""
    if data.labels is None or width is None or width < 2:
        return []
    top = int(data.labels.max())
    if data.classes is None:
        return [f"'{p.name}': labels go up to {top} but the model scores classes 0-{width - 1} only"] \
            if top >= width else []
    if len(data.classes) == width and top < width:
        return []
    names = list(data.classes)
    numbered = all(_is_number(n) for n in names)
    if numbered:
        lost = [str(c) for c in range(width) if c not in data.classes.values()]
        how = "labels are the folders' numbers" + (f" (no folder for {_few(lost)})" if lost else "")
    else:
        how = f"labels count the folders in sorted order ('{names[0]}'=0 ... '{names[-1]}'={len(names) - 1})"
    beyond = [n for n, c in data.classes.items() if c >= width]
    extra = f"; folder {_few(beyond)} is beyond the model's classes" if beyond else ""
    return [f"'{p.name}' has {len(names)} class folders but the model gives {width} class scores: {how}{extra}"]


def _few(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _class_labels(names: list[str]) -> dict[str, int]:
    """Folder name -> label: digit names are the class numbers (so a missing class shifts nothing), other
    names count in sorted order; in label order."""
    if names and all(_is_number(n) for n in names) and len({int(n) for n in names}) == len(names):
        return {n: int(n) for n in sorted(names, key=int)}
    return {n: k for k, n in enumerate(sorted(names))}


def _image_folder(root: Path, model: onnx.ModelProto, inputs: dict, spec: ImageSpec) -> Dataset:
    if len(inputs) != 1:
        raise UsageError("an image folder can feed only single-input models")
    name, vi = next(iter(inputs.items()))
    classes = _class_labels([d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")])
    files, labels, notes = _image_files(root, classes)
    shape = static_input_shapes(model)[name]
    if len(shape) == 4 and spec.size is not None:
        h_axis, w_axis = (2, 3) if spec.layout == "NCHW" else (1, 2)
        shape[h_axis], shape[w_axis] = spec.size
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    channels = shape[1] if spec.layout == "NCHW" else shape[-1]
    if len(shape) != 4 or channels != (1 if spec.color == "L" else 3):
        raise UsageError(f"model input '{name}' has shape {shape}: images in {spec.layout} with color "
                         f"{spec.color} do not fit (use --color L for one channel, --layout for NHWC)")
    notes += _image_notes(files, shape, spec)
    return Dataset({}, np.array(labels, dtype=np.int64) if classes else None, files, spec, name, shape, dtype,
                   classes=classes or None, notes=notes)


def _image_files(root: Path, classes: dict[str, int]) -> tuple[list[Path], list[int], list[str]]:
    """(image files, their labels, notes on what was left out) of an image folder."""
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []
    for cls, label in (classes or {"": -1}).items():
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(label)
            elif cls and not f.name.startswith("."):
                skipped.append(f.name)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in '{root}'")
    notes = [f"'{root.name}': skipped {len(skipped)} entries of the class folders that are not images "
             f"(e.g. '{skipped[0]}')"] if skipped else []
    loose = [f for f in root.iterdir() if classes and f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if loose:
        notes.append(f"'{root.name}': ignored {len(loose)} images outside the class folders")
    return files, labels, notes


#: Image modes taken as they are (a palette, or bilevel pixels, converts without loss).
_PLAIN_MODES = {"L": ("L", "1"), "RGB": ("RGB", "P"), "BGR": ("RGB", "P")}


def _image_notes(files: list[Path], shape: list[int], spec: ImageSpec, sample: int = 256) -> list[str]:
    """Lines on the conversions the images will go through, read from the headers of up to ``sample`` files
    spread over the folder: resizing to the model's size (not to a --size asked for) and colour conversion."""
    Image = _pillow()
    h, w = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
    sizes: dict[tuple[int, int], int] = {}
    modes: dict[str, int] = {}
    for f in files[:: max(1, len(files) // sample)]:
        try:
            with Image.open(f) as img:
                sizes[img.size] = sizes.get(img.size, 0) + 1
                modes[img.mode] = modes.get(img.mode, 0) + 1
        except OSError as exc:
            raise UsageError(f"cannot read image '{f}': {exc}") from exc
    notes = []
    other = sorted((s for s in sizes if s != (w, h)), key=lambda s: -sizes[s])
    if other and spec.size is None:
        seen = f"{other[0][1]}x{other[0][0]}" + (f" (and {len(other) - 1} other sizes)" if len(other) > 1 else "")
        notes.append(f"resized {seen} images to the model's {h}x{w} (--size HxW to choose)")
    converted = sorted(m for m in modes if m not in _PLAIN_MODES[spec.color])
    if converted:
        target = "grey (--color L)" if spec.color == "L" else f"{spec.color} (--color)"
        notes.append(f"converted {', '.join(converted)} images to {target}")
    return notes


def _bilinear(image: Any) -> Any:
    """Pillow's bilinear filter (``Image.Resampling.BILINEAR`` from Pillow 9.1, ``Image.BILINEAR`` before)."""
    return getattr(image, "Resampling", image).BILINEAR


def _pillow() -> Any:
    """``PIL.Image``, or a usage error saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError("reading image folders needs Pillow: pip install 'onnxprune[images]'") from exc
    return Image


def _read_image(path: Path, spec: ImageSpec, shape: list[int]) -> np.ndarray:
    Image = _pillow()
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
