"""Reading and writing models: the only module that touches files.

Models larger than protobuf's 2 GB limit are read with their external data and written with it; every write is
atomic (a temporary file beside the target, then a rename), so a failure leaves nothing behind.

A model with at least :data:`IN_PLACE_THRESHOLD` bytes of external data is read *in place*: its large tensors
stay external, their ``location`` made absolute, and :func:`tensor_array` maps a tensor's bytes (``np.memmap``)
when someone reads it, so loading costs the graph only and a reader holds one tensor at a time. Such a model is
written with external data again: tensors still read in place are copied file to file (``copy_file_range``),
the others written one by one, each at a 4096-byte aligned offset.

The tensors read in place, and the scratch file the rewrite spills cut weights to, are in
:mod:`onnxprune.core.external`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from onnxprune.core.external import (
    ALIGNMENT,
    SPILL_MIN_BYTES,
    _external_info,
    _external_length,
    _resolve_in_place,
    in_place,
    inline_tensor,
    read_in_place,
    spill,
    spill_folder,
    spilled_tensor,
    tensor_array,
    tensor_nbytes,
)
from onnxprune.core.inference import copy_fields
from onnxprune.errors import ModelError, OutputError, UsageError

__all__ = [
    "load_model",
    "save_model",
    "write_text_atomic",
    "write_outputs",
    "check_outputs",
    "file_sha256",
    "tensor_nbytes",
    "tensor_array",
    "inline_tensor",
    "in_place",
    "read_in_place",
    "spill",
    "spill_folder",
    "spilled_tensor",
    "EXTERNAL_DATA_THRESHOLD",
    "IN_PLACE_THRESHOLD",
    "ALIGNMENT",
    "SPILL_MIN_BYTES",
]

#: Above this many bytes of tensor data a model is written with an external ``.data`` file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_EXTERNAL_MIN_TENSOR = 1024
#: A model with at least this many bytes of external data is read in place (memory-mapped), not loaded whole.
IN_PLACE_THRESHOLD = 256 << 20


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
        model = onnx.load_model(str(p), load_external_data=False)
        external = [t for t in _all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
        if sum(_external_length(t) for t in external) >= IN_PLACE_THRESHOLD:
            _resolve_in_place([t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL],
                              p.resolve().parent)
            for t in _all_tensors(model):  # Constant nodes' tensors (rarely external) are read into the model
                if t.data_location == TensorProto.EXTERNAL and not in_place(t):
                    onnx.external_data_helper.load_external_data_for_tensor(t, str(p.parent))
        elif external:
            onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (DecodeError, RuntimeError) as exc:
        raise ModelError(f"'{p}' is not a readable ONNX model ({_first_line(exc)})") from exc
    except (OSError, ValueError, KeyError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"cannot read '{p}' or its external data ({_first_line(exc)})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"'{p}' is not an ONNX model with a graph (no nodes found)")
    return model


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
    if external_data is None:
        external_data = _data_bytes(model) > EXTERNAL_DATA_THRESHOLD or any(in_place(t) for t in _all_tensors(model))
    use_external = external_data or _data_bytes(model) > EXTERNAL_DATA_THRESHOLD
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
            _write_inline(model, tmp_model)
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


def _write_inline(model: onnx.ModelProto, model_path: Path) -> None:
    """Serialize with every tensor inside the protobuf (tensors read in place are read in for the write)."""
    swapped: list[tuple[TensorProto, TensorProto]] = []
    try:
        for t in _all_tensors(model):
            if in_place(t):
                original = TensorProto()
                original.CopyFrom(t)
                t.CopyFrom(inline_tensor(original))
                swapped.append((t, original))
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
    finally:
        for t, original in swapped:
            t.CopyFrom(original)


def _write_with_external_data(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Write the tensors to one data file, one at a time at aligned offsets (tensors read in place are copied
    file to file), then a structure-only copy of the model that points at them. ``model`` is not changed and
    no second copy of its weights is made (a protobuf never gives back memory a field held)."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(model.graph, out.graph, skip=("node", "initializer"))
    with open(data_path, "wb") as data:
        for t in model.graph.initializer:
            out.graph.initializer.append(_externalized(t, data, location))
        for node in model.graph.node:
            if not any(a.type == onnx.AttributeProto.TENSOR and _moves(a.t) for a in node.attribute):
                out.graph.node.append(node)
                continue
            new = out.graph.node.add()
            copy_fields(node, new, skip=("attribute",))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and _moves(a.t):
                    stub = new.attribute.add()
                    copy_fields(a, stub, skip=("t",))
                    stub.t.CopyFrom(_externalized(a.t, data, location))
                else:
                    new.attribute.append(a)
    with open(model_path, "wb") as f:
        f.write(out.SerializeToString())


def _moves(t: TensorProto) -> bool:
    """Whether a tensor goes to the data file (large and not external elsewhere already)."""
    return in_place(t) or (t.data_location != TensorProto.EXTERNAL and tensor_nbytes(t) >= _EXTERNAL_MIN_TENSOR)


def _externalized(t: TensorProto, data, location: str) -> TensorProto:
    """``t`` itself when it stays in the model, else a stub pointing where its bytes were just written."""
    if not _moves(t):
        return t
    if in_place(t):
        offset, length = _copy_in_place(t, data)
    else:
        raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        data.write(b"\0" * ((-data.tell()) % ALIGNMENT))
        offset, length = data.tell(), len(raw)
        data.write(raw)
        del raw
    stub = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _copy_in_place(t: TensorProto, data) -> tuple[int, int]:
    """Copy a tensor read in place into ``data`` at the next aligned offset, kernel to kernel."""
    info = _external_info(t)
    data.write(b"\0" * ((-data.tell()) % ALIGNMENT))
    data.flush()
    offset, length = data.tell(), _external_length(t)
    with open(info["location"], "rb") as src:
        src_offset, left = int(info.get("offset", 0)), length
        out = data.fileno()
        while left > 0:
            try:
                n = os.copy_file_range(src.fileno(), out, left, src_offset)
            except (AttributeError, OSError):  # no copy_file_range here (or across these file systems)
                n = 0
            if n <= 0:
                src.seek(src_offset)
                chunk = src.read(min(left, 64 << 20))
                if not chunk:
                    raise OSError(f"'{info['location']}' ends before tensor '{t.name}' does")
                n = os.write(out, chunk)
            src_offset += n
            left -= n
    data.seek(0, os.SEEK_END)
    return offset, length


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
                  documents: Callable[[list[Path]], Sequence[tuple[Path | None, str]]],
                  source: onnx.ModelProto | None = None) -> list[Path]:
    """Write ``model`` to ``path``, then the text ``documents(model files written)`` names (a path of ``None``
    is skipped); if any of it fails, remove what was written and re-raise. Returns the model files.

    A model derived from a ``source`` read in place is written with external data too (tensor by tensor:
    serializing it whole would hold it twice)."""
    written = save_model(model, path, True if source is not None and read_in_place(source) else None)
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
