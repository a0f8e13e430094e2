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
from fbcompress.core.errors import FbError

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
@click.option("--teacher", "teacher_dir", type=click.Path(path_type=Path),
              help="cross-encoder teacher checkpoint: distill the 2-layer VSL scorer")
@click.option("--retriever", "retriever_dir", type=click.Path(path_type=Path),
              help="retriever checkpoint: distill the 2-layer VSL query encoder (the product tower and its index "
                   "stay as they are)")
@data_option()
@out_option("student checkpoint dir")
@resume_options
@click.option("--no-teacher", is_flag=True,
              help="ablation: same student, same initialisation and steps, hard labels only")
@device_option("auto", "auto | cpu | cuda")
@set_option()
def distill_cmd(recipe, teacher_dir, retriever_dir, data_dir, out, resume, force, stop_after, no_teacher, device,
                overrides) -> None:
    """Distill the teacher into a 2-layer student with variable sequence length (VSL), or a retriever's query tower
    into a 2-layer VSL query encoder of the same embedding space.

    \b
    Examples:
      fbcompress distill --recipe quickstart --teacher runs/qs/teacher --data runs/qs/data --out runs/qs/student
      fbcompress distill -r quickstart --teacher T --data D --out runs/qs/no-teacher --no-teacher
      fbcompress distill -r quickstart --teacher T --data D --out runs/h256 --set distill.hidden_size=256
      fbcompress distill -r quickstart --retriever runs/qs/retriever --data D --out runs/qs/query-encoder
    """
    from fbcompress.recipes import load_recipe_or_defaults

    resume_mode(resume, force)
    if (teacher_dir is None) == (retriever_dir is None):
        raise FbError("distill needs exactly one of --teacher (a scorer student) or --retriever (a query encoder)")
    r = load_recipe_or_defaults(recipe, overrides)
    if retriever_dir is not None:
        from fbcompress.training.query_distill import distill_query_encoder

        if no_teacher:
            raise FbError("--no-teacher is an ablation of the scorer student (--teacher)")
        result = distill_query_encoder(r, retriever_dir, data_dir, out, resume=resume, force=force, device=device,
                                       stop_after=stop_after)
        metrics = result.get("metrics", {})
        if "val_recall@10" in metrics:
            click.echo(f"query encoder at {out}: step {result['step']}, val Recall@10 {metrics['val_recall@10']:.4f} "
                       f"(the tower's: {metrics['tower_recall@10']:.4f}; val queries over the val products)", err=True)
        return
    from fbcompress.training.distill import distill

    result = distill(r, teacher_dir, data_dir, out, resume=resume, force=force, no_teacher=no_teacher,
                     device=device, stop_after=stop_after)
    metrics = result.get("metrics", {})
    if "val_auc" in metrics:
        pad = result.get("padding", {})
        click.echo(f"student at {out}: step {result['step']}, val AUC {metrics['val_auc']:.4f}; padding "
                   f"{pad.get('pad_share', float('nan')):.1%} (fixed-length: "
                   f"{pad.get('pad_share_fixed_length', float('nan')):.1%})", err=True)


@click.command("train-retriever")
@recipe_option(TRAIN_RECIPE_HELP, required=True)
@click.option("--teacher", "teacher_dir", required=True, type=click.Path(path_type=Path),
              help="cross-encoder teacher checkpoint the towers continue from")
@data_option()
@out_option("retriever checkpoint dir")
@click.option("--scores-from", type=click.Path(path_type=Path), metavar="MODEL",
              help="cross-encoder whose scores the towers learn (any form: checkpoint, .onnx, bundle); default: the "
                   "teacher")
@resume_options
@device_option("auto", "auto | cpu | cuda")
@set_option("--set retriever.steps=600 --set retriever.embedding_dim=128")
def train_retriever_cmd(recipe, teacher_dir, data_dir, out, scores_from, resume, force, stop_after, device,
                        overrides) -> None:
    """Train the dual-tower retriever (query tower and product tower, shared weights) from the teacher.

    \b
    Examples:
      fbcompress train-retriever -r quickstart --teacher runs/qs/teacher --data runs/qs/data --out runs/qs/retriever
      fbcompress train-retriever -r quickstart --teacher T --data D --out R --scores-from exported/quickstart
      torchrun --nproc-per-node 8 -m fbcompress train-retriever -r fashiongen-bert-base --teacher T --data D --out R
    """
    from fbcompress.recipes import load_recipe_or_defaults
    from fbcompress.training.retriever import train_retriever

    resume_mode(resume, force)
    r = load_recipe_or_defaults(recipe, overrides)
    result = train_retriever(r, teacher_dir, data_dir, out, resume=resume, force=force, device=device,
                             stop_after=stop_after, scores_from=scores_from)
    metrics = result.get("metrics", {})
    if "val_recall@10" in metrics:
        click.echo(f"retriever at {out}: step {result['step']}, val Recall@10 {metrics['val_recall@10']:.4f}, "
                   f"nDCG@10 {metrics['val_ndcg@10']:.4f} (val queries over the val products)", err=True)
