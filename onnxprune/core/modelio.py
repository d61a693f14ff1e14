"""Reading and writing models: the only module that touches files.

Models larger than protobuf's 2 GB limit are read with their external data and written with it; every write is
atomic (a temporary file beside the target, then a rename), so a failure leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from onnxprune.errors import ModelError, OutputError, UsageError

__all__ = [
    "load_model",
    "save_model",
    "write_text_atomic",
    "write_outputs",
    "check_outputs",
    "file_sha256",
    "tensor_nbytes",
    "EXTERNAL_DATA_THRESHOLD",
]

#: Above this many bytes of tensor data a model is written with an external ``.data`` file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_EXTERNAL_MIN_TENSOR = 1024


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model (with its external data) or raise ``ModelError`` with one clear sentence."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"input model '{p}' does not exist")
    if p.is_dir():
        raise ModelError(f"input model '{p}' is a directory, not an ONNX file")
    if p.stat().st_size == 0:
        raise ModelError(f"input model '{p}' is empty")
    try:
        model = onnx.load_model(str(p), load_external_data=True)
    except (DecodeError, RuntimeError) as exc:
        raise ModelError(f"'{p}' is not a readable ONNX model ({_first_line(exc)})") from exc
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"cannot read '{p}' or its external data ({_first_line(exc)})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"'{p}' is not an ONNX model with a graph (no nodes found)")
    return model


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes of data a tensor holds (without reading external data)."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError):
        return n


def _data_bytes(model: onnx.ModelProto) -> int:
    total = sum(tensor_nbytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += tensor_nbytes(a.t)
    return total


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], external_data: bool | None = None) -> list[Path]:
    """Write ``model`` atomically to ``path``; returns the files written.

    ``external_data=None`` decides by size: over :data:`EXTERNAL_DATA_THRESHOLD` bytes the initializers go to
    ``<name>.data`` beside the model. The model object is left unchanged.
    """
    target = Path(path)
    use_external = _data_bytes(model) > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"output directory '{directory}' does not exist")
    tmpdir = Path(_mkdtemp(directory))
    try:
        tmp_model = tmpdir / target.name
        written: list[tuple[Path, Path]] = [(tmp_model, target)]
        if use_external:
            data_name = target.name + ".data"
            _write_with_external_data(model, tmp_model, tmpdir / data_name, data_name)
            written.append((tmpdir / data_name, target.parent / data_name))
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
        for src, dst in reversed(written):  # data first, so the model never points at a missing file
            os.replace(src, dst)
        return [dst for _, dst in written]
    except OSError as exc:
        raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from exc
    finally:
        for leftover in tmpdir.glob("*"):
            leftover.unlink(missing_ok=True)
        tmpdir.rmdir()


def _mkdtemp(directory: Path) -> str:
    try:
        return tempfile.mkdtemp(prefix=".onnxprune-", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write to '{directory}': {exc.strerror or exc}") from exc


def _write_with_external_data(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Serialize with large tensors moved to one data file, restoring the in-memory tensors afterwards."""
    moved: list[tuple[TensorProto, bytes]] = []
    try:
        with open(data_path, "wb") as data:
            for t in _all_tensors(model):
                if t.data_location == TensorProto.EXTERNAL or tensor_nbytes(t) < _EXTERNAL_MIN_TENSOR:
                    continue
                raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                pad = (-data.tell()) % 4096
                data.write(b"\0" * pad)
                offset = data.tell()
                data.write(raw)
                moved.append((t, raw))
                t.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
    finally:
        for t, raw in moved:
            t.ClearField("external_data")
            t.data_location = TensorProto.DEFAULT
            t.raw_data = raw


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically (plan, report)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give it the mode a plain open() would
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from exc
    return target


def check_outputs(source: Path, outputs: Sequence[Path]) -> None:
    """Refuse to overwrite ``source`` (the input) and fail before any work when an output cannot be written:
    :class:`UsageError` for clashing paths, :class:`OutputError` for a missing or read-only folder."""
    resolved = [out.resolve() for out in outputs]
    if len(set(resolved)) != len(resolved):
        raise UsageError("the model, --plan and --report outputs must be different files")
    for out in outputs:
        if out.exists() and source.exists() and os.path.samefile(out, source):
            raise UsageError(f"refusing to overwrite the input model '{source}'; choose another --output")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"cannot write '{out}': directory '{parent}' does not exist")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"cannot write '{out}': directory '{parent}' is not writable")
        if out.is_dir():
            raise OutputError(f"cannot write '{out}': it is a directory")


def write_outputs(model: onnx.ModelProto, path: Path,
                  documents: Callable[[list[Path]], Sequence[tuple[Path | None, str]]]) -> list[Path]:
    """Write ``model`` to ``path``, then the text ``documents(model files written)`` names (a path of ``None``
    is skipped); if any of it fails, remove what was written and re-raise. Returns the model files."""
    written = save_model(model, path)
    texts: list[Path] = []
    try:
        for target, text in documents(written):
            if target is not None:
                texts.append(write_text_atomic(target, text))
    except BaseException:
        for p in written + texts:
            p.unlink(missing_ok=True)
        raise
    return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
