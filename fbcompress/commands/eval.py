"""`fbcompress eval`: the design.md metrics of any model form on a dataset dir."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.options import data_option, device_option, json_option, progress_wanted, split_option
from fbcompress.core.errors import FbError


@click.command("eval")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(path_type=Path),
              help="checkpoint dir, .onnx or .plan file, or export bundle dir")
@data_option()
@split_option()
@click.option("--max-queries", type=int, help="score only the first N Rank@K queries of each task")
@device_option("cpu", "cpu | cuda")
@click.option("--backend", type=click.Choice(["auto", "pytorch", "onnxruntime"]), default="auto", show_default=True,
              help="auto follows the model form; onnxruntime on a checkpoint dir exports it to a temporary ONNX file "
                   "and scores that (faster on CPUs; refused unless its logits match PyTorch's within 1e-4)")
@json_option()
def eval_cmd(model_path, data_dir, split, max_queries, device, backend, json_path) -> None:
    """Score a model: ACC, AUC, ITR and TIR Rank@1/5/10 on the dataset's fixed eval sets.

    \b
    Examples:
      fbcompress eval --model runs/qs/teacher --data runs/qs/data --json runs/qs/teacher-eval.json
      fbcompress eval --model runs/qs/teacher --data runs/qs/data --backend onnxruntime
      fbcompress eval --model exported/quickstart/model.int8.onnx --data runs/qs/data
    """
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.evaluation.metrics import evaluate_model, format_table
    from fbcompress.export.checkpoint_ort import open_scorer_for_eval

    if max_queries is not None and max_queries < 1:
        raise FbError("--max-queries must be at least 1")
    dataset = DatasetDir.open(data_dir)
    scorer = open_scorer_for_eval(model_path, device, backend)
    result = evaluate_model(scorer, model_path, dataset, split, max_queries, progress=progress_wanted())
    click.echo(format_table(result), err=json_path == "-")
    if json_path:
        write_json_output(json_path, result)
