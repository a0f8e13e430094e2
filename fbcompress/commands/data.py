"""`fbcompress data synth`, `data fashiongen` and `data import`: make a dataset dir."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.group import FbGroup
from fbcompress.commands.options import (
    data_option,
    device_option,
    echo_log,
    out_option,
    progress_wanted,
    recipe_option,
    set_option,
)


@click.group("data", cls=FbGroup)
def data_group() -> None:
    """Make a dataset dir (manifests + images + fixed eval sets) from synthetic data, Fashion-Gen or your catalogue,
    and add patch features to one."""


def _split_settings(recipe, seed: int | None) -> dict:
    """What every producer takes from the recipe's data section: the seed (unless --seed), the split fractions and
    the eval set sizes."""
    from fbcompress.data.dataset_dir import EvalSetSizes

    return {
        "seed": seed if seed is not None else recipe.data.seed,
        "val_fraction": recipe.data.val_fraction,
        "test_fraction": recipe.data.test_fraction,
        "eval_sizes": EvalSetSizes(queries=recipe.data.eval_queries, negatives=recipe.data.eval_negatives,
                                   train_search_queries=recipe.data.search_train_queries),
    }


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
        **_split_settings(r, seed),
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
        **_split_settings(r, seed),
        image_size=image_size,
        limit=limit,
    )
    click.echo(f"wrote {path}")


@data_group.command("import")
@click.option("--products", required=True, type=click.Path(path_type=Path),
              help="product table: .jsonl, .csv or .parquet, one row per product image")
@click.option("--images-root", required=True, type=click.Path(path_type=Path),
              help="folder the table's image paths are relative to")
@out_option("dataset dir to write")
@click.option("--map", "mapping", multiple=True, metavar="COL=FIELD",
              help="read field FIELD (id, title, description, category, subcategory, image, group) from column COL")
@recipe_option()
@click.option("--image-size", type=int, help="resize images to this side (default: recipe data.image_size)")
@click.option("--seed", type=int, help="split/eval-set seed (default: recipe data.seed)")
@click.option("--max-reject-rate", type=float, default=0.05, show_default=True,
              help="fail (writing nothing) when more than this share of rows cannot be used")
@click.option("--queries", type=click.Path(path_type=Path),
              help="search log (.jsonl, .csv, .parquet): query text, product id, weight (clicks, purchases)")
@click.option("--query-map", "query_mapping", multiple=True, metavar="COL=FIELD",
              help="read FIELD (query, product, weight) of the search log from column COL")
@click.option("--workers", type=int, help="image decoding processes (default: one per usable core)")
@set_option()
def data_import(products: Path, images_root: Path, out: Path, mapping, recipe, image_size, seed, max_reject_rate,
                queries, query_mapping, workers, overrides) -> None:
    """Import your own product table and its images: splits by product (or --map COL=group), fixed eval sets.

    Rows that cannot be used (duplicate id, empty text, missing or undecodable image, text that is not UTF-8) are
    listed with the reason in OUT/rejects.jsonl and the import goes on. A killed import, run again with the same
    arguments, resumes from its last complete shard. With --queries, each search-log row goes to its product's
    split (OUT/queries-{train,val,test}.jsonl).

    \b
    Example:
      fbcompress data import --products shop.csv --images-root shop/images --out data/shop \\
          --map sku=id --map name=title --map cat=category --map subcat=subcategory --map photo=image
      fbcompress data import --products shop.parquet --images-root shop/images --out data/shop \\
          --queries clicks.csv --query-map q=query --query-map sku=product --query-map clicks=weight
    """
    from fbcompress.data.importing.importer import ImportOptions, import_catalogue
    from fbcompress.recipes import load_recipe_or_defaults

    r = load_recipe_or_defaults(recipe, overrides)
    summary = import_catalogue(ImportOptions(
        products=products,
        images_root=images_root,
        out=out,
        mapping=list(mapping),
        image_size=image_size if image_size is not None else r.data.image_size,
        **_split_settings(r, seed),
        max_reject_rate=max_reject_rate,
        queries=queries,
        query_mapping=list(query_mapping),
        workers=workers,
        progress=progress_wanted(),
        log=echo_log,
    ))
    click.echo(summary.line())


@data_group.command("features")
@data_option("dataset dir to add patch features to (made by `data synth`, `data fashiongen` or `data import`)")
@click.option("--encoder", "encoder_dir", required=True, type=click.Path(path_type=Path),
              help="local Hugging Face vision backbone dir, e.g. microsoft/resnet-50 saved with save_pretrained")
@click.option("--mode", type=click.Choice(["grid", "crop"]), default="grid", show_default=True,
              help="grid: one pass per image, each cell of the last feature map a patch; crop: each patch alone")
@click.option("--crop-size", type=int, default=224, show_default=True, help="crop mode: each patch resized to this")
@click.option("--batch-size", type=int, default=32, show_default=True, help="images per forward pass")
@recipe_option("recipe whose data.grid sets the patch grid (default: 8x8)")
@device_option(default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
@set_option("--set data.grid=8")
def data_features(data_dir: Path, encoder_dir: Path, mode: str, crop_size: int, batch_size: int, recipe, device: str,
                  overrides) -> None:
    """Add per-patch image features (the paper: ResNet-50, 64 x 2048 per image) to a dataset dir.

    Float16 shards with an index under DIR/features/, referenced from the manifests; the encoder's identity and
    sha256 go into dataset.json, and a model trained on these features refuses those of any other encoder.
    Resumable after a kill; under torchrun each rank encodes its share of the shards.

    \b
    Example:
      fbcompress data features --data data/fashiongen --encoder models/resnet-50
      torchrun --nproc-per-node 8 -m fbcompress data features --data data/fashiongen \\
          --encoder models/resnet-50 --batch-size 128
    """
    from fbcompress.data.features.extract import FeatureOptions, make_features
    from fbcompress.recipes import load_recipe_or_defaults

    r = load_recipe_or_defaults(recipe, overrides)
    summary = make_features(FeatureOptions(
        data=data_dir, encoder=encoder_dir, grid=r.data.grid, mode=mode, crop_size=crop_size, batch_size=batch_size,
        device=None if device == "auto" else device, progress=progress_wanted(), log=echo_log,
    ))
    click.echo(summary.line())
