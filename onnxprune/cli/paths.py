"""Paths and values every command checks before any work: a model's external data given as the model, a budget
outside (0, 1], and the output folders (created when missing, removed again when the command fails)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxprune.errors import UsageError

__all__ = ["check_model_path", "check_fraction", "output_folders"]

_EXTERNAL_DATA_SUFFIXES = (".onnx.data", ".onnx_data", ".data")


def check_model_path(path: Path) -> Path:
    """Refuse a model's external data file given as the model (``model.onnx.data``): a usage mistake that
    would otherwise read as a corrupt protobuf."""
    name = path.name.lower()
    suffix = next((s for s in _EXTERNAL_DATA_SUFFIXES if name.endswith(s)), None)
    if suffix is None or not path.is_file():
        return path
    beside = path.with_name(path.name[:len(path.name) - len(suffix)] + ".onnx")
    hint = f" ('{beside}')" if beside.is_file() else ""
    raise UsageError(f"'{path}' is the external data of a model: pass the .onnx file{hint}")


def check_fraction(option: str, value: float | None) -> None:
    """A budget option (``--target-macs`` ...) is a fraction to keep, in (0, 1]."""
    if value is not None and not 0.0 < value <= 1.0:
        raise UsageError(f"{option} must be in (0, 1] (the fraction to keep), got {value}")


@contextmanager
def output_folders(paths: Iterable[Path | None]) -> Iterator[None]:
    """Create the missing folders of the output ``paths``; if the command then fails, remove the folders it
    created (nothing is left behind)."""
    created: list[Path] = []
    try:
        for path in paths:
            missing, parent = [], (path.parent if path is not None else Path("."))
            while str(parent) not in ("", ".") and not parent.exists() and not parent.is_symlink():
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir()
                created.append(folder)
        yield
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
