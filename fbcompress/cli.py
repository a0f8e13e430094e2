"""The `fbcompress` command line (Click). Every command explains itself with `--help` and an example.

User errors (`FbError`) print one line and exit 2; long work shows a progress bar; numbers can go to `--json`.
Heavy imports (torch, transformers) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from fbcompress import __version__
from fbcompress.errors import FbError, FbWarning

EXIT_BAD_INPUT = 2


def _warning_printer(default):
    """`warnings.showwarning` that prints an FbWarning as one `warning: ...` line (no file and line number)."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FbWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


class FbGroup(click.Group):
    """Turns an FbError anywhere below into one line on stderr and exit code 2, an FbWarning into one line."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", FbWarning)
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FbError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted: the last complete checkpoint is kept; re-run with --resume", err=True)
            sys.exit(130)


def _recipe(recipe: str | None, overrides: tuple[str, ...] = ()):
    from fbcompress.recipes import load_recipe_or_defaults

    return load_recipe_or_defaults(recipe, overrides)


def invoke_in_process(args: list[str]) -> int:
    """Run one fbcompress command in this process; its exit code (0 on success). The quickstart's stages run
    through it: each stage is the public command a user could type."""
    try:
        main.main(args=args, prog_name="fbcompress", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


recipe_option = click.option(
    "--recipe", "-r", "recipe", metavar="R", help="recipe name (smoke, quickstart, fashiongen-bert-base) or a YAML path"
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="override a recipe value, e.g. --set train.steps=200 --set train.loss_weighting=fixed",
)
json_option = click.option("--json", "json_path", metavar="PATH", help="also write the results as JSON ('-': stdout)")


@click.group(cls=FbGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="fbcompress")
def main() -> None:
    """fbcompress: train a FashionBERT teacher, distill, quantize and export it, and measure every form.

    \b
    Typical run on the embedded default (synthetic catalogue, packaged MiniLM backbone):
      fbcompress data synth --recipe quickstart --out runs/qs/data
      fbcompress train-teacher --recipe quickstart --data runs/qs/data --out runs/qs/teacher
      fbcompress eval --model runs/qs/teacher --data runs/qs/data
    """


@main.group(cls=FbGroup)
def data() -> None:
    """Make a dataset dir (manifests + images + fixed eval sets) from synthetic or Fashion-Gen data."""


def _eval_sizes(recipe):
    from fbcompress.data.dataset_dir import EvalSetSizes

    return EvalSetSizes(queries=recipe.data.eval_queries, negatives=recipe.data.eval_negatives)


@data.command("synth")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="dataset dir to write")
@recipe_option
@click.option("--products", type=int, help="catalogue size (default: recipe data.products)")
@click.option("--image-size", type=int, help="image side in px (default: recipe data.image_size)")
@click.option("--seed", type=int, help="random seed (default: recipe data.seed)")
@click.option("--poses", type=int, default=1, show_default=True, help="images per product")
@set_option
def data_synth(out: Path, recipe, products, image_size, seed, poses, overrides) -> None:
    """Write the deterministic synthetic fashion catalogue (labelled synthetic everywhere).

    \b
    Example:
      fbcompress data synth --recipe quickstart --out runs/qs/data
      fbcompress data synth --out /tmp/cat --products 500 --image-size 64 --seed 1
    """
    from fbcompress.data.synth import synthesize_dataset

    r = _recipe(recipe, overrides)
    path = synthesize_dataset(
        out,
        products=products if products is not None else r.data.products,
        image_size=image_size if image_size is not None else r.data.image_size,
        seed=seed if seed is not None else r.data.seed,
        val_fraction=r.data.val_fraction,
        test_fraction=r.data.test_fraction,
        eval_sizes=_eval_sizes(r),
        poses=poses,
    )
    click.echo(f"wrote {path}")


@data.command("fashiongen")
@click.option("--h5", "h5_files", multiple=True, required=True, type=click.Path(path_type=Path),
              help="fashiongen_256_256_{train,validation}.h5 (repeatable)")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="dataset dir to write")
@recipe_option
@click.option("--image-size", type=int, help="resize images to this side (default: keep 256)")
@click.option("--limit", type=int, help="convert only the first N rows of each file (for a try-out)")
@click.option("--seed", type=int, help="split/eval-set seed (default: recipe data.seed)")
@set_option
def data_fashiongen(h5_files, out: Path, recipe, image_size, limit, seed, overrides) -> None:
    """Convert the public Fashion-Gen HDF5 files into a dataset dir (every pose kept, read lazily).

    \b
    Example:
      fbcompress data fashiongen --h5 fashiongen_256_256_train.h5 \\
          --h5 fashiongen_256_256_validation.h5 --out data/fashiongen
    """
    from fbcompress.data.fashiongen import convert_fashiongen

    r = _recipe(recipe, overrides)
    path = convert_fashiongen(
        list(h5_files),
        out,
        seed=seed if seed is not None else r.data.seed,
        val_fraction=r.data.val_fraction,
        test_fraction=r.data.test_fraction,
        eval_sizes=_eval_sizes(r),
        image_size=image_size,
        limit=limit,
    )
    click.echo(f"wrote {path}")


@main.command("train-teacher")
@click.option("--recipe", "-r", "recipe", required=True, metavar="R", help="recipe YAML path or name")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="dataset dir")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="checkpoint dir")
@click.option("--resume", is_flag=True, help="continue the checkpoint in --out exactly where it stopped")
@click.option("--force", is_flag=True, help="start over even if --out holds a checkpoint")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="N",
              help="train at most N steps in this invocation, save, exit (continue later with --resume)")
@set_option
def train_teacher_cmd(recipe, data_dir, out, resume, force, device, stop_after, overrides) -> None:
    """Train the full FashionBERT teacher (MLM + MPM + ITA, adaptive task weights).

    \b
    Examples:
      fbcompress train-teacher --recipe quickstart --data runs/qs/data --out runs/qs/teacher
      fbcompress train-teacher -r quickstart --data D --out runs/fixed --set train.loss_weighting=fixed
      torchrun --nproc-per-node 8 -m fbcompress train-teacher -r fashiongen-bert-base --data D --out runs/t
    """
    from fbcompress.teacher import train_teacher

    if resume and force:
        raise FbError("--resume and --force contradict each other; pick one")
    r = _recipe(recipe, overrides)
    result = train_teacher(r, data_dir, out, resume=resume, force=force, device=device, stop_after=stop_after)
    metrics = result.get("metrics", {})
    if "val_auc" in metrics:
        click.echo(f"teacher at {out}: step {result['step']}, val AUC {metrics['val_auc']:.4f}, "
                   f"val ACC {metrics['val_accuracy']:.4f}", err=True)


@main.command("distill")
@click.option("--recipe", "-r", "recipe", required=True, metavar="R", help="recipe YAML path or name")
@click.option("--teacher", "teacher_dir", required=True, type=click.Path(path_type=Path), help="teacher checkpoint")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="dataset dir")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="student checkpoint dir")
@click.option("--resume", is_flag=True, help="continue the checkpoint in --out exactly where it stopped")
@click.option("--force", is_flag=True, help="start over even if --out holds a checkpoint")
@click.option("--no-teacher", is_flag=True,
              help="ablation: same student, same initialisation and steps, hard labels only")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="N",
              help="train at most N steps in this invocation, save, exit (continue later with --resume)")
@set_option
def distill_cmd(recipe, teacher_dir, data_dir, out, resume, force, no_teacher, device, stop_after, overrides) -> None:
    """Distill the teacher into a 2-layer student with variable sequence length (VSL).

    \b
    Examples:
      fbcompress distill --recipe quickstart --teacher runs/qs/teacher --data runs/qs/data --out runs/qs/student
      fbcompress distill -r quickstart --teacher T --data D --out runs/qs/no-teacher --no-teacher
      fbcompress distill -r quickstart --teacher T --data D --out runs/h256 --set distill.hidden_size=256
    """
    from fbcompress.distill import distill

    if resume and force:
        raise FbError("--resume and --force contradict each other; pick one")
    r = _recipe(recipe, overrides)
    result = distill(r, teacher_dir, data_dir, out, resume=resume, force=force, no_teacher=no_teacher,
                     device=device, stop_after=stop_after)
    metrics = result.get("metrics", {})
    if "val_auc" in metrics:
        pad = result.get("padding", {})
        click.echo(f"student at {out}: step {result['step']}, val AUC {metrics['val_auc']:.4f}; padding "
                   f"{pad.get('pad_share', float('nan')):.1%} (fixed-length: "
                   f"{pad.get('pad_share_fixed_length', float('nan')):.1%})", err=True)


@main.command("eval")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(path_type=Path),
              help="checkpoint dir, .onnx or .plan file, or export bundle dir")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="dataset dir")
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]))
@click.option("--max-queries", type=int, help="score only the first N Rank@K queries of each task")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda")
@click.option("--backend", type=click.Choice(["auto", "pytorch", "onnxruntime"]), default="auto", show_default=True,
              help="auto follows the model form; onnxruntime on a checkpoint dir exports it to a temporary ONNX file "
                   "and scores that (faster on CPUs; refused unless its logits match PyTorch's within 1e-4)")
@json_option
def eval_cmd(model_path, data_dir, split, max_queries, device, backend, json_path) -> None:
    """Score a model: ACC, AUC, ITR and TIR Rank@1/5/10 on the dataset's fixed eval sets.

    \b
    Examples:
      fbcompress eval --model runs/qs/teacher --data runs/qs/data --json runs/qs/teacher-eval.json
      fbcompress eval --model runs/qs/teacher --data runs/qs/data --backend onnxruntime
      fbcompress eval --model exported/quickstart/model.int8.onnx --data runs/qs/data
    """
    from fbcompress.artifacts import write_json_output
    from fbcompress.backbone import load_tokenizer
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.evaluate import evaluate, format_table, stamp
    from fbcompress.scoring import open_scorer

    if max_queries is not None and max_queries < 1:
        raise FbError("--max-queries must be at least 1")
    dataset = DatasetDir.open(data_dir)
    scorer = open_scorer(model_path, device, backend)
    parity = getattr(scorer, "parity", None)
    data_split = SplitData(dataset, split, load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    result = stamp(evaluate(scorer, dataset, data_split, split, max_queries=max_queries), model_path, dataset)
    if parity is not None:
        result["parity_vs_pytorch"] = {k: parity[k] for k in ("max_abs_diff", "tolerance")}
    click.echo(format_table(result), err=json_path == "-")
    if json_path:
        write_json_output(json_path, result)


@main.command("quickstart")
@click.option("--out", "-o", default=Path("runs/quickstart"), show_default=True, type=click.Path(path_type=Path),
              help="working dir: data, checkpoints, eval/bench JSON, report")
@click.option("--bundle", default=Path("exported/quickstart"), show_default=True, type=click.Path(path_type=Path),
              help="the hand-off bundle (ONNX, INT8, engines, manifest, report copy)")
@click.option("--recipe", "-r", "recipe", default="quickstart", show_default=True, metavar="R",
              help="recipe YAML path or name")
@click.option("--force", is_flag=True, help="redo every stage, even those whose inputs are unchanged")
@click.option("--all-students", is_flag=True,
              help="measure every student of the recipe's ladder (the Pareto table), not only up to the first that "
                   "passes the gate; ship the fastest that passed")
@set_option
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
    from fbcompress.latency import machine_info
    from fbcompress.quickstart import QuickstartInterrupted, require_clean_out, run_quickstart, shipped_student
    from fbcompress.report import build_report

    require_clean_out(out)
    students = [s.name for s in _recipe(recipe, overrides).quickstart.students]
    try:
        results = run_quickstart(recipe, overrides, out, bundle, invoke=invoke_in_process, force=force,
                                 all_students=all_students)
    except QuickstartInterrupted as stopped:
        click.echo(f"interrupted in stage {stopped}: finished stages are kept; run the same command again to "
                   "continue (training resumes from its last checkpoint)", err=True)
        sys.exit(130)
    shipped = shipped_student(results)
    build_report(out, bundle, [vars(r) for r in results], machine_info(), students, shipped)
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.md'}" + (f" (copy in {bundle / 'report'})" if shipped else ""), err=True)
    gates = {"int8", "check", "tensorrt"}  # a failed gate is a result; any other failure is a crash
    if any(r.status == "failed" and r.name.split("[")[0] not in gates for r in results):
        sys.exit(EXIT_BAD_INPUT)
    if shipped is None:
        sys.exit(1)


from fbcompress.export.cli import export_cmd  # noqa: E402 - registered after the group exists

main.add_command(export_cmd)

from fbcompress.benchmark.cli import bench_cmd  # noqa: E402 - registered after the group exists
from fbcompress.check import check_cmd  # noqa: E402

main.add_command(bench_cmd)
main.add_command(check_cmd)

from fbcompress.quantize.cli import quantize_cmd  # noqa: E402 - registered after the group exists

main.add_command(quantize_cmd)


if __name__ == "__main__":
    main()
