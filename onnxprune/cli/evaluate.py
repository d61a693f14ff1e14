"""``onnxprune eval``: accuracy where labels exist, fidelity to a reference model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from onnxprune.cli.format import evaluation_document, format_evaluation
from onnxprune.cli.options import data_options, load_command_data
from onnxprune.cli.paths import check_model_path
from onnxprune.core.modelio import load_model
from onnxprune.measure.evaluate import evaluate

__all__ = ["eval_cmd"]


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Samples (.npz with optional labels, .npy, or an image folder with class subfolders).")
@click.option("--reference", type=click.Path(path_type=Path), help="Original model: report fidelity to it.")
@click.option("--limit", type=int, help="Evaluate at most N samples.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def eval_cmd(model: Path, data_path: Path, reference: Path | None, limit: int | None, as_json: bool, debug: bool,
             **data_opts: Any) -> None:
    """Evaluate MODEL: top-1 accuracy where labels exist, fidelity to --reference (agreement, cosine, error)."""
    candidate = load_model(check_model_path(model))
    data = load_command_data(data_path, model, candidate, data_opts)
    assert data is not None  # --data is required
    ref = load_model(check_model_path(reference)) if reference is not None else None
    result = evaluate(candidate, data, ref, data_opts["batch_size"], limit)
    ref_eval = None
    if ref is not None and data.labels is not None:  # the reference's own accuracy, to compare with
        ref_eval = evaluate(ref, data, None, data_opts["batch_size"], limit, "evaluating reference")
    if as_json:
        document = evaluation_document(model, data_path, result, reference, ref_eval, data.classes)
        click.echo(json.dumps(document, indent=1))
        return
    click.echo(format_evaluation(result, ref_eval.accuracy if ref_eval is not None else None))
