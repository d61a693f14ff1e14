"""Command-line options shared by several commands, and the parsers of their values: how image folders
become model input (prune, analyze, eval, finetune), input shapes, and the training options of the commands
that train through the torch bridge (prune's training schedules and ``finetune``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import onnx

from onnxprune.errors import UsageError
from onnxprune.measure.data import Dataset, ImageSpec, load_data
from onnxprune.training.finetune import LOSSES, LR_SCHEDULES, FinetuneConfig

__all__ = ["training_options", "finetune_config", "data_options", "load_command_data", "parse_shapes",
           "parse_round_to", "parse_floats"]

F = TypeVar("F", bound=Callable[..., Any])


def _add(fn: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        fn = option(fn)
    return fn


def training_options(fn: F) -> F:
    """--epochs, --lr, --loss, --optimizer, --lr-schedule, --temperature, --bn, --device."""
    return _add(fn, [
        click.option("--epochs", type=int, default=5, show_default=True,
                     help="Training epochs (per step for the dropnet/auto-balanced schedules)."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate."),
        click.option("--loss", type=click.Choice(LOSSES), default="auto", show_default=True,
                     help="distill: match the teacher's outputs (no labels needed); ce: labels; both; "
                          "auto: distill with a teacher, ce without."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option("--lr-schedule", type=click.Choice(list(LR_SCHEDULES)), default="auto", show_default=True,
                     help="Learning rate over the run: cosine decay to zero, or constant; auto: cosine for "
                          "finetune, constant in each step of --schedule dropnet/auto-balanced."),
        click.option("--temperature", type=float, default=4.0, show_default=True,
                     help="Softens class scores for distillation."),
        click.option("--bn", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
                     help="BatchNormalization during training: batch statistics (train) or fixed (frozen)."),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda or cuda:1."),
    ])


def finetune_config(opts: dict[str, Any], batch_size: int, seed: int) -> FinetuneConfig:
    """The :class:`FinetuneConfig` the training options describe (removes them from ``opts``)."""
    config = FinetuneConfig(epochs=opts.pop("epochs"), lr=opts.pop("lr"), batch_size=batch_size,
                            loss=opts.pop("loss"), optimizer=opts.pop("optimizer"),
                            lr_schedule=opts.pop("lr_schedule"),
                            temperature=opts.pop("temperature"), bn=opts.pop("bn"), seed=seed,
                            device=opts.pop("device"))
    config.validate()
    return config


def data_options(fn: F) -> F:
    """Options describing how image folders become model input (shared by prune and eval)."""
    return _add(fn, [
        click.option("--preprocess", type=click.Path(path_type=Path),
                     help="JSON preprocessing spec for image folders [default: <model>.preprocess.json]."),
        click.option("--size", metavar="HxW", help="Resize images to HxW."),
        click.option("--mean", metavar="M[,M,M]", help="Subtract per channel (after --scale)."),
        click.option("--std", metavar="S[,S,S]", help="Divide per channel (after --mean)."),
        click.option("--scale", type=float, help="Multiply pixels by this first [default: 1/255]."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Input layout [default: NCHW]."),
        click.option("--color", type=click.Choice(["RGB", "BGR", "L"]), help="Channel order [default: RGB]."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per onnxruntime run."),
    ])


def load_command_data(path: Path | None, model_path: Path, model: onnx.ModelProto, opts: dict[str, Any]
                      ) -> Dataset | None:
    """The samples at ``path`` (``None`` without a path), image folders preprocessed as ``opts`` say. What the
    loader converted (a cast, a resize) is one ``onnxprune: note:`` line each on stderr (not with ``--quiet``);
    what looks like a mistake (class folders that do not fit the model) one ``onnxprune: warning:`` line each."""
    if path is None:
        return None
    spec = _image_spec(model_path, opts["preprocess"], opts["size"], opts["mean"], opts["std"], opts["scale"],
                       opts["layout"], opts["color"])
    data = load_data(path, model, spec)
    _tell(data, quiet=bool(opts.get("quiet")))
    return data


def _tell(data: Dataset, quiet: bool) -> None:
    """Print the loader's notes (unless ``quiet``) and warnings, one line each, to stderr."""
    for line in data.warnings:
        click.echo(f"onnxprune: warning: {line}", err=True)
    for line in () if quiet else data.notes:
        click.echo(f"onnxprune: note: {line}", err=True)


def _image_spec(model: Path, preprocess: Path | None, size: str | None, mean: str | None, std: str | None,
                scale: float | None, layout: str | None, color: str | None) -> ImageSpec:
    """Preprocessing for image folders: a spec file (--preprocess, or <model>.preprocess.json beside the model)
    overridden by flags."""
    beside = model.with_name(model.stem + ".preprocess.json")
    source = preprocess or (beside if beside.exists() else None)
    spec = ImageSpec.from_file(source) if source is not None else ImageSpec()
    changes: dict[str, Any] = {}
    if size is not None:
        try:
            h, _, w = size.lower().partition("x")
            changes["size"] = (int(h), int(w or h))
        except ValueError:
            raise UsageError(f"--size expects HxW, got '{size}'") from None
    for key, value in (("mean", parse_floats(mean)), ("std", parse_floats(std)), ("scale", scale),
                       ("layout", layout), ("color", color)):
        if value is not None:
            changes[key] = value
    return dataclasses.replace(spec, **changes)


def parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    """``--input-shape NAME:D1xD2x...`` values as a dict (``None`` when there are none)."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise UsageError(f"--input-shape expects NAME:D1xD2x..., got '{value}'") from None
    return shapes or None


def parse_round_to(value: str | int) -> int | str:
    """``--round-to``: a positive integer or ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--round-to expects a positive integer or 'auto', got '{value}'")
    return n


def parse_floats(value: str | None) -> tuple[float, ...] | None:
    """Comma-separated numbers (``None`` for ``None``)."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got '{value}'") from None
