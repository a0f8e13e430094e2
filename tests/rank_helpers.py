"""Start N worker processes as torchrun would (its environment variables, gloo on CPU), without the launcher's own
start-up; shared by the multi-process tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(args: list[str], world: int = 2, timeout: float = 240) -> None:
    """`python *args` on ranks 0..world-1 with one thread each; asserts that every rank exits 0 (its stderr tail
    otherwise), and kills the ranks left on a timeout."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    try:
        errors = [proc.communicate(timeout=timeout)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, err) in enumerate(zip(procs, errors, strict=True)):
        assert proc.returncode == 0, f"rank {rank}: {err[-3000:]}"
