"""``onnxprune finetune``: train a (pruned) model's weights through the torch bridge; the graph stays as is."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from onnxprune.cli.format import format_epochs, plural
from onnxprune.cli.options import (
    data_options,
    finetune_config,
    load_command_data,
    training_options,
)
from onnxprune.cli.paths import check_model_path, output_folders
from onnxprune.core.modelio import check_outputs, load_model, write_outputs
from onnxprune.core.progress import progress_mode
from onnxprune.pipeline.report import finetune_report
from onnxprune.pipeline.resources import check_fits
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
    with progress_mode("off" if quiet else "lines"):
        _finetune(check_model_path(model), train_path, teacher, eval_path, output, report_path, seed, no_verify,
                  as_json, quiet, opts)


def _finetune(model: Path, train_path: Path, teacher: Path | None, eval_path: Path | None, output: Path | None,
              report_path: Path | None, seed: int, no_verify: bool, as_json: bool, quiet: bool,
              opts: dict[str, Any]) -> None:
    from onnxprune.measure.evaluate import evaluate
    from onnxprune.training.devices import check_device
    from onnxprune.training.finetune import finetune, resolved_lr_schedule

    config = resolved_lr_schedule(finetune_config(opts, opts["batch_size"], seed), repeated=False)
    check_device(config.device)
    output = output or model.with_name(model.stem + ".finetuned.onnx")
    outputs = [p for p in (output, report_path) if p is not None]
    with output_folders(outputs):
        check_outputs(model, outputs)
        student = load_model(model)
        teacher_model = load_model(check_model_path(teacher)) if teacher is not None else None
        check_fits(student, str(model), "train", beside=teacher_model)
        data_opts = {**opts, "quiet": quiet}
        train = load_command_data(train_path, model, student, data_opts)
        assert train is not None  # --data is required
        eval_data = load_command_data(eval_path, model, student, data_opts)
        result = finetune(student, train, config, teacher=teacher_model, eval_data=eval_data)
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun, the first process writes the result
        if not no_verify:
            verify(student, result.model, None, seed=seed, mask_check=False)
        tuned = evaluate(result.model, eval_data, teacher_model, config.batch_size) if eval_data is not None else None
        report = finetune_report(model, teacher, config, result, tuned)

        def documents(written: list[Path]) -> list[tuple[Path | None, str]]:
            report["output"] = {"path": str(output), "bytes": sum(p.stat().st_size for p in written)}
            return [(report_path, json.dumps(report, indent=1) + "\n")]

        write_outputs(result.model, output, documents)
    if as_json:
        click.echo(json.dumps({"tool": report["tool"], "command": "finetune", "input": report["input"],
                               "output": report["output"], "report": str(report_path) if report_path else None,
                               **report}))
    elif not quiet:
        final = report["final"]
        measure = f"{final['metric']} {final['value']:.4f}" if final["value"] is not None else "no measure"
        click.echo(f"onnxprune: {model} -> {output} ({plural(config.epochs, 'epoch')}, kept epoch "
                   f"{result.best_epoch}: {measure})", err=True)
        for line in format_epochs(result):
            click.echo(line, err=True)
