"""DDP data split and gradient agreement: what each rank trains on, and that the ranks stay one model.

There is no separate slicing function: rank r of W takes global batch `(step · grad_accum + micro) · W + r` of the
length-bucketed sampler (the one line in `train.run_training`), and `LengthBucketedBatches.rows(g)` maps that to
rows. The first test drives `run_training` itself with a fake RunContext per rank; the second is a real 2-process
gloo run. Each test names, in its docstring, the one-line break it is there to catch; each was run against a
scratch copy with that break applied and failed there.
"""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch
from rank_helpers import run_ranks
from torch import nn

import fbcompress.training.loop as train_module
from fbcompress.core.distributed import RunContext
from fbcompress.data.batching import LengthBucketedBatches
from fbcompress.training.loop import TrainSetup, run_training


class _Recorder(nn.Module):
    """An objective that records which global batch indices it is asked for."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.asked: list[int] = []

    def forward(self, global_index: int) -> dict[str, torch.Tensor]:
        self.asked.append(int(global_index))
        return {"x": (self.weight * 0.5).sum()}


def _indices_per_rank(tmp_path, monkeypatch, world_size: int, grad_accum: int, steps: int) -> list[list[int]]:
    from fbcompress.recipes import load_recipe

    # one process plays every rank: no process group, so DDP, barriers, validation and saving are stubbed
    monkeypatch.setattr(train_module, "DistributedDataParallel", lambda module, **_: module)
    monkeypatch.setattr(train_module, "barrier", lambda ctx: None)
    monkeypatch.setattr(train_module, "validate", lambda model, setup, ctx: {})
    monkeypatch.setattr(train_module, "save_checkpoint", lambda *args, **kwargs: None)
    recipe = load_recipe("smoke", {"train": {"grad_accum": grad_accum, "steps": steps}})
    asked = []
    for rank in range(world_size):
        objective = _Recorder()
        out = tmp_path / f"w{world_size}a{grad_accum}r{rank}"
        setup = TrainSetup(kind="teacher", recipe=recipe, model=objective, objective=objective, tokenizer=None,
                           dataset=SimpleNamespace(fingerprint="f", root=out, meta={}), val_data=None, out=out,
                           weighting="sum")
        run_training(setup, RunContext(rank, world_size, rank, torch.device("cpu")), resume=False, force=False)
        assert len(objective.asked) == steps * grad_accum, "one forward per micro-batch per step"
        asked.append(objective.asked)
    return asked


@pytest.mark.parametrize("world_size, grad_accum", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_each_step_splits_one_global_batch_across_ranks(tmp_path, monkeypatch, world_size, grad_accum):
    """Every step, the ranks together take one contiguous block of the sampler's global batches, each rank its own
    ones, so over a run every global batch is trained on exactly once and no two ranks share one.
    Catches, in `global_index = (step * train.grad_accum + micro) * ctx.world_size + ctx.rank`: dropping the rank
    (`... * ctx.world_size`: every rank trains on the same batch), dropping the world size
    (`(step * train.grad_accum + micro) + ctx.rank`: rank 1's batch is rank 0's next one), and dropping grad_accum
    (`(step + micro) * ...`: micro-batches repeat across steps)."""
    steps = 3
    asked = _indices_per_rank(tmp_path, monkeypatch, world_size, grad_accum, steps)
    block = world_size * grad_accum
    for step in range(steps):
        taken = [g for rank in asked for g in rank[step * grad_accum : (step + 1) * grad_accum]]
        assert sorted(taken) == list(range(step * block, (step + 1) * block)), (
            f"step {step}: the ranks took global batches {taken}, not the block {step * block}..{(step + 1) * block}")
    everything = [g for rank in asked for g in rank]
    assert sorted(everything) == list(range(steps * block)), "a global batch trained twice or skipped"


def test_ranks_see_disjoint_rows_that_cover_each_epoch(tmp_path, monkeypatch):
    """The index split composed with the sampler: over one epoch the 2 ranks' rows are disjoint and together every
    training row once (last partial batch included). Catches the rank dropped from the global index (the ranks'
    rows then coincide) and a sampler that loses rows (the partial batch skipped)."""
    lengths = [4 + (i * 7) % 29 for i in range(84)]  # 84 rows, batch 8: 11 batches, the last of 4 rows
    sampler = LengthBucketedBatches(lengths, batch_size=8, bucket_batches=32, seed=0)
    assert sampler.per_epoch == 11, "ten full batches and the partial one of 4"
    # 6 steps × 2 ranks = 12 global batches: the first epoch and the first batch of the next
    asked = _indices_per_rank(tmp_path, monkeypatch, world_size=2, grad_accum=1, steps=6)
    first_epoch = [[sampler.rows(g) for g in rank if g < sampler.per_epoch] for rank in asked]
    rows = [{row for batch in rank for row in batch} for rank in first_epoch]
    assert not rows[0] & rows[1], f"both ranks trained on rows {sorted(rows[0] & rows[1])}"
    assert sorted(row for rank in first_epoch for batch in rank for row in batch) == list(range(84))


# Runs on each rank (started as torchrun would): the real `train-teacher` CLI, with spies on what each rank trains
# on, its gradients after DDP's all-reduce (read where run_training clips them) and its final weights.
DRIVER = textwrap.dedent('''
    import os
    import sys

    import torch

    import fbcompress.training.teacher as teacher_module
    import fbcompress.training.loop as train_module
    from fbcompress.commands.cli import main

    record_dir, data, out = sys.argv[1:4]
    calls, grads = [], []

    real_forward = teacher_module.TeacherObjective.forward
    def forward(self, global_index):
        calls.append({"global_index": int(global_index)})
        return real_forward(self, global_index)
    teacher_module.TeacherObjective.forward = forward

    real_make = teacher_module.make_pair_batch
    def make_pair_batch(data, sampler, rows, ratio, rng):
        calls[-1]["rows"] = [int(row) for row in rows]
        return real_make(data, sampler, rows, ratio, rng)
    teacher_module.make_pair_batch = make_pair_batch

    real_clip = torch.nn.utils.clip_grad_norm_
    def clip(params, *args, **kwargs):
        params = list(params)
        grads.append([None if p.grad is None else p.grad.detach().clone() for p in params])
        return real_clip(params, *args, **kwargs)
    torch.nn.utils.clip_grad_norm_ = clip

    real_run = train_module.run_training
    def run_training(setup, ctx, *args, **kwargs):
        result = real_run(setup, ctx, *args, **kwargs)
        state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
        torch.save({"rank": ctx.rank, "world_size": ctx.world_size, "calls": calls, "grads": grads,
                    "params": state}, os.path.join(record_dir, f"rank{os.environ['RANK']}.pt"))
        return result
    train_module.run_training = run_training

    main(["train-teacher", "-r", "smoke", "--data", data, "--out", out, "--device", "cpu",
          "--set", "train.steps=2", "--set", "train.grad_accum=2", "--set", "train.eval_every=100"],
         standalone_mode=False)
''')


@pytest.mark.slow
def test_two_process_gloo_ranks_split_rows_and_stay_identical(tiny_data, tmp_path):
    """A real 2-process run (torchrun's environment, gloo, CPU, 2 steps of 2 micro-batches): the ranks train on
    disjoint rows that are exactly the sampler's global batches of each step, their gradients agree after every
    step's all-reduce, and both end with identical weights. (test_training.py's DDP test checks the checkpoint and
    log; this one checks the data split and the synchronisation.)
    Catches: the DDP wrapper skipped (`if ctx.distributed:` → `if False:` in run_training: each rank then steps on
    its own gradient and the weights drift apart), the rank dropped from the global index (both ranks see the same
    rows), and `setup()` reading the wrong rank (`rank = int(os.environ.get("RANK", "0"))` → `rank = 0`)."""
    record = tmp_path / "record"
    record.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    # the two workers as torchrun starts them (its environment variables), without the launcher's own start-up
    run_ranks([str(driver), str(record), str(tiny_data), str(tmp_path / "ddp")])
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)

    # what each rank trained on: its own global batches, 2 per step, which together make the step's block
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer, tokenizer_dir_for
    from fbcompress.recipes import load_recipe
    from fbcompress.training.teacher import patch_spec_from_recipe

    recipe = load_recipe("smoke")
    data = SplitData(DatasetDir.open(tiny_data), "train", load_tokenizer(tokenizer_dir_for(recipe.teacher.backbone)),
                     patch_spec_from_recipe(recipe))
    sampler = LengthBucketedBatches.for_split(data, recipe.train)
    assert sampler.per_epoch > 8, "the 8 global batches of the run lie in one epoch"
    for step in range(2):
        taken = [c["global_index"] for r in ranks for c in r["calls"][2 * step : 2 * step + 2]]
        assert sorted(taken) == list(range(4 * step, 4 * step + 4)), f"step {step}: global batches {taken}"
    for r in ranks:
        assert len(r["calls"]) == 4 and all(c["rows"] == sampler.rows(c["global_index"]) for c in r["calls"])
    seen = [{row for c in r["calls"] for row in c["rows"]} for r in ranks]
    assert not seen[0] & seen[1], f"both ranks trained on rows {sorted(seen[0] & seen[1])}"
    every = [row for r in ranks for c in r["calls"] for row in c["rows"]]
    assert len(every) == len(set(every)), "a row trained twice within the epoch"
    assert sorted(every) == sorted(row for g in range(8) for row in sampler.rows(g)), "global batches 0..7, whole"

    # gradients after the all-reduce agree on both ranks, step by step; and so do the final weights
    assert len(ranks[0]["grads"]) == len(ranks[1]["grads"]) == 2
    for step, (g0, g1) in enumerate(zip(ranks[0]["grads"], ranks[1]["grads"], strict=True)):
        assert [g is None for g in g0] == [g is None for g in g1], f"step {step}: other parameters got gradients"
        assert any(g is not None and bool(g.abs().sum() > 0) for g in g0), f"step {step}: no gradient at all"
        for i, (a, b) in enumerate(zip(g0, g1, strict=True)):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"step {step}, parameter {i}")
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    assert p0.keys() == p1.keys()
    for name in p0:
        torch.testing.assert_close(p0[name], p1[name], rtol=1e-6, atol=1e-7, msg=f"weights differ: {name}")
