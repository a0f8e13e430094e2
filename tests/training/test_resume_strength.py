"""Resume and sharding, the two things that make a long (multi-GPU) training run safe to stop and to spread:

* `micro_batch_index`: which global batch a rank's micro-batch is (each rank its own slice, nothing shared);
* `resume_point`: when an existing checkpoint may be continued, and from where;
* `_truncate_log`: a resumed run's log has no duplicated or stale steps.

On the session's smoke teacher (a finished checkpoint) and one stopped after 2 steps (resumable). Each test names
the one-line breaks of fbcompress/training/loop.py it was seen to fail on (mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import run

from fbcompress.core.errors import FbError
from fbcompress.training.loop import LOG_FILE, _truncate_log, micro_batch_index, resume_point


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("grad_accum", [1, 2, 3])
def test_every_global_batch_belongs_to_exactly_one_rank_micro_batch(world_size, grad_accum):
    """Over 5 steps, the (rank, micro) pairs cover the global indices 0..N-1 once each, ranks interleave, and the
    order is that of one rank accumulating grad_accum x world_size micro-batches. Breaks caught: `* world_size`
    or `+ rank` dropped, `step * grad_accum` -> `step + grad_accum`, rank and micro swapped."""
    steps = 5
    seen = {}
    for step in range(steps):
        for rank in range(world_size):
            for micro in range(grad_accum):
                seen[(step, rank, micro)] = micro_batch_index(step, micro, grad_accum, world_size, rank)
    assert sorted(seen.values()) == list(range(steps * grad_accum * world_size))
    for (step, rank, micro), index in seen.items():
        assert index % world_size == rank
        single = micro_batch_index(step, micro * world_size + rank, grad_accum * world_size, 1, 0)
        assert index == single


@pytest.fixture()
def setup_for(trained_smoke, tiny_data, tmp_path):
    """A factory: the TrainSetup `train-teacher -r smoke` would build, writing to a copy of `checkpoint`."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model
    from fbcompress.recipes import load_recipe
    from fbcompress.training.loop import TrainSetup

    def make(checkpoint: Path | None, **changes):
        out = tmp_path / "out"
        if checkpoint is not None:
            shutil.copytree(checkpoint, out)
        model, ckpt = load_model(trained_smoke)
        setup = TrainSetup(kind="teacher", recipe=load_recipe("smoke"), model=model, objective=model,
                           tokenizer=load_tokenizer(trained_smoke), dataset=DatasetDir.open(tiny_data),
                           val_data=None, out=out, weighting="adaptive",
                           extra_meta={k: ckpt.meta[k] for k in ("teacher",) if k in ckpt.meta})
        return replace(setup, **changes)

    return make


def test_an_existing_checkpoint_needs_resume_or_force(setup_for):
    """Breaks caught: the `not resume and not force` guard weakened (`or`, a negation dropped)."""
    setup = setup_for(None)
    assert resume_point(setup, resume=False, force=False).start_step == 0  # nothing there yet: a fresh start


def test_resume_and_force_on_a_finished_checkpoint(setup_for, trained_smoke):
    """Breaks caught: the refusal without --resume/--force, --force not starting from step 0, a finished
    checkpoint not reported as finished (or at another step), its meta not returned."""
    setup = setup_for(trained_smoke)
    with pytest.raises(FbError, match="already holds a checkpoint: pass --resume to continue it or --force"):
        resume_point(setup, resume=False, force=False)
    fresh = resume_point(setup, resume=False, force=True)
    assert (fresh.start_step, fresh.state, fresh.finished_meta) == (0, None, None)
    done = resume_point(setup, resume=True, force=False)
    meta = json.loads((setup.out / "fbcompress.json").read_text())
    assert done.finished_meta == meta and done.start_step == meta["step"] and done.state is None


def test_resume_continues_a_stopped_run_from_its_step(setup_for, tiny_data, tmp_path):
    """Breaks caught: the state file not loaded (a restart from 0), the step not taken from the state."""
    stopped = tmp_path / "stopped"
    result = run("train-teacher", "-r", "smoke", "--data", tiny_data, "--out", stopped, "--stop-after", "2")
    assert result.exit_code == 0, result.output
    point = resume_point(setup_for(stopped), resume=True, force=False)
    assert point.finished_meta is None and point.start_step == 2
    assert point.state["step"] == 2 and {"optimizer", "scheduler"} <= set(point.state)


def test_resume_refuses_what_these_settings_would_not_have_produced(setup_for, trained_smoke, tmp_path):
    """Each identity check on its own. Breaks caught: the training-recipe comparison skipped or made on other
    sections, the data fingerprint not compared, an `extra_meta` identity entry not compared (or its message
    not naming it), a path entry (`teacher`) compared (paths move between machines)."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.recipes import load_recipe, merged_overrides

    setup = setup_for(trained_smoke)
    other_recipe = load_recipe("smoke", merged_overrides(["train.lr=0.5"]))
    with pytest.raises(FbError, match="was trained with another recipe"):
        resume_point(replace(setup, recipe=other_recipe), resume=True, force=False)
    # a release tolerance is not a training setting
    release = load_recipe("smoke", merged_overrides(["check.max_auc_drop=0.5"]))
    assert resume_point(replace(setup, recipe=release), resume=True, force=False).finished_meta is not None
    other_data = tmp_path / "other-data"
    shutil.copytree(setup.dataset.root, other_data)
    meta = json.loads((other_data / "dataset.json").read_text())
    meta["fingerprint"] = "0" * len(str(meta.get("fingerprint", "")) or "0")
    (other_data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FbError, match="was trained on other data"):
        resume_point(replace(setup, dataset=DatasetDir.open(other_data)), resume=True, force=False)
    with pytest.raises(FbError, match="was made with another width_pruning"):
        resume_point(replace(setup, extra_meta={"width_pruning": {"ffn": 0.5}}), resume=True, force=False)
    moved = replace(setup, extra_meta={"teacher": "/elsewhere/teacher"})
    assert resume_point(moved, resume=True, force=False).finished_meta is not None


def test_a_checkpoint_without_a_recipe_fingerprint_is_not_resumed(setup_for, trained_smoke):
    """Breaks caught: `not isinstance(stored, dict) or ...` -> `and` (a checkpoint with no fingerprint would be
    compared key by key against None and crash, or be resumed)."""
    from fbcompress.core.artifacts import sha256_file

    setup = setup_for(trained_smoke)
    meta_path = setup.out / "fbcompress.json"
    meta = json.loads(meta_path.read_text())
    meta["recipe_fingerprint"] = "not a dict"
    meta_path.write_text(json.dumps(meta))
    assert sha256_file(setup.out / "model.safetensors")  # the weights are untouched: only the meta is odd
    with pytest.raises(FbError, match="was trained with another recipe"):
        resume_point(setup, resume=True, force=False)


def test_truncate_log_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    """Breaks caught: `<=` -> `<` (the checkpoint's own step dropped), lines kept past it, a torn last line (a kill
    mid-write) not ending the read, a missing log not tolerated."""
    log = tmp_path / LOG_FILE
    _truncate_log(log, 3)  # no log yet: nothing to do
    assert not log.exists()
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    log.write_text("\n".join(lines[:5]) + "\n" + '{"step": 6, "lo')
    _truncate_log(log, 3)
    assert log.read_text() == "".join(f"{line}\n" for line in lines[:3])
    log.write_text("\n".join(lines) + "\n")
    _truncate_log(log, 0)
    assert log.read_text() == ""


def test_truncate_log_keeps_lines_without_a_step(tmp_path):
    """A line with no step (a note written before the first step) is kept. Breaks caught: `.get("step", 0)`'s
    default changed (None: a TypeError; 1: dropped at keep 0)."""
    log = tmp_path / LOG_FILE
    lines = [json.dumps({"event": "started"}), json.dumps({"step": 1})]
    log.write_text("\n".join(lines) + "\n")
    _truncate_log(log, 0)
    assert log.read_text() == lines[0] + "\n"


def test_a_finished_checkpoint_without_a_step_resumes_nothing(setup_for, trained_smoke):
    """Breaks caught: the finished branch's `meta.get("step", 0)` default changed."""
    setup = setup_for(trained_smoke)
    meta_path = setup.out / "fbcompress.json"
    meta = json.loads(meta_path.read_text())
    del meta["step"]
    meta_path.write_text(json.dumps(meta))
    point = resume_point(setup, resume=True, force=False)
    assert point.finished_meta is not None and point.start_step == 0
