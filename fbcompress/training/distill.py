"""`fbcompress distill`: the teacher → a 2-layer student with variable sequence length (VSL).

FashionBERT's authors served a 2-layer model because the full one missed online latency. The student here:
* is initialised from the teacher: embeddings, patch encoder, pooler and heads are copied, and student layer k
  is a copy of teacher layer `layer_map[k]` (default: evenly spaced, the TinyBERT map). A narrower student is
  cut out of those layers (fbcompress/modeling/width_pruning.py: the hidden channels, heads and FFN neurons that carry
  most on real training pairs, Minitron-style), and a learned linear map lifts its hidden states to the
  teacher's width for the hidden-state loss (as TinyBERT does), starting as the inverse of the cut;
* learns from the frozen teacher (forward only, no gradients): soft alignment logits (KL at temperature T),
  hard labels, hidden-state MSE under the layer map, last-layer self-attention KL (MiniLM) and embedding MSE,
  each weighted in the recipe; extra same-subcategory negatives per batch are scored by the teacher so the
  student learns the teacher's ranking among near-duplicates, not only the labels;
* trains on length-bucketed batches: each batch holds texts of similar length and is padded only to its own
  longest text. The log reports the padding share against padding every text to the recipe's maximum.
`--no-teacher` trains the same student from the same initialisation on hard labels only (the ablation that
measures what distillation is worth).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig

from fbcompress.core.errors import FbError
from fbcompress.data.batching import LengthBucketedBatches
from fbcompress.data.loader import SplitData
from fbcompress.modeling.model import EncoderOutput, FashionBERT
from fbcompress.modeling.width_pruning import channel_lift, head_size, measure_importance, prune_into
from fbcompress.recipes import DistillSection, QueryEncoderSection, Recipe
from fbcompress.training.pairs import MismatchSampler, pair_rows


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (0-based) for each student layer: the last of each of `student_layers` equal blocks."""
    return [round((k + 1) * teacher_layers / student_layers) - 1 for k in range(student_layers)]


def student_config(teacher: BertConfig, section: DistillSection | QueryEncoderSection, key: str = "distill"
                   ) -> BertConfig:
    """The teacher's config with the student's depth and (optionally narrower) width; `key` names the recipe
    section in messages."""
    config = BertConfig.from_dict(teacher.to_dict())
    config.num_hidden_layers = section.layers
    if section.hidden_size is not None:
        config.hidden_size = section.hidden_size
        # a narrower student keeps whole teacher heads (fbcompress/modeling/width_pruning.py): same head size by default
        size = head_size(teacher)
        if section.num_heads is None and section.hidden_size % size:
            raise FbError(f"{key}.hidden_size {section.hidden_size} must be a multiple of the teacher's head size "
                          f"{size}: a narrower student keeps whole teacher heads")
        config.num_attention_heads = section.num_heads or max(1, section.hidden_size // size)
        config.intermediate_size = section.intermediate_size or 4 * section.hidden_size
    elif section.num_heads is not None or section.intermediate_size is not None:
        raise FbError(f"{key}.num_heads / intermediate_size need {key}.hidden_size (a narrower student)")
    if config.hidden_size % config.num_attention_heads:
        raise FbError(f"student hidden {config.hidden_size} is not divisible by {config.num_attention_heads} heads")
    return config


def student_layer_map(teacher_layers: int, layers: int, chosen: list[int] | None, key: str = "distill") -> list[int]:
    """The recipe's layer map, or evenly spaced teacher layers; refused when it names a layer the teacher lacks."""
    layer_map = list(chosen) if chosen is not None else evenly_spaced_layers(teacher_layers, layers)
    bad = [i for i in layer_map if not 0 <= i < teacher_layers]
    if bad:
        raise FbError(f"{key}.layer_map names teacher layer(s) {bad}; the teacher has layers 0..{teacher_layers - 1}")
    return layer_map


def copy_layers(student: nn.Module, teacher: nn.Module, layer_map: list[int]) -> None:
    """A full-width student: every parameter copied from the teacher, student layer k from teacher layer
    layer_map[k]."""
    teacher_state = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        source = name
        if name.startswith("bert.encoder.layer."):
            index, rest = name[len("bert.encoder.layer."):].split(".", 1)
            source = f"bert.encoder.layer.{layer_map[int(index)]}.{rest}"
        state[name] = teacher_state[source].clone()
    student.load_state_dict(state)


def build_student(
    teacher: FashionBERT, section: DistillSection, batches: Iterable[dict[str, torch.Tensor]] = ()
) -> tuple[FashionBERT, list[int], nn.Module | None]:
    """Student, its layer map, and (for a narrower student) the student→teacher hidden projection.

    A full-width student copies teacher layers; a narrower one is cut out of them (modeling/width_pruning.py),
    which ranks the teacher's channels on `batches` of real training pairs."""
    layer_map = student_layer_map(teacher.config.num_hidden_layers, section.layers, section.layer_map)
    student = FashionBERT(student_config(teacher.config, section))
    if student.config.hidden_size == teacher.config.hidden_size:
        copy_layers(student, teacher, layer_map)
        return student, layer_map, None
    kept = prune_into(student, teacher, layer_map, measure_importance(teacher, batches))
    return student, layer_map, channel_lift(kept, teacher.config.hidden_size)


PRUNING_BATCHES = 8  # batches of matched training pairs that rank the teacher's channels for a narrower student


def pruning_batches(data: SplitData, recipe: Recipe) -> Iterator[dict[str, torch.Tensor]]:
    """The first length-bucketed training batches, as matched pairs: fixed by the seed, so every DDP rank and a
    resumed run cut the same student. Lazy: a full-width student never loads them."""
    batches = LengthBucketedBatches.for_split(data, recipe.train)
    for index in range(PRUNING_BATCHES):
        rows = batches.rows(index)
        yield data.batch(rows, rows)


def soft_logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of temperature-softened distributions, scaled by T² (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t * t


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the real (unpadded) positions only: [B, S, H] tensors, mask [B, S]."""
    weights = mask.to(student.dtype)[..., None]
    return ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp(min=1)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM's attention transfer: KL(teacher ‖ student) per query row, averaged over heads and real rows.

    Attention maps are [B, heads, S, S]; with different head counts the head-averaged maps are compared.
    """
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    eps = 1e-12
    kl = (teacher * (torch.log(teacher + eps) - torch.log(student + eps))).sum(-1)  # [B, heads, S]
    rows = mask.to(kl.dtype)[:, None, :]
    return (kl * rows).sum() / (rows.sum() * kl.shape[1]).clamp(min=1)


def last_layer_attention(model: FashionBERT, out: EncoderOutput, mask: torch.Tensor) -> torch.Tensor:
    """The last encoder layer's attention maps, from its input (the second-to-last of `out.hidden_states`)."""
    assert out.hidden_states is not None
    return model.attention_probs(model.config.num_hidden_layers - 1, out.hidden_states[-2], mask)


class DistillObjective(nn.Module):
    """forward(global batch index) → the distillation terms (unweighted); DDP wraps this module."""

    def __init__(
        self,
        student: FashionBERT,
        teacher: FashionBERT | None,
        projection: nn.Module | None,
        layer_map: list[int],
        data: SplitData,
        recipe: Recipe,
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher  # frozen; None for the no-teacher ablation
        self.projection = projection if projection is not None else nn.Identity()
        self.layer_map = layer_map
        self.data = data
        self.recipe = recipe
        section = recipe.distill
        self.weights = section.weights.model_dump()
        self.batches = LengthBucketedBatches.for_split(data, recipe.train)
        self.sampler = MismatchSampler(data)
        self.padding = {"real": 0, "batch": 0, "fixed": 0}
        if teacher is not None:
            teacher.eval()
            for param in teacher.parameters():
                param.requires_grad_(False)

    def _pairs(self, rows: list[int], rng: random.Random) -> tuple[list[int], list[int], list[int]]:
        images = list(rows)
        texts, labels = pair_rows(self.sampler, rows, self.recipe.train.mismatch_ratio, rng)
        if self.teacher is not None:
            for row in rng.sample(rows, min(self.recipe.distill.extra_hard_pairs, len(rows))):
                images.append(row)
                texts.append(self.sampler.draw(row, rng))
                labels.append(0)
        return images, texts, labels

    def forward(self, global_index: int) -> dict[str, torch.Tensor]:
        from fbcompress.training.loop import seeded_streams

        rng, _ = seeded_streams(self.recipe.train.seed, global_index)
        images, texts, labels = self._pairs(self.batches.rows(global_index), rng)
        device = next(self.student.parameters()).device
        inputs = {k: v.to(device) for k, v in self.data.batch(images, texts).items()}
        target = torch.tensor(labels, device=device)
        self._count_padding(inputs["attention_mask"])
        w = self.weights
        # the last layer's attention maps are recomputed from its input (FashionBERT.attention_probs), so the
        # encoders keep their SDPA kernels: hidden states are all the attention term needs from them
        need_attention = self.teacher is not None and w["attention"] > 0
        need_hidden = self.teacher is not None and (w["hidden"] > 0 or w["embedding"] > 0 or need_attention)
        s = self.student.encode(**inputs, output_hidden_states=need_hidden)
        s_logits = self.student.ita_head(s.pooled).float()
        losses: dict[str, torch.Tensor] = {}
        if w["hard"] > 0 or self.teacher is None:
            losses["hard"] = F.cross_entropy(s_logits, target)
        if self.teacher is None:
            return losses
        full_mask = torch.cat(
            [inputs["attention_mask"], torch.ones(inputs["patches"].shape[:2], dtype=torch.long, device=device)], 1
        )
        with torch.no_grad():
            t = self.teacher.encode(**inputs, output_hidden_states=need_hidden)
            t_logits = self.teacher.ita_head(t.pooled).float()
            if need_attention:
                t_attention = last_layer_attention(self.teacher, t, full_mask)
        if w["soft"] > 0:
            losses["soft"] = soft_logit_loss(s_logits, t_logits, self.recipe.distill.temperature)
        if w["hidden"] > 0:
            terms = [
                masked_mse(self.projection(s.hidden_states[k + 1]), t.hidden_states[m + 1], full_mask)
                for k, m in enumerate(self.layer_map)
            ]
            losses["hidden"] = torch.stack(terms).mean()
        if w["embedding"] > 0:
            losses["embedding"] = masked_mse(self.projection(s.hidden_states[0]), t.hidden_states[0], full_mask)
        if w["attention"] > 0:
            s_attention = last_layer_attention(self.student, s, full_mask)
            losses["attention"] = attention_kl(s_attention.float(), t_attention.float(), full_mask)
        return losses

    def _count_padding(self, mask: torch.Tensor) -> None:
        real = int(mask.sum())
        self.padding["real"] += real
        self.padding["batch"] += mask.numel()
        self.padding["fixed"] += mask.shape[0] * self.data.spec.max_text_len

    def padding_log(self) -> dict[str, Any]:
        p = self.padding
        return {
            "pad_share": round(1 - p["real"] / max(1, p["batch"]), 4),
            "pad_share_fixed_length": round(1 - p["real"] / max(1, p["fixed"]), 4),
        }


def distill(
    recipe: Recipe,
    teacher_dir,
    data_dir,
    out,
    resume: bool,
    force: bool,
    no_teacher: bool = False,
    device: str | None = None,
    stop_after: int | None = None,
) -> dict:
    from fbcompress.core import distributed
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model
    from fbcompress.training.loop import TrainSetup, run_training

    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    ctx = distributed.setup(device)
    try:
        teacher, teacher_ckpt = load_model(teacher_dir, ctx.device)
        dataset = DatasetDir.open(data_dir)
        if teacher_ckpt.meta.get("data_fingerprint") not in (None, dataset.fingerprint):
            print(f"note: {data_dir} is not the data the teacher was trained on", flush=True)
        tokenizer = load_tokenizer(teacher_ckpt.directory)
        spec = teacher.spec
        train_data = SplitData(dataset, "train", tokenizer, spec, recipe.data.cache_images)
        val_data = SplitData(dataset, "val", tokenizer, spec, recipe.data.cache_images)
        torch.manual_seed(recipe.train.seed)
        student, layer_map, projection = build_student(teacher, recipe.distill, pruning_batches(train_data, recipe))
        objective = DistillObjective(student, None if no_teacher else teacher, projection, layer_map, train_data,
                                     recipe)
        section = recipe.distill
        weights = {"hard": 1.0} if no_teacher else section.weights.model_dump()
        setup = TrainSetup(
            kind="student",
            recipe=recipe,
            model=student,
            objective=objective,
            tokenizer=tokenizer,
            dataset=dataset,
            val_data=val_data,
            out=Path(out),
            weighting="sum",
            fixed_weights=weights,
            extra_meta={
                "teacher": str(teacher_dir),
                "teacher_sha256": teacher_ckpt.weights_sha256,
                "layer_map": layer_map,
                "no_teacher": no_teacher,
                "student_layers": student.config.num_hidden_layers,
                "student_hidden": student.config.hidden_size,
            },
            log_extras=objective.padding_log,
            aux_module=projection,
            lr=section.lr or recipe.train.new_params_lr or recipe.train.lr,
            steps=section.steps,
        )
        result = run_training(setup, ctx, resume=resume, force=force, stop_after=stop_after)
        result["padding"] = objective.padding_log()
        return result
    finally:
        distributed.teardown(ctx)

