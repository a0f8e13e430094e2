"""`fbcompress data synth` and `fbcompress data fashiongen`: make a dataset dir."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.group import FbGroup
from fbcompress.commands.options import out_option, recipe_option, set_option


@click.group("data", cls=FbGroup)
def data_group() -> None:
    """Make a dataset dir (manifests + images + fixed eval sets) from synthetic or Fashion-Gen data."""


def _eval_sizes(recipe):
    from fbcompress.data.dataset_dir import EvalSetSizes

    return EvalSetSizes(queries=recipe.data.eval_queries, negatives=recipe.data.eval_negatives)


@data_group.command("synth")
@out_option("dataset dir to write")
@recipe_option()
@click.option("--products", type=int, help="catalogue size (default: recipe data.products)")
@click.option("--image-size", type=int, help="image side in px (default: recipe data.image_size)")
@click.option("--seed", type=int, help="random seed (default: recipe data.seed)")
@click.option("--poses", type=int, default=1, show_default=True, help="images per product")
@set_option()
def data_synth(out: Path, recipe, products, image_size, seed, poses, overrides) -> None:
    """Write the deterministic synthetic fashion catalogue (labelled synthetic everywhere).

    \b
    Example:
      fbcompress data synth --recipe quickstart --out runs/qs/data
      fbcompress data synth --out /tmp/cat --products 500 --image-size 64 --seed 1
    """
    from fbcompress.data.synth import synthesize_dataset
    from fbcompress.recipes import load_recipe_or_defaults

    r = load_recipe_or_defaults(recipe, overrides)
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


@data_group.command("fashiongen")
@click.option("--h5", "h5_files", multiple=True, required=True, type=click.Path(path_type=Path),
              help="fashiongen_256_256_{train,validation}.h5 (repeatable)")
@out_option("dataset dir to write")
@recipe_option()
@click.option("--image-size", type=int, help="resize images to this side (default: keep 256)")
@click.option("--limit", type=int, help="convert only the first N rows of each file (for a try-out)")
@click.option("--seed", type=int, help="split/eval-set seed (default: recipe data.seed)")
@set_option()
def data_fashiongen(h5_files, out: Path, recipe, image_size, limit, seed, overrides) -> None:
    """Convert the public Fashion-Gen HDF5 files into a dataset dir (every pose kept, read lazily).

    \b
    Example:
      fbcompress data fashiongen --h5 fashiongen_256_256_train.h5 \\
          --h5 fashiongen_256_256_validation.h5 --out data/fashiongen
    """
    from fbcompress.data.fashiongen import convert_fashiongen
    from fbcompress.recipes import load_recipe_or_defaults

    r = load_recipe_or_defaults(recipe, overrides)
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
