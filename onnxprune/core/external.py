"""Tensors read in place: external data mapped where it lies, and the scratch file cut weights are spilled to.

:func:`onnxprune.core.modelio.load_model` reads a model with much external data *in place*: each large tensor
stays external with an absolute ``location``, and :func:`tensor_array` maps its bytes (``np.memmap``, read-only)
when someone reads it. The weights the rewrite cuts from such a model are spilled (:func:`spill`) to one scratch
file per folder and process, unlinked as soon as it is made and read through ``/proc/self/fd``: nothing is left
behind even if the process is killed, and the space is given back when the process ends (a long-lived process
that prunes many large models keeps it until then). Where ``/proc`` is missing the cut weights stay in memory.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["in_place", "read_in_place", "tensor_array", "inline_tensor", "tensor_nbytes", "spill", "spill_folder",
           "spilled_tensor", "ALIGNMENT", "SPILL_MIN_BYTES"]

#: External tensors smaller than this are read into the model even in place (shapes, scalars, norms).
_IN_PLACE_MIN_TENSOR = 1 << 16
#: Offsets of tensors in a written data file are multiples of this (onnxruntime maps aligned data directly).
ALIGNMENT = 4096
#: Arrays at least this large that the rewrite cuts from a model read in place are spilled to a scratch file.
SPILL_MIN_BYTES = 1 << 20
#: The process's scratch files by folder: unlinked at once, open until the process ends, read through
#: ``/proc/self/fd`` (the tensors of a pruned model point there until it is written).
_SCRATCH: dict[str, tuple[BinaryIO, str]] = {}


def _external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _external_length(t: TensorProto) -> int:
    length = _external_info(t).get("length")
    return int(length) if length is not None else tensor_nbytes(t)


def _resolve_in_place(tensors: list[TensorProto], base: Path) -> None:
    """Make the external tensors' locations absolute (checking the files hold them); read the small ones."""
    sizes: dict[Path, int] = {}
    for t in tensors:
        info = _external_info(t)
        location = info.get("location")
        if not location:
            raise ValueError(f"tensor '{t.name}' has external data without a location")
        path = (base / location).resolve()
        if path not in sizes:
            sizes[path] = path.stat().st_size  # OSError (missing file) becomes a ModelError
        offset, length = int(info.get("offset", 0)), _external_length(t)
        if offset + length > sizes[path]:
            raise ValueError(f"tensor '{t.name}' lies past the end of '{path.name}'")
        if length < _IN_PLACE_MIN_TENSOR:
            onnx.external_data_helper.load_external_data_for_tensor(t, str(base))
            continue
        del t.external_data[:]
        for key, value in (("location", str(path)), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value


def read_in_place(model: onnx.ModelProto) -> bool:
    """True when some of ``model``'s tensors are read in place (see :func:`load_model`)."""
    return any(in_place(t) for t in model.graph.initializer)


def in_place(t: TensorProto) -> bool:
    """True when ``t``'s data lies in a file (a model read in place), not in the protobuf."""
    return t.data_location == TensorProto.EXTERNAL and os.path.isabs(_external_info(t).get("location", ""))


def tensor_array(t: TensorProto) -> np.ndarray:
    """A tensor's value; for a tensor read in place a read-only array over the mapped file (no copy)."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = _external_info(t)
    offset, length = int(info.get("offset", 0)), _external_length(t)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    except (KeyError, TypeError):
        dtype = None
    shape = tuple(int(d) for d in t.dims)
    count = int(np.prod(shape)) if shape else 1
    if dtype is None or dtype.kind not in "fiub" or dtype.itemsize * count != length or length == 0:
        return numpy_helper.to_array(inline_tensor(t))  # packed or unusual types: read and decode a copy
    mapped = np.memmap(info["location"], dtype=dtype, mode="r", offset=offset, shape=shape)
    return mapped.view(np.ndarray)


def spill_folder(model: onnx.ModelProto) -> str | None:
    """Where the arrays cut from ``model`` are spilled: beside its data file when it is read in place (and this
    system reads unlinked files through ``/proc/self/fd``), else ``None`` (they stay in memory)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    for t in model.graph.initializer:
        if in_place(t):
            return os.path.dirname(_external_info(t)["location"])
    return None


def spill(array: np.ndarray, folder: str) -> np.ndarray:
    """Append ``array`` to the process's scratch file in ``folder`` (or the temporary folder when that is not
    writable) and return a read-only map of it: the copy in memory can go, the bytes are read in place."""
    if folder not in _SCRATCH:
        f: BinaryIO
        try:
            f = tempfile.TemporaryFile(prefix=".onnxprune-scratch-", dir=folder)
        except OSError:
            f = tempfile.TemporaryFile(prefix=".onnxprune-scratch-")
        _SCRATCH[folder] = (f, f"/proc/self/fd/{f.fileno()}")
    f, path = _SCRATCH[folder]
    array = np.ascontiguousarray(array)
    f.seek(0, os.SEEK_END)
    f.write(b"\0" * ((-f.tell()) % ALIGNMENT))
    offset = f.tell()
    f.write(array.data)
    f.flush()
    return np.memmap(path, dtype=array.dtype, mode="r", offset=offset, shape=array.shape)


def spilled_tensor(value: np.ndarray, name: str, data_type: int) -> TensorProto | None:
    """A tensor read in place from the scratch file for an array :func:`spill` returned (``None`` for any
    other array, a view of one included)."""
    if not (isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap)
            and any(value.filename == path for _, path in _SCRATCH.values())):
        return None
    t = TensorProto(name=name, data_type=data_type or onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                    dims=value.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, v in (("location", str(value.filename)), ("offset", str(value.offset)), ("length", str(value.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, v
    return t


def inline_tensor(t: TensorProto) -> TensorProto:
    """``t`` itself, or for a tensor read in place a copy holding its bytes."""
    if not in_place(t):
        return t
    info = _external_info(t)
    out = TensorProto()
    out.CopyFrom(t)
    del out.external_data[:]
    out.data_location = TensorProto.DEFAULT
    with open(info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        out.raw_data = f.read(_external_length(t))
    return out


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes of data a tensor holds (without reading external data)."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError):
        return n
