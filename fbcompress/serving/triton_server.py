"""A real `tritonserver` for a bundle's model repository, from the nvidia-pytriton wheel of a serving environment.

Why a serving environment of its own (`make serve-env`: `.venv-serve`): nvidia-pytriton 0.7 requires numpy < 2
while fbcompress's stack runs numpy 2, and the wheel's Python-backend stub answered wrongly with numpy 2.4 on its
path ("output tensor shape does not match size") but correctly with numpy 1.26. The serving environment holds the
wheel (tritonserver, its libraries, the Python backend and one stub per Python version), tritonclient, and what
the bundle's Python models import: numpy < 2, onnxruntime, tokenizers, Pillow. Nothing of fbcompress or torch.

`serve()` copies the backends beside a stub for the environment's Python, starts the server on free loopback ports
with a bounded wait for readiness, and stops it (SIGTERM to its process group, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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

from fbcompress.core.errors import BackendUnavailable, FbError

ENV_VARIABLE = "FBCOMPRESS_SERVE_ENV"
DEFAULT_ENV = ".venv-serve"


@dataclass(frozen=True)
class TritonDist:
    """What a serving environment provides: its Python, the server binary and libraries, backends and the stub."""

    python: Path
    binary: Path
    libs: Path
    backends: Path
    stub: Path
    site_packages: Path

    @classmethod
    def find(cls, env: str | Path | None = None) -> TritonDist:
        """The serving environment `env` (default: $FBCOMPRESS_SERVE_ENV, else ./.venv-serve), checked; one line
        saying what is missing otherwise (BackendUnavailable: a test skips on it)."""
        root = Path(env or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV)
        python = root / "bin" / "python"
        if not python.is_file():
            raise BackendUnavailable(f"no serving environment at {root} (make serve-env; or set {ENV_VARIABLE})")
        found = subprocess.run([str(python), "-c", "import sys, sysconfig, pytriton; print(sys.version_info[0], "
                                "sys.version_info[1]); print(sysconfig.get_paths()['purelib']); "
                                "print(pytriton.__file__)"], capture_output=True, text=True, timeout=60)
        if found.returncode:
            raise BackendUnavailable(f"{root} has no nvidia-pytriton (make serve-env): "
                                     f"{found.stderr.strip().splitlines()[-1] if found.stderr.strip() else ''}")
        version, site, module = found.stdout.strip().splitlines()
        package = Path(module).parent
        dist = package / "tritonserver"
        stub = dist / "python_backend_stubs" / version.replace(" ", ".") / "triton_python_backend_stub"
        paths = cls(python, dist / "bin" / "tritonserver", package.parent / "nvidia_pytriton.libs",
                    dist / "backends", stub, Path(site))
        missing = [p for p in (paths.binary, paths.libs, paths.backends, paths.stub) if not p.exists()]
        if missing:
            raise BackendUnavailable(f"the nvidia-pytriton wheel in {root} lacks {missing[0]}")
        return paths


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


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
    """`tritonserver` on `repository` (loopback, free ports) until the block ends; FbError with the log's tail when
    it does not get ready within `timeout` seconds."""
    if not Path(repository).is_dir():
        raise FbError(f"model repository not found: {repository}")
    with tempfile.TemporaryDirectory(prefix="fbcompress-triton-") as tmp:
        backends = Path(tmp) / "backends"
        shutil.copytree(dist.backends, backends)
        shutil.copy2(dist.stub, backends / "python" / "triton_python_backend_stub")
        log_path = Path(log) if log is not None else Path(tmp) / "tritonserver.log"
        http, grpc, metrics = free_ports(3)
        env = {**os.environ, "PYTHONPATH": str(dist.site_packages),
               "LD_LIBRARY_PATH": ":".join(p for p in (str(dist.libs), os.environ.get("LD_LIBRARY_PATH", "")) if p),
               "PATH": f"{dist.python.parent}:{os.environ.get('PATH', '')}"}
        command = [str(dist.binary), "--model-repository", str(Path(repository).resolve()), "--backend-directory",
                   str(backends), "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address",
                   "127.0.0.1", "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--allow-metrics", "false",
                   "--exit-on-error", "true"]
        with open(log_path, "wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
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
