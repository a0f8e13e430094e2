"""The training machinery shared by `train-teacher` and `distill`.

What makes resume exact: the batch of every step is a pure function of (seed, step, rank): the length-bucketed
sampler (data/batching.py) walks seeded per-epoch orders of the training split, and the masking/mismatch/dropout
random streams are re-seeded from the step. So a resumed run needs only the weights, the optimiser and the scheduler
(all in the checkpoint) to continue exactly where it stopped: N steps + resume N steps equals 2N steps.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from fbcompress.core.distributed import RunContext, barrier
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.loader import SplitData
from fbcompress.evaluation.metrics import classification_metrics, score_pairs
from fbcompress.modeling.checkpoint import META_FILE, STATE_FILE, load_training_state, open_checkpoint, save_checkpoint
from fbcompress.modeling.model import FashionBERT
from fbcompress.recipes import Recipe, without_later_defaults
from fbcompress.runtime.scoring import TorchScorer
from fbcompress.training.adaptive_loss import combine_losses

LOG_FILE = "train-log.jsonl"
PATH_KEYS = ("teacher", "retriever")  # meta entries that may legitimately differ on resume (paths move)
TRAINING_SECTIONS = ("data", "teacher", "train", "distill")  # what a checkpoint's weights depend on
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm", ".norm", "mlm_transform.2")


def seeded_streams(seed: int, global_index: int) -> tuple[random.Random, torch.Generator]:
    """Per-batch random streams (python for sampling choices, torch for masking) and the dropout seed."""
    mixed = (seed * 1_000_003 + global_index) % (2**63)
    torch.manual_seed(mixed)
    return random.Random(mixed), torch.Generator().manual_seed(mixed)


@dataclass
class TrainSetup:
    """Everything a stage hands to the trainer."""

    kind: str  # "teacher" | "student"
    recipe: Recipe
    model: nn.Module  # what is saved: a FashionBERT, or a DualTower for train-retriever
    objective: nn.Module  # forward(global_index) -> dict of task losses; holds `model`
    tokenizer: PreTrainedTokenizerBase
    dataset: DatasetDir
    val_data: SplitData
    out: Path
    weighting: str  # "adaptive" | "fixed" | "sum"
    fixed_weights: dict[str, float] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)  # identity: must match on resume
    info_meta: dict[str, Any] = field(default_factory=dict)  # recorded, not compared
    log_extras: Callable[[], dict[str, Any]] | None = None
    aux_module: nn.Module | None = None  # trained beside the model but not part of it (e.g. a projection)
    lr: float | None = None  # overrides recipe.train.lr / new_params_lr for every group
    new_lr: float | None = None  # overrides the new parameters' (and the auxiliary module's) lr
    steps: int | None = None  # overrides recipe.train.steps
    new_prefixes: tuple[str, ...] | None = None  # parameters trained at the new lr (default: all outside `bert.`)
    sections: tuple[str, ...] = TRAINING_SECTIONS  # the recipe sections the weights depend on (resume compares them)
    validator: Callable[[nn.Module, TrainSetup, RunContext], dict[str, float]] | None = None  # default: `validate`


def param_groups(model: nn.Module, lr: float, new_lr: float, weight_decay: float,
                 new_prefixes: tuple[str, ...] | None = None) -> list[dict]:
    """Pretrained parts at `lr`, freshly added ones at `new_lr`; no decay on biases and norms. New: the parameters
    named with one of `new_prefixes`, by default everything outside the backbone (a teacher's patch encoder and
    heads)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_new = name.startswith(new_prefixes) if new_prefixes is not None else not name.startswith("bert.")
        decay = not any(tag in name for tag in NO_DECAY)
        groups.setdefault((is_new, decay), []).append(param)
    return [
        {"params": params, "lr": new_lr if is_new else lr, "weight_decay": weight_decay if decay else 0.0}
        for (is_new, decay), params in groups.items()
    ]


def _recipe_fingerprint(recipe: Recipe, sections: tuple[str, ...] = TRAINING_SECTIONS) -> dict:
    """The training sections of the recipe as JSON would store them (tuples become lists), less the settings
    that may change on resume. Export, quantize, check and quickstart settings are left out: changing a release
    tolerance must not make a half-trained checkpoint unusable."""
    full = without_later_defaults(recipe.model_dump(mode="json"))
    dump = {name: full[name] for name in sections}
    dump["train"].pop("eval_every", None)
    dump["train"].pop("save_every", None)
    return dump


def validate(model: FashionBERT, setup: TrainSetup, ctx: RunContext) -> dict[str, float]:
    pairs = setup.dataset.eval_rows("pairs", "val")[: setup.recipe.train.val_pairs]
    scorer = TorchScorer(model, setup.out, "training", str(ctx.device))
    scores = score_pairs(scorer, setup.val_data, pairs, batch_size=64)
    metrics = classification_metrics(np.array([p["label"] for p in pairs]), scores)
    model.train()
    return {f"val_{k}": v for k, v in metrics.items()}


def micro_batch_index(step: int, micro: int, grad_accum: int, world_size: int, rank: int) -> int:
    """The global index of one rank's micro-batch: the streams and the sampler's slice are functions of it alone.
    Ranks interleave (rank r takes every world_size-th index), so the ranks of one step never share a batch and
    a run on N ranks sees the batches a 1-rank run with grad_accum x N would see."""
    return (step * grad_accum + micro) * world_size + rank


@dataclass
class ResumePoint:
    """Where a run starts: from scratch (step 0, no state), from a resumable checkpoint's step and state, or
    nowhere because the checkpoint at `out` already finished (`finished_meta` is its meta)."""

    start_step: int = 0
    state: dict[str, Any] | None = None
    finished_meta: dict[str, Any] | None = None


def resume_point(setup: TrainSetup, resume: bool, force: bool) -> ResumePoint:
    """Refuse to overwrite a checkpoint without --resume/--force, and resume only what these settings would have
    produced: the same training recipe sections, the same data, the same identity entries (`extra_meta`)."""
    out = setup.out
    existing = (out / META_FILE).is_file()
    if existing and not resume and not force:
        raise FbError(f"{out} already holds a checkpoint: pass --resume to continue it or --force to start over")
    if not (existing and resume):
        return ResumePoint()
    ckpt = open_checkpoint(out)
    stored = ckpt.meta.get("recipe_fingerprint")
    # only the training sections count (older checkpoints stored the whole recipe)
    if not isinstance(stored, dict) or {k: stored.get(k) for k in setup.sections} != _recipe_fingerprint(
            setup.recipe, setup.sections):
        raise FbError(f"{out} was trained with another recipe; use another --out or --force")
    if ckpt.meta.get("data_fingerprint") != setup.dataset.fingerprint:
        raise FbError(f"{out} was trained on other data (fingerprint differs); use another --out or --force")
    changed = [k for k, v in setup.extra_meta.items() if k not in PATH_KEYS and ckpt.meta.get(k) != v]
    if changed:
        raise FbError(f"{out} was made with another {changed[0]}; use another --out or --force")
    if ckpt.meta.get("finished"):
        return ResumePoint(int(ckpt.meta.get("step", 0)), None, ckpt.meta)
    if (out / STATE_FILE).is_file():
        state = load_training_state(out)
        return ResumePoint(int(state["step"]), state)
    return ResumePoint()


@dataclass
class Optimisation:
    """What steps the weights: AdamW over the model's (and an auxiliary module's) parameter groups, the linear
    warm-up schedule, and mixed precision on CUDA (bf16 where supported, else fp16 with a loss scaler)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    trained: list[nn.Parameter]
    aux: nn.Module | None
    use_amp: bool
    amp_dtype: torch.dtype

    @classmethod
    def build(cls, setup: TrainSetup, model: FashionBERT, ctx: RunContext, steps: int) -> Optimisation:
        train = setup.recipe.train
        lr = setup.lr or train.lr
        new_lr = setup.new_lr or setup.lr or train.new_params_lr or train.lr
        groups = param_groups(model, lr, new_lr, train.weight_decay, setup.new_prefixes)
        aux = setup.aux_module.to(ctx.device) if setup.aux_module is not None else None
        if aux is not None:
            groups.append({"params": list(aux.parameters()), "lr": new_lr, "weight_decay": train.weight_decay})
        trained = [p for group in groups for p in group["params"]]
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=_fused_adamw(ctx.device, trained))
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(train.warmup_ratio * steps), steps)
        use_amp = train.amp and ctx.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(optimizer, scheduler, scaler, trained, aux, use_amp, amp_dtype)

    def restore(self, model: FashionBERT, out: Path, state: dict, device: torch.device) -> None:
        """The weights, optimiser, schedule (and auxiliary module) of a resumed checkpoint."""
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.aux is not None:
            self.aux.load_state_dict(state["aux"])

    def training_state(self, step: int) -> dict[str, Any]:
        state = {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.aux is not None:
            state["aux"] = self.aux.state_dict()
        return state


def checkpoint_meta(setup: TrainSetup, ctx: RunContext) -> dict[str, Any]:
    """The provenance every checkpoint of this run records (fbcompress.json), and resume compares."""
    recipe = setup.recipe
    return {
        "kind": setup.kind,
        "produced_by": f"fbcompress {' '.join(sys.argv[1:2]) or setup.kind}",
        "recipe": recipe.model_dump(mode="json"),
        "recipe_fingerprint": _recipe_fingerprint(recipe, setup.sections),
        "data_fingerprint": setup.dataset.fingerprint,
        "data_dir": str(setup.dataset.root),
        "synthetic_data": bool(setup.dataset.meta.get("synthetic", False)),
        "world_size": ctx.world_size,
        **setup.extra_meta,
        **setup.info_meta,
    }


@dataclass
class StepResult:
    losses: dict[str, float]  # each task's loss, averaged over the micro-batches
    weights: dict[str, float]  # the task weights of the last micro-batch
    grad_norm: float


def train_step(objective: nn.Module, opt: Optimisation, setup: TrainSetup, ctx: RunContext, step: int) -> StepResult:
    """One optimiser step over `grad_accum` micro-batches, each this rank's slice of the global batch."""
    train = setup.recipe.train
    opt.optimizer.zero_grad(set_to_none=True)
    step_losses: dict[str, float] = {}
    step_weights: dict[str, float] = {}
    for micro in range(train.grad_accum):
        global_index = micro_batch_index(step, micro, train.grad_accum, ctx.world_size, ctx.rank)
        with torch.autocast(device_type=ctx.device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
            losses = objective(global_index)
        total, weights = _combine(losses, setup)
        opt.scaler.scale(total / train.grad_accum).backward()
        for name, value in losses.items():
            step_losses[name] = step_losses.get(name, 0.0) + float(value.detach()) / train.grad_accum
        step_weights = weights
    opt.scaler.unscale_(opt.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(opt.trained, train.clip_norm))
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    return StepResult(step_losses, step_weights, grad_norm)


def log_record(done: int, result: StepResult, opt: Optimisation, setup: TrainSetup, started: float) -> dict:
    """One train-log.jsonl line: the weighted loss, each task's loss and weight, lr, gradient norm, time."""
    record: dict[str, Any] = {
        "step": done,
        "loss": sum(result.weights.get(k, 1.0) * v for k, v in result.losses.items()),
        "losses": result.losses,
        "weights": result.weights,
        "lr": opt.scheduler.get_last_lr()[0],
        "grad_norm": result.grad_norm,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    if setup.log_extras is not None:
        record.update(setup.log_extras())
    return record


def run_training(
    setup: TrainSetup, ctx: RunContext, resume: bool, force: bool, stop_after: int | None = None
) -> dict[str, Any]:
    """Train to `recipe.train.steps` (or `stop_after` more steps, then save a resumable checkpoint): resume
    check, optimisation set-up, the step loop with its log, validation and saves."""
    train = setup.recipe.train
    steps = setup.steps or train.steps
    out = setup.out
    model = setup.model.to(ctx.device)
    point = resume_point(setup, resume, force)
    if point.finished_meta is not None:
        if ctx.is_main:
            print(f"{out}: already trained to step {point.start_step}; nothing to do", file=sys.stderr)
        return point.finished_meta
    start_step, state = point.start_step, point.state
    opt = Optimisation.build(setup, model, ctx, steps)
    if state is not None:
        opt.restore(model, out, state, ctx.device)
    objective = setup.objective.to(ctx.device)
    if ctx.distributed:
        objective = DistributedDataParallel(objective, find_unused_parameters=True)
    log_path = out / LOG_FILE
    if ctx.is_main:
        _truncate_log(log_path, start_step if state is not None else 0)
    meta_base = checkpoint_meta(setup, ctx)
    metrics: dict[str, float] = {}

    def save(step: int, finished: bool) -> None:
        if ctx.is_main:
            meta = {**meta_base, "step": step, "steps_total": steps, "finished": finished, "metrics": metrics}
            save_checkpoint(out, model, setup.tokenizer, meta, None if finished else opt.training_state(step))

    model.train()
    started = time.perf_counter()
    bar = tqdm(total=steps, initial=start_step, desc=f"train {setup.kind}", disable=not ctx.is_main,
               dynamic_ncols=True, mininterval=1.0)
    try:
        for step in range(start_step, steps):
            result = train_step(objective, opt, setup, ctx, step)
            done = step + 1
            record = log_record(done, result, opt, setup, started)
            if done % train.eval_every == 0 or done == steps:
                if ctx.is_main:
                    metrics = (setup.validator or validate)(model, setup, ctx)
                    model.train()
                    record.update(metrics)
                barrier(ctx)
            if ctx.is_main:
                if done % train.log_every == 0 or done == steps or metrics.keys() & record.keys():
                    out.mkdir(parents=True, exist_ok=True)  # only once a step has succeeded: bad input leaves nothing
                    with open(log_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                postfix = {k: f"{v:.3f}" for k, v in result.losses.items()}
                headline = next((k for k in metrics if k.startswith("val_")), None)  # validators list it first
                if headline is not None:
                    postfix[headline] = f"{metrics[headline]:.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            stopping = stop_after is not None and done - start_step >= stop_after and done != steps
            if (done % train.save_every == 0 or stopping) and done != steps:
                save(done, finished=False)
                barrier(ctx)
            if stopping:
                return {**meta_base, "step": done, "metrics": metrics, "finished": False}
    finally:
        bar.close()  # a newline after the bar, so an error message gets a line of its own
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    save(steps, finished=True)
    barrier(ctx)
    return {**meta_base, "step": steps, "metrics": metrics}


def _fused_adamw(device: torch.device, params: list[nn.Parameter]) -> bool:
    """One fused kernel over all parameters instead of ~10 small ops per tensor: on a 2-core CPU the teacher's
    optimizer step fell from 0.16 to 0.05 s of a 1.4 s step. Fused AdamW takes float CPU and CUDA tensors."""
    return device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)


def _combine(losses: dict[str, torch.Tensor], setup: TrainSetup) -> tuple[torch.Tensor, dict[str, float]]:
    if setup.weighting == "sum":
        total = sum(setup.fixed_weights.get(k, 1.0) * v for k, v in losses.items())
        return total, {k: setup.fixed_weights.get(k, 1.0) for k in losses}
    return combine_losses(losses, setup.weighting, setup.fixed_weights)


def _truncate_log(path: Path, keep_until_step: int) -> None:
    """On resume, drop log lines past the checkpoint's step (they will be produced again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= keep_until_step:
                kept.append(line)
        except json.JSONDecodeError:
            break
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
