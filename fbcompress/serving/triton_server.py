"""A real `tritonserver` for a bundle's model repository, from the nvidia-pytriton wheel of a serving environment.

Why a serving environment of its own (`make serve-env`: `.venv-serve`): nvidia-pytriton 0.7 requires numpy < 2
while fbcompress's stack runs numpy 2, and the wheel's Python-backend stub answered wrongly with numpy 2.4 on its
path ("output tensor shape does not match size") but correctly with numpy 1.26. The serving environment holds the
wheel (tritonserver, its libraries, the Python backend and one stub per Python version), tritonclient, and what
the bundle's Python models import: numpy < 2, onnxruntime, tokenizers, Pillow. Nothing of fbcompress or torch.

`serve()` starts the server with the bundle's `serve_triton.py` (what the bundle README tells a serving team to run:
it puts the stub for the environment's Python beside a copy of the backends) on free loopback ports, waits a bounded
time for readiness, and stops it (SIGTERM to its process group, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fbcompress.bundle.names import SERVE_SCRIPT_FILE
from fbcompress.core.errors import BackendUnavailable, FbError
from fbcompress.export.triton_ensemble import SERVING_FILES

ENV_VARIABLE = "FBCOMPRESS_SERVE_ENV"
DEFAULT_ENV = ".venv-serve"
LAUNCHER = SERVING_FILES / "serve_triton.py"  # the bundle's serve_triton.py, as export copies it


@dataclass(frozen=True)
class TritonDist:
    """A serving environment whose Python has the nvidia-pytriton wheel, checked by the bundle's launcher (which
    finds the server, its libraries and the stub itself when it starts them)."""

    python: Path

    @classmethod
    def find(cls, env: str | Path | None = None) -> TritonDist:
        """The serving environment `env` (default: $FBCOMPRESS_SERVE_ENV, else ./.venv-serve), checked by the
        launcher itself; one line saying what is missing otherwise (BackendUnavailable: a test skips on it)."""
        root = Path(env or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV)
        python = root / "bin" / "python"
        if not python.is_file():
            raise BackendUnavailable(f"no serving environment at {root} (make serve-env; or set {ENV_VARIABLE})")
        found = subprocess.run([str(python), str(LAUNCHER), "--check"], capture_output=True, text=True, timeout=60)
        if found.returncode:
            said = found.stderr.strip().splitlines()
            raise BackendUnavailable(f"{root}: {said[-1] if said else 'the launcher failed'} (make serve-env)")
        return cls(python)


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 12) -> str:
        """The log's error lines (glog severity E, or a model's UNAVAILABLE status), then its last `lines`."""
        text = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        errors = [line for line in text if line.startswith("E1") or "UNAVAILABLE" in line]
        return "\n".join([*errors, "...", *text[-lines:]])


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def serve(repository: Path, dist: TritonDist, timeout: float = 180.0, log: Path | None = None) -> Iterator[Server]:
    """`tritonserver` on `repository` (loopback, free ports) until the block ends, started the way a serving team
    starts it: the bundle's own `serve_triton.py` where the repository is a bundle's `triton/`, else fbcompress's
    copy of it. FbError with the log's tail when it does not get ready within `timeout` seconds."""
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise FbError(f"model repository not found: {repository}")
    launcher = repository.parent / SERVE_SCRIPT_FILE
    launcher = launcher if launcher.is_file() else LAUNCHER
    with tempfile.TemporaryDirectory(prefix="fbcompress-triton-") as tmp:
        log_path = Path(log) if log is not None else Path(tmp) / "tritonserver.log"
        http, grpc, metrics = free_ports(3)
        command = [str(dist.python), str(launcher), "--repository", str(repository), "--address", "127.0.0.1",
                   "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        with open(log_path, "wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", process, log_path)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(server.http):
                if process.poll() is not None:
                    raise FbError(f"tritonserver exited ({process.returncode}) before it was ready:\n"
                                  f"{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise FbError(f"tritonserver was not ready within {timeout:.0f} s:\n{server.log_tail()}")
                time.sleep(0.5)
            yield server
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
