"""Command-line options shared by the commands that train through the torch bridge (prune's training
schedules and ``finetune``)."""
from __future__ import annotations

import click

from onnxprune.training.finetune import LOSSES, FinetuneConfig

__all__ = ["training_options", "finetune_config"]


def training_options(fn):
    """--epochs, --lr, --loss, --optimizer, --lr-schedule, --temperature, --bn, --device."""
    for option in reversed([
        click.option("--epochs", type=int, default=5, show_default=True,
                     help="Training epochs (per step for the dropnet/auto-balanced schedules)."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate."),
        click.option("--loss", type=click.Choice(LOSSES), default="auto", show_default=True,
                     help="distill: match the teacher's outputs (no labels needed); ce: labels; both; "
                          "auto: distill with a teacher, ce without."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant",
                     show_default=True, help="Learning rate over the run: constant, or cosine decay to zero."),
        click.option("--temperature", type=float, default=2.0, show_default=True,
                     help="Softens class scores for distillation."),
        click.option("--bn", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
                     help="BatchNormalization during training: batch statistics (train) or fixed (frozen)."),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda or cuda:1."),
    ]):
        fn = option(fn)
    return fn


def finetune_config(opts: dict, batch_size: int, seed: int) -> FinetuneConfig:
    """The :class:`FinetuneConfig` the training options describe (removes them from ``opts``)."""
    config = FinetuneConfig(epochs=opts.pop("epochs"), lr=opts.pop("lr"), batch_size=batch_size,
                            loss=opts.pop("loss"), optimizer=opts.pop("optimizer"),
                            lr_schedule=opts.pop("lr_schedule"),
                            temperature=opts.pop("temperature"), bn=opts.pop("bn"), seed=seed,
                            device=opts.pop("device"))
    config.validate()
    return config
