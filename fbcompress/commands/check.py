"""`fbcompress check`: the release gate, a compressed candidate against its teacher."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fbcompress.commands.options import (
    data_option,
    device_option,
    json_option,
    progress_wanted,
    recipe_option,
    set_option,
    split_option,
)


@click.command("check")
@click.option("--teacher", "-t", "teacher", required=True, type=click.Path(path_type=Path),
              help="the reference model (checkpoint dir, .onnx, .plan)")
@click.option("--candidate", "-c", "candidate", required=True, type=click.Path(path_type=Path),
              help="the compressed model to judge (student checkpoint, .onnx, .plan)")
@data_option()
@recipe_option("recipe whose `check` section holds the tolerances [default: the candidate's/teacher's recipe]")
@set_option("--set check.min_speedup=3 --set check.text_length=24", what="a tolerance")
@split_option()
@device_option("cpu", "cpu | cuda | cuda:N (both models, same device)")
@click.option("--max-queries", type=click.IntRange(min=1), help="score only the first N Rank@K queries per task")
@click.option("--teacher-eval", type=click.Path(path_type=Path), metavar="JSON",
              help="reuse this `fbcompress eval --json` result of the teacher (same weights, data, split) "
              "instead of scoring it again")
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="query encoders: the product index both search (the retriever's); gates Recall@10, nDCG@10 and "
                   "the speed-up at batch 1 with a real query")
@json_option("verdict")
def check_cmd(
    teacher: Path,
    candidate: Path,
    data_dir: Path,
    recipe: str | None,
    overrides: tuple[str, ...],
    split: str,
    device: str,
    max_queries: int | None,
    teacher_eval: Path | None,
    index_dir: Path | None,
    json_path: str | None,
) -> None:
    """Pass/fail a compressed candidate against its teacher: AUC, Rank@10 and speed-up tolerances.

    Exit 0 when every gate passes, 1 when one fails, 2 on bad input.

    \b
    Examples:
      fbcompress check --teacher runs/qs/teacher --candidate runs/qs/student --data runs/qs/data -r quickstart
      fbcompress check -t runs/qs/teacher -c exported/qs/model.int8.onnx --data runs/qs/data --json check.json
      fbcompress check -t T -c S --data D --set check.min_speedup=3 --set check.max_auc_drop=0.005
      fbcompress check -t runs/qs/retriever -c exported/qs/search/query_encoder.int8.onnx --data D --index I
    """
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.release.check import check_section, format_verdict, run_check

    section, source = check_section(recipe, overrides, [candidate, teacher])
    if index_dir is not None:
        from fbcompress.recipes import resolve_section
        from fbcompress.release.retrieval_check import run_retrieval_check

        retriever, _ = resolve_section("retriever", recipe, overrides, [teacher])
        verdict = run_retrieval_check(teacher, candidate, data_dir, index_dir, section, retriever, split, device)
    else:
        verdict = run_check(teacher, candidate, data_dir, section, split=split, device=device,
                            max_queries=max_queries, progress=progress_wanted(), teacher_eval=teacher_eval)
    verdict.tolerances_from = source
    result = verdict.to_json()
    click.echo(format_verdict(result), err=json_path == "-")
    if json_path:
        write_json_output(json_path, result)
    if not verdict.passed:
        sys.exit(1)
