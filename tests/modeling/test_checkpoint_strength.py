"""Checkpoint dirs (modeling/checkpoint.py): what a save writes, how an interrupted save is finished or dropped,
and every refusal of a load, each with the reason a user reads. On copies of the session's smoke teacher.

Each test names the one-line breaks of checkpoint.py it was seen to fail on (mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError
from fbcompress.modeling import checkpoint as C
from fbcompress.modeling.backbone import load_tokenizer


@pytest.fixture()
def saved(trained_smoke, tmp_path):
    """A fresh save of the smoke teacher with a training state: (dir, model, tokenizer)."""
    model, _ = C.load_model(trained_smoke)
    tokenizer = load_tokenizer(trained_smoke)
    out = tmp_path / "ckpt"
    C.save_checkpoint(out, model, tokenizer, {"kind": "teacher", "step": 3}, {"step": 3, "lr": torch.tensor(0.5)})
    return out, model, tokenizer


def test_a_save_records_the_hashes_versions_and_meta(saved):
    """Breaks caught: the weights or state hash missing or of another file, the versions / python entries
    dropped or renamed, the caller's meta not kept, the stage dirs left behind."""
    out, *_ = saved
    meta = json.loads((out / C.META_FILE).read_text())
    assert meta["kind"] == "teacher" and meta["step"] == 3
    assert meta["sha256"] == {C.WEIGHTS_FILE: sha256_file(out / C.WEIGHTS_FILE),
                              C.STATE_FILE: sha256_file(out / C.STATE_FILE)}
    assert set(meta["versions"]) == {"fbcompress", "python", "torch", "transformers", "numpy"}
    assert meta["versions"]["torch"] == torch.__version__ and meta["python"] == meta["versions"]["python"]
    assert (out / "config.json").is_file() and (out / "vocab.txt").is_file()
    assert not (out / C.STAGING).exists() and not (out / C.COMMIT).exists()
    state = C.load_training_state(out)
    assert state["step"] == 3 and float(state["lr"]) == 0.5


def test_a_final_save_drops_the_training_state(saved):
    """A finished checkpoint has no resumable state. Breaks caught: the stale state file kept."""
    out, model, tokenizer = saved
    C.save_checkpoint(out, model, tokenizer, {"kind": "teacher", "finished": True})
    assert not (out / C.STATE_FILE).exists()
    assert C.STATE_FILE not in json.loads((out / C.META_FILE).read_text())["sha256"]
    with pytest.raises(FbError, match="holds no training state to resume from"):
        C.load_training_state(out)


def test_the_meta_file_is_committed_last(saved, monkeypatch):
    """Until fbcompress.json is in place the old meta does not match the new weights, so a kill mid-commit leaves
    a refused checkpoint, never a wrong one. Breaks caught: the commit order (`name == META_FILE` sort key)."""
    out, model, tokenizer = saved
    moved: list[str] = []
    real = os.replace

    def replace(src, dst):
        moved.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(C.os, "replace", replace)
    C.save_checkpoint(out, model, tokenizer, {"kind": "teacher"})
    committed = moved[1:]  # the first is the stage -> .commit rename
    assert moved[0] == C.COMMIT and committed[-1] == C.META_FILE and len(committed) > 3


def test_recover_finishes_a_committed_swap_and_drops_a_stage(saved):
    """Breaks caught: `recover` not finishing `.commit` (the new files stay aside), not removing `.staging`."""
    out, *_ = saved
    commit = out / C.COMMIT
    commit.mkdir()
    meta = json.loads((out / C.META_FILE).read_text())
    (commit / C.META_FILE).write_text(json.dumps({**meta, "step": 99}))
    (out / C.STAGING).mkdir()
    (out / C.STAGING / "half.bin").write_bytes(b"x")
    assert C.open_checkpoint(out).meta["step"] == 99
    assert not commit.exists() and not (out / C.STAGING).exists()


def test_a_failed_save_leaves_the_old_checkpoint(saved, monkeypatch):
    """A disk-full save is one line and the previous checkpoint still loads. Breaks caught: the stage not removed,
    errno 28 not turned into the message."""
    out, model, tokenizer = saved
    before = sha256_file(out / C.WEIGHTS_FILE)

    def full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C, "save_file", full)
    with pytest.raises(FbError, match=f"disk full while saving checkpoint {out}"):
        C.save_checkpoint(out, model, tokenizer, {"kind": "teacher"})
    assert not (out / C.STAGING).exists() and sha256_file(out / C.WEIGHTS_FILE) == before
    assert C.open_checkpoint(out).meta["step"] == 3


def test_a_checkpoint_dir_that_cannot_be_made_is_one_line(saved, tmp_path):
    out, model, tokenizer = saved
    blocker = tmp_path / "a-file"
    blocker.write_text("not a dir")
    with pytest.raises(FbError, match=f"cannot create checkpoint dir {blocker / 'sub'}"):
        C.save_checkpoint(blocker / "sub", model, tokenizer, {})


def _refusal(directory: Path) -> str:
    with pytest.raises(FbError) as caught:
        C.load_model(directory)
    return str(caught.value)


def test_every_broken_checkpoint_is_refused_with_its_reason(saved, tmp_path):
    """Breaks caught: each check of open_checkpoint dropped or inverted, and its message: missing dir, no meta,
    meta not JSON, config or weights missing, no recorded hash, a hash that differs (truncated vs replaced), a
    config that is not BERT's or has no FashionBERT section."""
    out, *_ = saved
    assert "checkpoint dir not found" in _refusal(tmp_path / "nowhere")

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        return copy

    d = broken("no-meta")
    (d / C.META_FILE).unlink()
    assert f"{d} is not an fbcompress checkpoint (no {C.META_FILE})" in _refusal(d)
    d = broken("bad-json")
    (d / C.META_FILE).write_text("{not json")
    assert "is not valid JSON" in _refusal(d)
    for needed in ("config.json", C.WEIGHTS_FILE):
        d = broken(f"no-{needed}")
        (d / needed).unlink()
        assert f"checkpoint {d} lacks {needed}" in _refusal(d)
    d = broken("no-hash")
    meta = json.loads((d / C.META_FILE).read_text())
    (d / C.META_FILE).write_text(json.dumps({**meta, "sha256": {}}))
    assert f"records no sha256 for {C.WEIGHTS_FILE}" in _refusal(d)
    d = broken("truncated")
    data = (d / C.WEIGHTS_FILE).read_bytes()
    (d / C.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    assert "is truncated or corrupt" in _refusal(d)
    d = broken("replaced")
    other = broken("other")
    model, _ = C.load_model(other)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    C.save_checkpoint(other, model, load_tokenizer(other), {"kind": "teacher"})
    shutil.copy2(other / C.WEIGHTS_FILE, d / C.WEIGHTS_FILE)
    assert "is a readable safetensors file, but not the one" in _refusal(d)
    d = broken("not-fashionbert")
    config = json.loads((d / "config.json").read_text())
    config.pop("fashionbert")
    (d / "config.json").write_text(json.dumps(config))
    assert "has no 'fashionbert' section: not a FashionBERT checkpoint" in _refusal(d)
    d = broken("bad-config")
    (d / "config.json").write_text("[1, 2]")
    assert "config.json is not a valid BERT config" in _refusal(d)


def test_a_tampered_training_state_is_refused(saved):
    """Breaks caught: the state's hash not compared (`!=` -> `==`), a missing state file accepted."""
    out, *_ = saved
    with open(out / C.STATE_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(FbError, match=f"does not match the sha256 in {C.META_FILE}"):
        C.load_training_state(out)
    (out / C.STATE_FILE).unlink()
    with pytest.raises(FbError, match="holds no training state"):
        C.load_training_state(out)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    """Breaks caught: `strict=False` results not checked (a partial model loaded silently)."""
    from safetensors.torch import load_file, save_file

    out, *_ = saved
    state = load_file(str(out / C.WEIGHTS_FILE))
    name = next(iter(state))
    state[f"{name}.renamed"] = state.pop(name)
    save_file(state, str(out / C.WEIGHTS_FILE), metadata={"format": "pt"})
    meta = json.loads((out / C.META_FILE).read_text())
    meta["sha256"][C.WEIGHTS_FILE] = sha256_file(out / C.WEIGHTS_FILE)
    (out / C.META_FILE).write_text(json.dumps(meta))
    message = _refusal(out)
    assert "does not fit its config: missing" in message and name in message


def test_a_save_makes_nested_dirs_and_writes_what_transformers_expects(trained_smoke, tmp_path):
    """Breaks caught: `mkdir(parents=True)` changed (a nested --out fails), the safetensors `format: pt` metadata
    that transformers reads dropped or changed, fbcompress.json not indented for the person reading it."""
    from safetensors import safe_open

    model, _ = C.load_model(trained_smoke)
    out = tmp_path / "runs" / "deep" / "ckpt"
    C.save_checkpoint(out, model, load_tokenizer(trained_smoke), {"kind": "teacher"})
    with safe_open(str(out / C.WEIGHTS_FILE), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    text = (out / C.META_FILE).read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_only_a_full_disk_is_reported_as_one(saved, monkeypatch):
    """Another OS error (here: permission) is not mislabelled "disk full". Break caught: `isinstance(exc, OSError)
    and exc.errno == 28` -> `or`."""
    out, model, tokenizer = saved

    def denied(*_, **__):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(C, "save_file", denied)
    with pytest.raises(PermissionError):
        C.save_checkpoint(out, model, tokenizer, {"kind": "teacher"})


def _rewrite_weights(out: Path, state: dict) -> None:
    from safetensors.torch import save_file

    save_file(state, str(out / C.WEIGHTS_FILE), metadata={"format": "pt"})
    meta = json.loads((out / C.META_FILE).read_text())
    meta["sha256"][C.WEIGHTS_FILE] = sha256_file(out / C.WEIGHTS_FILE)
    (out / C.META_FILE).write_text(json.dumps(meta))


def test_weights_missing_a_tensor_are_refused_naming_three(saved):
    """Missing tensors alone are enough to refuse, and the message names the first three. Breaks caught:
    `missing or unexpected` -> `and`, the slices `[:3]` changed."""
    from safetensors.torch import load_file

    out, *_ = saved
    state = load_file(str(out / C.WEIGHTS_FILE))
    dropped = sorted(state)[:5]
    _rewrite_weights(out, {k: v for k, v in state.items() if k not in dropped})
    message = _refusal(out)
    assert "does not fit its config: missing [" in message and "unexpected []" in message
    assert sum(name in message for name in dropped) == 3


def test_weights_with_extra_tensors_are_refused_naming_three(saved):
    """Unexpected tensors alone are enough to refuse, and the message names the first three of them. Breaks
    caught: the slice of the unexpected names changed."""
    from safetensors.torch import load_file

    out, *_ = saved
    state = load_file(str(out / C.WEIGHTS_FILE))
    extra = {f"stray.{i}": torch.zeros(1) for i in range(5)}
    _rewrite_weights(out, {**state, **extra})
    message = _refusal(out)
    assert "does not fit its config: missing [], unexpected [" in message
    assert sum(f"'{name}'" in message for name in extra) == 3


def test_a_weights_file_that_matches_its_hash_but_does_not_parse_is_one_line(saved):
    """Breaks caught: load_model's `is truncated or corrupt` message dropped or naming the wrong path."""
    out, *_ = saved
    (out / C.WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    meta = json.loads((out / C.META_FILE).read_text())
    meta["sha256"][C.WEIGHTS_FILE] = sha256_file(out / C.WEIGHTS_FILE)
    (out / C.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FbError) as caught:
        C.load_model(out)
    assert f"{out / C.WEIGHTS_FILE} is truncated or corrupt" in str(caught.value)


class _Payload:
    """Not a tensor, number or dict: what a tampered training state could smuggle in."""


def test_a_training_state_with_pickled_objects_is_refused(saved):
    """The state is loaded with weights_only=True: a recorded-hash state that holds arbitrary objects is refused in
    one line, never unpickled, quoting the first line of torch's reason. Breaks caught: `weights_only=True` ->
    False, the reason dropped (`str(None)`) or another of its lines quoted."""
    out, *_ = saved
    torch.save({"step": 1, "payload": _Payload()}, out / C.STATE_FILE)
    meta = json.loads((out / C.META_FILE).read_text())
    meta["sha256"][C.STATE_FILE] = sha256_file(out / C.STATE_FILE)
    (out / C.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FbError, match="holds objects other than tensors and plain data; refused to unpickle") as got:
        C.load_training_state(out)
    with pytest.raises(pickle.UnpicklingError) as torch_says:
        torch.load(out / C.STATE_FILE, map_location="cpu", weights_only=True)
    first_line = str(torch_says.value).splitlines()[0]
    assert len(str(torch_says.value).splitlines()) > 1, "torch's message has several lines: only its first is kept"
    assert str(got.value).endswith(f"({first_line})") and "\n" not in str(got.value)
