"""How a training process reads torchrun's environment (fbcompress/core/distributed.py), in one process.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `setup` turns them into the run's rank, world and device, and
starts the process group (NCCL on CUDA, gloo on CPU). The two-process run itself is the slow tier's
test_distributed_strength.py; here torch's `init_process_group` and the CUDA calls are watched (recorded, then
left out), so the decisions can be checked on a CPU machine. Each test names the breaks it was seen to fail on.
"""

from __future__ import annotations

import pytest
import torch

from fbcompress.core import distributed as D


@pytest.fixture()
def watched(monkeypatch):
    """Records init_process_group's backend and torch.cuda.set_device's device instead of calling them."""
    calls: dict[str, list] = {"init": [], "set_device": [], "destroy": [], "barrier": []}
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend: calls["init"].append(backend))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: bool(calls["init"]) and not calls["destroy"])
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda: calls["destroy"].append(True))
    monkeypatch.setattr(D.dist, "barrier", lambda: calls["barrier"].append(True))
    monkeypatch.setattr(D.torch.cuda, "set_device", lambda device: calls["set_device"].append(device))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_plain_process_is_rank_0_of_1_on_the_cpu(watched):
    """Breaks caught: the env defaults ("1", "0", "0") changed, a process group started for a world of one,
    `is_main` / `distributed` wrong."""
    ctx = D.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device) == (0, 1, 0, torch.device("cpu"))
    assert ctx.is_main and not ctx.distributed and watched["init"] == []
    D.barrier(ctx)
    D.teardown(ctx)
    assert watched["barrier"] == [] and watched["destroy"] == []


def test_torchrun_ranks_on_cpu_start_a_gloo_group(watched, monkeypatch):
    """Breaks caught: WORLD_SIZE / RANK / LOCAL_RANK read from other variables, `world_size > 1` -> `>= 1` or
    `> 2`, the backend choice swapped (NCCL on CPU), a second init when a group already exists, barrier and
    teardown skipped for a distributed run."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = D.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device) == (1, 2, 1, torch.device("cpu"))
    assert not ctx.is_main and ctx.distributed and watched["init"] == ["gloo"]
    D.setup("cpu")  # already initialised: not again
    assert watched["init"] == ["gloo"]
    D.barrier(ctx)
    D.teardown(ctx)
    assert watched["barrier"] == [True] and watched["destroy"] == [True]


def test_cuda_ranks_take_their_local_gpu_and_nccl(watched, monkeypatch):
    """Rank r of a node uses GPU LOCAL_RANK and NCCL. Breaks caught: the device index not LOCAL_RANK (RANK, or 0),
    `set_device` not called, the backend for CUDA changed, the `cuda` hint ignored."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = D.setup("cuda")
    assert ctx.device == torch.device("cuda", 1) and watched["set_device"] == [torch.device("cuda", 1)]
    assert watched["init"] == ["nccl"] and ctx.rank == 5


@pytest.mark.parametrize(("hint", "cuda_available", "expected"), [
    (None, False, "cpu"), ("auto", False, "cpu"), (None, True, "cuda"), ("auto", True, "cuda"),
    ("cpu", True, "cpu"), ("cuda:0", False, "cuda"),
])
def test_the_device_hint(watched, monkeypatch, hint, cuda_available, expected):
    """`auto` (or no hint) follows CUDA's availability; an explicit hint wins either way. Breaks caught: the
    `(None, "auto")` test changed, `startswith("cuda")` changed."""
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: cuda_available)
    assert D.setup(hint).device.type == expected


def test_teardown_leaves_a_group_it_does_not_own(watched, monkeypatch):
    """A single-process context must not tear down a process group someone else started (a notebook, a caller
    that runs several stages). Break caught: `ctx.distributed and dist.is_initialized()` -> `or`."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    D.setup("cpu")  # a group exists now
    monkeypatch.setenv("WORLD_SIZE", "1")
    D.teardown(D.setup("cpu"))
    assert watched["destroy"] == []
