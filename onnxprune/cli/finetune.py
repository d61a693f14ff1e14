"""``onnxprune finetune``: train a (pruned) model's weights through the torch bridge; the graph stays as is."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from onnxprune.cli.format import format_epochs
from onnxprune.cli.options import data_options, finetune_config, load_command_data, training_options
from onnxprune.core.modelio import check_outputs, load_model, write_outputs
from onnxprune.pipeline.report import finetune_report
from onnxprune.rewriting.verify import verify

__all__ = ["finetune_cmd"]


@click.command("finetune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "train_path", type=click.Path(path_type=Path), required=True,
              help="Training samples (.npz/.npy/image folder); labels are optional.")
@click.option("--teacher", type=click.Path(path_type=Path),
              help="Model whose outputs to match (usually the original before pruning).")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Validation samples: evaluated each epoch, the best epoch's weights are kept.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output model [default: <stem>.finetuned.onnx].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write a JSON report here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for shuffling and initial state.")
@training_options
@data_options
@click.option("--no-verify", is_flag=True, help="Skip the checker/onnxruntime check of the result.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def finetune_cmd(model: Path, train_path: Path, teacher: Path | None, eval_path: Path | None,
                 output: Path | None, report_path: Path | None, seed: int, no_verify: bool, as_json: bool,
                 quiet: bool, debug: bool, **opts: Any) -> None:
    """Fine-tune MODEL: distil from --teacher (no labels needed), or train on the labels of --data."""
    from onnxprune.measure.evaluate import evaluate
    from onnxprune.training.finetune import finetune

    config = finetune_config(opts, opts["batch_size"], seed)
    output = output or model.with_name(model.stem + ".finetuned.onnx")
    check_outputs(model, [p for p in (output, report_path) if p is not None])
    student = load_model(model)
    teacher_model = load_model(teacher) if teacher is not None else None
    train = load_command_data(train_path, model, student, opts)
    assert train is not None  # --data is required
    eval_data = load_command_data(eval_path, model, student, opts)
    result = finetune(student, train, config, teacher=teacher_model, eval_data=eval_data)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, the first process writes the result
    if not no_verify:
        verify(student, result.model, None, seed=seed, mask_check=False)
    tuned = evaluate(result.model, eval_data, teacher_model, config.batch_size) if eval_data is not None else None
    report = finetune_report(model, teacher, config, result, tuned)
    write_outputs(result.model, output, lambda written: [(report_path, json.dumps(report, indent=1) + "\n")])
    if as_json:
        click.echo(json.dumps(report))
    elif not quiet:
        click.echo(f"onnxprune: {model} -> {output} ({config.epochs} epochs, best epoch {result.best_epoch})",
                   err=True)
        for line in format_epochs(result):
            click.echo(line, err=True)
