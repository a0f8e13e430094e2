"""`fbcompress train-teacher` and `fbcompress distill`: the two training commands (resumable, torchrun-ready)."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.options import (
    data_option,
    device_option,
    out_option,
    recipe_option,
    resume_mode,
    resume_options,
    set_option,
)

TRAIN_RECIPE_HELP = "recipe YAML path or name"


@click.command("train-teacher")
@recipe_option(TRAIN_RECIPE_HELP, required=True)
@data_option()
@out_option("checkpoint dir")
@resume_options
@device_option("auto", "auto | cpu | cuda")
@set_option()
def train_teacher_cmd(recipe, data_dir, out, resume, force, stop_after, device, overrides) -> None:
    """Train the full FashionBERT teacher (MLM + MPM + ITA, adaptive task weights).

    \b
    Examples:
      fbcompress train-teacher --recipe quickstart --data runs/qs/data --out runs/qs/teacher
      fbcompress train-teacher -r quickstart --data D --out runs/fixed --set train.loss_weighting=fixed
      torchrun --nproc-per-node 8 -m fbcompress train-teacher -r fashiongen-bert-base --data D --out runs/t
    """
    from fbcompress.recipes import load_recipe_or_defaults
    from fbcompress.training.teacher import train_teacher

    resume_mode(resume, force)
    r = load_recipe_or_defaults(recipe, overrides)
    result = train_teacher(r, data_dir, out, resume=resume, force=force, device=device, stop_after=stop_after)
    metrics = result.get("metrics", {})
    if "val_auc" in metrics:
        click.echo(f"teacher at {out}: step {result['step']}, val AUC {metrics['val_auc']:.4f}, "
                   f"val ACC {metrics['val_accuracy']:.4f}", err=True)


@click.command("distill")
@recipe_option(TRAIN_RECIPE_HELP, required=True)
@click.option("--teacher", "teacher_dir", required=True, type=click.Path(path_type=Path), help="teacher checkpoint")
@data_option()
@out_option("student checkpoint dir")
@resume_options
@click.option("--no-teacher", is_flag=True,
              help="ablation: same student, same initialisation and steps, hard labels only")
@device_option("auto", "auto | cpu | cuda")
@set_option()
def distill_cmd(recipe, teacher_dir, data_dir, out, resume, force, stop_after, no_teacher, device, overrides) -> None:
    """Distill the teacher into a 2-layer student with variable sequence length (VSL).

    \b
    Examples:
      fbcompress distill --recipe quickstart --teacher runs/qs/teacher --data runs/qs/data --out runs/qs/student
      fbcompress distill -r quickstart --teacher T --data D --out runs/qs/no-teacher --no-teacher
      fbcompress distill -r quickstart --teacher T --data D --out runs/h256 --set distill.hidden_size=256
    """
    from fbcompress.recipes import load_recipe_or_defaults
    from fbcompress.training.distill import distill

    resume_mode(resume, force)
    r = load_recipe_or_defaults(recipe, overrides)
    result = distill(r, teacher_dir, data_dir, out, resume=resume, force=force, no_teacher=no_teacher,
                     device=device, stop_after=stop_after)
    metrics = result.get("metrics", {})
    if "val_auc" in metrics:
        pad = result.get("padding", {})
        click.echo(f"student at {out}: step {result['step']}, val AUC {metrics['val_auc']:.4f}; padding "
                   f"{pad.get('pad_share', float('nan')):.1%} (fixed-length: "
                   f"{pad.get('pad_share_fixed_length', float('nan')):.1%})", err=True)
