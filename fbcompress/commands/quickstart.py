"""`fbcompress quickstart`: the whole pipeline, each stage run as the public command a user could type."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import click

from fbcompress.commands.group import EXIT_INTERRUPTED, invoke_command
from fbcompress.commands.options import out_option, recipe_option, set_option


def stage_invoker(root: click.Group) -> Callable[[list[str]], int]:
    """How the quickstart runs a stage: the public command line, in this process, through the root group."""
    return functools.partial(invoke_command, root)


@click.command("quickstart")
@out_option("working dir: data, checkpoints, eval/bench JSON, report", required=False,
            default=Path("runs/quickstart"))
@click.option("--bundle", default=Path("exported/quickstart"), show_default=True, type=click.Path(path_type=Path),
              help="the hand-off bundle (ONNX, INT8, engines, manifest, report copy)")
@recipe_option("recipe YAML path or name", default="quickstart")
@click.option("--force", is_flag=True, help="redo every stage, even those whose inputs are unchanged")
@click.option("--all-students", is_flag=True,
              help="measure every student of the recipe's ladder (the Pareto table), not only up to the first that "
                   "passes the gate; ship the fastest that passed")
@set_option()
def quickstart_cmd(out: Path, bundle: Path, recipe: str, force: bool, all_students: bool, overrides) -> None:
    """The whole pipeline: data → teacher → 2-layer VSL student → ONNX → INT8 → (TensorRT) → eval → bench → check.

    Students: the recipe's `quickstart.students` ladder lists student widths, fastest first. Each is distilled,
    exported, quantized and gated by `fbcompress check` against the teacher until one passes; that one's bundle is
    shipped to --bundle. A student that fails the gate is kept in the report, with why.

    Stages whose inputs are unchanged are reused; an interrupted training stage resumes from its last complete
    checkpoint. Writes report.md / report.json / plots to --out and a copy into the bundle. Exit 0 when a student
    was shipped, 1 when none passed the gates, 2 on bad input or a crashed stage.

    \b
    Examples:
      fbcompress quickstart                      # the embedded default, ~40 min on a 2-core CPU
      fbcompress quickstart --out runs/smoke-qs --bundle exported/smoke-qs --recipe smoke
      fbcompress quickstart --all-students       # every student width, for the Pareto table
    """
    from fbcompress.pipeline.quickstart import QuickstartInterrupted, quickstart_and_report

    invoke = stage_invoker(click.get_current_context().find_root().command)
    try:
        run = quickstart_and_report(recipe, overrides, out, bundle, invoke=invoke, force=force,
                                    all_students=all_students)
    except QuickstartInterrupted as stopped:
        click.echo(f"interrupted in stage {stopped}: finished stages are kept; run the same command again to "
                   "continue (training resumes from its last checkpoint)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(run.report.read_text())
    click.echo(f"report: {run.report}" + (f" (copy in {bundle / 'report'})" if run.shipped else ""), err=True)
    if run.exit_code:
        sys.exit(run.exit_code)
