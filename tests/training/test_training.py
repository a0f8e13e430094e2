"""Teacher training: checkpoint round trip, exact resume, 2-process DDP, and atomic checkpoint commits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fbcompress.commands.cli import main
from fbcompress.modeling.checkpoint import COMMIT, load_model, open_checkpoint, recover, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _train(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["train-teacher", *args])
    assert result.exit_code == 0, result.output


def _batch(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    spec = model.spec
    ids = torch.randint(1000, 2000, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "patches": torch.randn(3, spec.num_patches, spec.patch_dim, generator=gen)}


def test_checkpoint_round_trip_same_outputs(trained_smoke, tmp_path):
    model, ckpt = load_model(trained_smoke)
    assert ckpt.kind == "teacher" and ckpt.meta["finished"] and ckpt.meta["step"] == 6
    assert "val_auc" in ckpt.meta["metrics"] and ckpt.meta["data_fingerprint"]
    batch = _batch(model)
    with torch.no_grad():
        before = model(**batch)
    from fbcompress.modeling.backbone import load_tokenizer

    save_checkpoint(tmp_path / "copy", model, load_tokenizer(trained_smoke), {"kind": "teacher"})
    again, _ = load_model(tmp_path / "copy")
    with torch.no_grad():
        after = again(**batch)
    assert torch.equal(before, after)


def test_padding_does_not_change_scores(trained_smoke):
    """VSL is exact: padding a text with masked positions leaves its logits unchanged."""
    model, _ = load_model(trained_smoke)
    batch = _batch(model)
    short = {k: v[:1, :5] if k != "patches" else v[:1] for k, v in batch.items()}
    padded = {k: v[:1] if k != "patches" else v[:1] for k, v in batch.items()}
    padded["attention_mask"] = padded["attention_mask"].clone()
    padded["attention_mask"][:, 5:] = 0
    with torch.no_grad():
        assert torch.allclose(model(**short), model(**padded), atol=1e-5)


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    _train(["-r", "smoke", "--data", str(tiny_data), "--out", str(full)])
    _train(["-r", "smoke", "--data", str(tiny_data), "--out", str(split), "--stop-after", "3"])
    meta = json.loads((split / "fbcompress.json").read_text())
    assert meta["step"] == 3 and not meta["finished"] and (split / "training_state.pt").is_file()
    _train(["-r", "smoke", "--data", str(tiny_data), "--out", str(split), "--resume"])
    a, b = load_file(str(full / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    log = [json.loads(line) for line in (split / "train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)), "resumed log continues without duplicates"
    assert all(abs(sum(r["weights"].values()) - 1) < 1e-5 for r in log), "adaptive weights logged every step"
    assert not (split / "training_state.pt").exists(), "a finished checkpoint drops the optimiser state"


def test_resume_refuses_other_recipe_and_existing_out(tiny_data, trained_smoke):
    runner = CliRunner()
    result = runner.invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out",
                                  str(trained_smoke), "--resume", "--set", "train.lr=0.5"])
    assert result.exit_code == 2 and "another recipe" in result.output
    result = runner.invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out",
                                  str(trained_smoke)])
    assert result.exit_code == 2 and "--resume" in result.output
    result = runner.invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out",
                                  str(trained_smoke), "--resume"])
    assert result.exit_code == 0 and "nothing to do" in result.output
    # a release tolerance is not part of what the weights depend on: resume still accepts the checkpoint
    result = runner.invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out",
                                  str(trained_smoke), "--resume", "--set", "check.max_auc_drop=0.5"])
    assert result.exit_code == 0 and "nothing to do" in result.output


def test_interrupted_save_is_recovered(trained_smoke, tmp_path):
    """A save killed after its commit point is finished on the next open; before it, the old files stand."""
    import shutil

    work = tmp_path / "ckpt"
    shutil.copytree(trained_smoke, work)
    model, _ = load_model(work)
    from fbcompress.modeling.backbone import load_tokenizer

    # Simulate a kill between the commit rename and the file moves: stage a full save in .commit by hand.
    with torch.no_grad():
        model.ita_head.bias.add_(1.0)
    save_checkpoint(tmp_path / "newer", model, load_tokenizer(work), {"kind": "teacher", "step": 99})
    shutil.copytree(tmp_path / "newer", work / COMMIT, ignore=shutil.ignore_patterns("train-log.jsonl"))
    (work / ".staging").mkdir()  # an uncommitted stage from an even later save
    recover(work)
    assert not (work / COMMIT).exists() and not (work / ".staging").exists()
    assert open_checkpoint(work).meta["step"] == 99
    assert (work / "train-log.jsonl").is_file(), "the live log is left alone"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "fbcompress", "train-teacher", "-r", "smoke",
           "--data", str(tiny_data), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = open_checkpoint(out)
    assert ckpt.meta["world_size"] == 2 and ckpt.meta["finished"]
    log = [json.loads(line) for line in (out / "train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)), "only rank 0 writes the log, once per step"
    assert not list(out.glob(".*")), "no staging leftovers"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_killed_training_resumes_to_the_same_teacher(tiny_data, tmp_path, signal_name):
    """kill -9 (or Ctrl-C) mid-training, then --resume: the same weights and metrics as a run never interrupted."""
    import signal
    import time

    # 60 steps: after the step-6 checkpoint appears, the signal must land well before training ends (a smoke step
    # takes tens of ms on a quiet core; a 16-step run once finished before SIGINT arrived).
    settings = ["--set", "train.steps=60", "--set", "train.save_every=3", "--set", "train.eval_every=30"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _train(["-r", "smoke", "--data", str(tiny_data), "--out", str(full), *settings])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "fbcompress", "train-teacher", "-r", "smoke", "--data", str(tiny_data),
           "--out", str(killed), *settings]
    # A shell that starts jobs in the background (CI) hands them SIGINT ignored, and Python then never raises
    # KeyboardInterrupt; restore the default so the child behaves as in a terminal.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        meta = killed / "fbcompress.json"
        try:
            if json.loads(meta.read_text())["step"] >= 6:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(getattr(signal, signal_name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if signal_name == "SIGINT":
        assert b"--resume" in err, "Ctrl-C says how to continue"
    stopped_at = open_checkpoint(killed).meta["step"]
    assert 6 <= stopped_at < 60
    _train(["-r", "smoke", "--data", str(tiny_data), "--out", str(killed), "--resume", *settings])
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    meta_full, meta_killed = (json.loads((d / "fbcompress.json").read_text()) for d in (full, killed))
    assert meta_killed["finished"] and meta_killed["step"] == 60
    quality = {k: v for k, v in meta_full["metrics"].items() if k.startswith("val_")}
    assert quality and {k: meta_killed["metrics"][k] for k in quality} == pytest.approx(quality, abs=1e-6)
    steps = [json.loads(line)["step"] for line in (killed / "train-log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61)), "the log holds every step once, without the lost tail duplicated"
