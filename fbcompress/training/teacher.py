"""The FashionBERT teacher: how it is built from a recipe and what it learns from (MLM + MPM + ITA).

Which losses see mismatched pairs, and why:
* ITA sees every pair, matched and mismatched: telling them apart is its whole job.
* MLM and MPM are computed on matched pairs only. For a mismatched pair the other modality describes another
  product, so predicting a masked word from the image (or a masked patch from the text) would teach the model
  to reconstruct from wrong evidence. (FashionBERT masks both kinds of pair the same way, so the presence of a
  mask never leaks the label.)
* ITC (optional, `train.tasks` includes "itc"; not in the paper) sees each row's own text and image: an
  in-batch contrastive loss between the mean word embedding of a text and the mean projected patch of an image,
  at the embedding layer. Measured on the quickstart catalogue, ITA alone sits at chance (loss 0.693) for the
  whole CPU budget: a single-stream encoder has to discover text-image binding through attention, a second-order
  signal. ITC is a first-order signal that puts "green" and green patches close in embedding space, which the
  pretrained attention then exploits; it costs one embedding lookup per text.
Mismatched texts come from another product of the same subcategory (the paper's rule), which makes the
negatives hard: the model has to read colours, patterns and small details, not the garment type.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

from fbcompress.core.errors import FbError
from fbcompress.data.batching import LengthBucketedBatches
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.features.store import features_meta
from fbcompress.data.loader import SplitData
from fbcompress.modeling.backbone import load_backbone_config, resolve_backbone_dir
from fbcompress.modeling.model import FashionBERT, PatchSpec, build_config
from fbcompress.recipes import Recipe
from fbcompress.training.masking import mask_patches, whole_word_mask
from fbcompress.training.pairs import MismatchSampler, pair_rows


def patch_spec_from_recipe(recipe: Recipe, dataset: DatasetDir | None = None) -> PatchSpec:
    """The image tokens a new teacher reads. Features: their size and their encoder's sha256 come from the
    dataset's feature store (`data features`), so the model refuses features of any other encoder later; a dataset
    without a store must hold one .npy per record and the recipe must give teacher.feature_dim. A pixel recipe on a
    dataset that has a feature store is refused: someone made the features for this model."""
    data, teacher = recipe.data, recipe.teacher
    encoder: dict = {}
    if teacher.patch_encoder == "features":
        entry = features_meta(dataset.meta) if dataset is not None else None
        if entry is not None:
            patch_dim, encoder = int(entry["feature_dim"]), entry["encoder"]
            if teacher.feature_dim not in (None, patch_dim):
                raise FbError(f"teacher.feature_dim is {teacher.feature_dim} but the features of {dataset.root} "
                              f"have {patch_dim} values per patch (drop the setting: the size comes from the data)")
            if entry["num_patches"] != data.num_patches:
                raise FbError(f"the features of {dataset.root} have {entry['num_patches']} patches per image, the "
                              f"recipe's grid {data.grid} makes {data.num_patches}")
        elif teacher.feature_dim is not None:
            patch_dim = teacher.feature_dim
        else:
            where = f"{dataset.root} has" if dataset is not None else "the data has"
            raise FbError(f"teacher.patch_encoder is 'features' but {where} no patch features: make them with "
                          "`fbcompress data features --data DIR --encoder ENCODER_DIR`")
    else:
        entry = features_meta(dataset.meta) if dataset is not None else None
        if entry is not None:  # the paper's setting was prepared; training pixels on it is a recipe left unset
            raise FbError(f"{dataset.root} has patch features of {entry['encoder'].get('name')} but the recipe reads "
                          "pixels (teacher.patch_encoder: pixels): set teacher.patch_encoder=features, or train "
                          "pixels on a copy of the dataset made before `fbcompress data features`")
        patch_dim = 3 * data.patch_pixels**2
    return PatchSpec(
        patch_encoder=teacher.patch_encoder,
        patch_dim=patch_dim,
        num_patches=data.num_patches,
        image_size=data.image_size,
        grid=data.grid,
        max_text_len=data.max_text_len,
        feature_encoder=encoder.get("sha256"),
        feature_mode=encoder.get("mode"),
        feature_input_size=encoder.get("input_size"),
    )


def build_teacher(recipe: Recipe, vocab_size: int, spec: PatchSpec | None = None) -> FashionBERT:
    """Pretrained backbone weights where the recipe names one, else random init from the recipe's sizes; `spec`:
    the image tokens (default: the recipe's, `patch_spec_from_recipe`)."""
    t = recipe.teacher
    backbone_dir = resolve_backbone_dir(t.backbone)
    spec = spec if spec is not None else patch_spec_from_recipe(recipe)
    if backbone_dir is None:
        backbone_config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            intermediate_size=t.intermediate_size,
            max_position_embeddings=max(64, spec.max_text_len),
            type_vocab_size=2,
        )
    else:
        backbone_config = load_backbone_config(backbone_dir)
    backbone_config.hidden_dropout_prob = t.dropout
    backbone_config.attention_probs_dropout_prob = t.dropout
    if spec.max_text_len > backbone_config.max_position_embeddings:
        raise FbError(
            f"data.max_text_len {spec.max_text_len} exceeds the backbone's "
            f"{backbone_config.max_position_embeddings} positions"
        )
    if backbone_config.type_vocab_size < 2:
        raise FbError("the backbone has a single segment embedding; FashionBERT needs two (text, image)")
    model = FashionBERT(build_config(backbone_config, spec))
    if backbone_dir is not None:
        pretrained = BertModel.from_pretrained(str(backbone_dir), add_pooling_layer=True)
        missing, unexpected = model.bert.load_state_dict(pretrained.state_dict(), strict=False)
        if unexpected or [m for m in missing if not m.startswith("pooler")]:
            raise FbError(f"backbone {backbone_dir} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if t.pooler_init == "identity":
        identity_pooler(model)
    return model


def identity_pooler(model: FashionBERT) -> None:
    """Start the pooler as tanh([CLS]) so that the alignment head's gradient reaches the encoder at full scale.

    Why: all-MiniLM-L6-v2 ships a pooler that was never trained (bias exactly 0, weight a random matrix of std
    0.009; sentence-transformers pool by mean). The alignment loss reaches the encoder only through that matrix,
    shrunk about 5x (its rms gain is 0.18), and the language and patch tasks share the same update: the
    alignment task stalled at chance for 491-622 of the quickstart's steps in four runs (the step at which the
    20-step mean of its loss fell below 0.6). Started as the identity, it left chance at steps 366, 515 and 493
    in three runs: earlier on average (458 against 586), but two of the three are near the others' range, so the
    evidence is weak. None of the other changes tried (batch 8, easy negatives only, twice the lr, 4x the
    alignment weight) left chance within the 319-922 steps they ran.
    Measured in bench/results/amd-epyc-2c-2026-11-29-teacher-plateau.
    """
    with torch.no_grad():
        dense = model.bert.pooler.dense
        dense.weight.copy_(torch.eye(dense.out_features, dense.in_features))
        dense.bias.zero_()


@dataclass
class PairBatch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    text_rows: list[int]
    image_rows: list[int]


def make_pair_batch(
    data: SplitData, sampler: MismatchSampler, rows: list[int], mismatch_ratio: float, rng: random.Random
) -> PairBatch:
    text_rows, labels = pair_rows(sampler, rows, mismatch_ratio, rng)
    return PairBatch(data.batch(rows, text_rows), torch.tensor(labels), text_rows, list(rows))


def pretraining_losses(
    model: FashionBERT,
    batch: PairBatch,
    data: SplitData,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The three FashionBERT task losses for one batch (a task with no target this batch is left out)."""
    train = recipe.train
    inputs = batch.inputs
    tasks = set(train.tasks)
    ids, labels_mlm = whole_word_mask(
        inputs["input_ids"],
        [data.token_strings[i] for i in batch.text_rows],
        train.mlm_probability,
        int(tokenizer.mask_token_id),
        len(tokenizer),
        generator,
        all_occurrences=train.mlm_all_occurrences,
    )
    patches, patch_mask = mask_patches(inputs["patches"], train.mpm_probability, generator)
    ids, labels_mlm = ids.to(device), labels_mlm.to(device)
    original_patches = inputs["patches"].to(device)
    patch_mask = patch_mask.to(device)
    match = batch.labels.to(device)
    out = model.encode(
        ids, inputs["attention_mask"].to(device), inputs["token_type_ids"].to(device), patches.to(device)
    )
    losses = {}
    if "ita" in tasks:
        losses["ita"] = F.cross_entropy(model.ita_head(out.pooled).float(), match)
    matched = match == 1
    mlm_where = (labels_mlm != -100) & matched[:, None]
    if "mlm" in tasks and mlm_where.any():
        positions = mlm_where.nonzero()
        logits = model.mlm_logits(out.sequence, positions).float()
        losses["mlm"] = F.cross_entropy(logits, labels_mlm[mlm_where])
    mpm_where = patch_mask & matched[:, None]
    if "mpm" in tasks and mpm_where.any():
        positions = mpm_where.nonzero()
        predicted = F.log_softmax(model.mpm_logits(out.sequence, ids.shape[1], positions).float(), dim=-1)
        target = F.softmax(original_patches[mpm_where].float(), dim=-1)
        losses["mpm"] = F.kl_div(predicted, target, reduction="batchmean")
    if "itc" in tasks and len(batch.image_rows) > 1:
        own = data.batch(batch.image_rows, batch.image_rows)
        losses["itc"] = embedding_contrastive_loss(
            model, own["input_ids"].to(device), own["attention_mask"].to(device), original_patches,
            train.itc_temperature,
        )
    return losses


def embedding_contrastive_loss(
    model: FashionBERT, input_ids: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor, tau: float
) -> torch.Tensor:
    """Symmetric in-batch InfoNCE between mean word embeddings (row i's text) and mean patch projections."""
    mask = attention_mask.to(patches.dtype)[..., None]
    text = (model.bert.embeddings.word_embeddings(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
    image = model.patch_proj(patches).mean(1)
    logits = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T / tau
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target))


class TeacherObjective(torch.nn.Module):
    """forward(global batch index) → the task losses; a Module so DistributedDataParallel can wrap it."""

    def __init__(self, model: FashionBERT, data: SplitData, tokenizer: PreTrainedTokenizerBase, recipe: Recipe):
        super().__init__()
        self.model = model
        self.data = data
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.order = LengthBucketedBatches.for_split(data, recipe.train)
        self.sampler = MismatchSampler(data, recipe.train.hard_negative_share)

    def forward(self, global_index: int) -> dict[str, torch.Tensor]:
        from fbcompress.training.loop import seeded_streams

        rng, generator = seeded_streams(self.recipe.train.seed, global_index)
        rows = self.order.rows(global_index)
        batch = make_pair_batch(self.data, self.sampler, rows, self.recipe.train.mismatch_ratio, rng)
        device = next(self.model.parameters()).device
        return pretraining_losses(self.model, batch, self.data, self.tokenizer, self.recipe, generator, device)


def train_teacher(
    recipe: Recipe,
    data_dir,
    out,
    resume: bool,
    force: bool,
    device: str | None = None,
    stop_after: int | None = None,
) -> dict:
    """`fbcompress train-teacher`: build (or resume) the teacher and train it with the recipe."""
    from pathlib import Path

    from fbcompress.core import distributed
    from fbcompress.modeling.backbone import load_tokenizer, tokenizer_dir_for
    from fbcompress.training.loop import TrainSetup, run_training

    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    ctx = distributed.setup(device)
    try:
        dataset = DatasetDir.open(data_dir)
        tokenizer = load_tokenizer(tokenizer_dir_for(recipe.teacher.backbone))
        spec = patch_spec_from_recipe(recipe, dataset)
        cache = recipe.data.cache_images
        train_data = SplitData(dataset, "train", tokenizer, spec, cache)
        val_data = SplitData(dataset, "val", tokenizer, spec, cache)
        torch.manual_seed(recipe.train.seed)
        model = build_teacher(recipe, len(tokenizer), spec)
        fresh_start = force or not (Path(out) / "fbcompress.json").is_file()
        if recipe.train.patch_warmup_steps and fresh_start and recipe.teacher.patch_encoder == "pixels":
            from fbcompress.training.patch_warmup import warm_start_patch_encoder

            special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
            curve = warm_start_patch_encoder(
                model.to(ctx.device), train_data, special, recipe.train.patch_warmup_steps, seed=recipe.train.seed,
                progress=ctx.is_main,
            )
            warmup_meta = {"patch_warmup_loss": [round(curve[0], 4), round(curve[-1], 4)]}
        else:
            warmup_meta = {}
        setup = TrainSetup(
            kind="teacher",
            recipe=recipe,
            model=model,
            objective=TeacherObjective(model, train_data, tokenizer, recipe),
            tokenizer=tokenizer,
            dataset=dataset,
            val_data=val_data,
            out=Path(out),
            weighting=recipe.train.loss_weighting,
            fixed_weights=recipe.train.fixed_weights.model_dump(),
            extra_meta={"backbone": recipe.teacher.backbone},
            info_meta=warmup_meta,
        )
        return run_training(setup, ctx, resume=resume, force=force, stop_after=stop_after)
    finally:
        distributed.teardown(ctx)
