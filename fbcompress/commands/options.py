"""Options that several commands share, declared once: the recipe and its overrides, `--json`, the dataset dir,
the device and split, and resuming long training (`--resume` / `--force` / `--stop-after`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fbcompress.core.errors import FbError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
RECIPE_HELP = "recipe name (smoke, quickstart, fashiongen-bert-base) or a YAML path"


def recipe_option(help: str = RECIPE_HELP, required: bool = False, default: str | None = None) -> Decorator:
    return click.option("--recipe", "-r", "recipe", metavar="R", required=required, default=default,
                        show_default=default is not None, help=help)


def set_option(example: str = "--set train.steps=200 --set train.loss_weighting=fixed",
               what: str = "a recipe value") -> Decorator:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help=f"override {what}, e.g. {example}")


def json_option(what: str = "results") -> Decorator:
    return click.option("--json", "json_path", metavar="PATH", help=f"also write the {what} as JSON ('-': stdout)")


def data_option(help: str = "dataset dir", required: bool = True) -> Decorator:
    return click.option("--data", "data_dir", required=required, type=click.Path(path_type=Path), help=help)


def out_option(help: str, required: bool = True, default: Path | None = None) -> Decorator:
    return click.option("--out", "-o", required=required, default=default, show_default=default is not None,
                        type=click.Path(path_type=Path), help=help)


def device_option(default: str = "cpu", help: str = "cpu | cuda | cuda:N") -> Decorator:
    return click.option("--device", default=default, show_default=True, help=help)


def split_option(help: str | None = None) -> Decorator:
    return click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]), help=help)


def resume_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """`--resume`, `--force` and `--stop-after` of a training command (see `resume_mode`)."""
    for option in reversed((
        click.option("--resume", is_flag=True, help="continue the checkpoint in --out exactly where it stopped"),
        click.option("--force", is_flag=True, help="start over even if --out holds a checkpoint"),
        click.option("--stop-after", type=click.IntRange(min=1), metavar="N",
                     help="train at most N steps in this invocation, save, exit (continue later with --resume)"),
    )):
        function = option(function)
    return function


def resume_mode(resume: bool, force: bool) -> None:
    if resume and force:
        raise FbError("--resume and --force contradict each other; pick one")


def progress_wanted() -> bool:
    """Progress bars only on a terminal: a log file or CI output gets the summary lines alone."""
    return sys.stderr.isatty()


def echo_log(line: str) -> None:
    click.echo(line, err=True)
