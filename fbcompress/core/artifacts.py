"""Atomic artifact writing and hashing.

Every artifact (a checkpoint directory, a dataset directory, a JSON report) is first written under a temporary
sibling name and renamed into place when complete, so an interrupted run never leaves a half-written artifact
that a later stage could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fbcompress.core.errors import FbError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def ensure_output_dir(folder: Path) -> None:
    """Create `folder` (and its parents) or say in one line why it cannot be: an unwritable or impossible output
    path is bad input, not a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FbError(f"cannot create output folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise FbError(f"output folder {folder} is not writable")


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    ensure_output_dir(target.parent)
    if target.exists() and not overwrite:
        raise FbError(f"{target} already exists (pass --force to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
            raise FbError(f"disk full while writing {target}") from None
        raise


def replace_dir(finished: Path, target: Path) -> None:
    """Put the complete directory `finished` at `target` by renames: an existing target is moved aside first and
    removed after, so `target` is never a half-written directory."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(finished, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(finished, target)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[BinaryIO]:
    """A binary handle whose content appears at `target` only when the block completes (fsync, then rename): for
    writers that stream (np.save of a feature shard) as well as for `atomic_write_bytes`."""
    target = Path(target)
    ensure_output_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == 28:
            raise FbError(f"disk full while writing {target}") from None
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_file(target) as handle:
        handle.write(data)


def atomic_write_json(target: str | Path, payload: Any) -> None:
    atomic_write_bytes(target, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def write_json_output(destination: str, payload: Any) -> None:
    """Honour the CLI's `--json PATH` / `--json -` convention."""
    if destination == "-":
        print(json.dumps(payload, indent=2))
    else:
        atomic_write_json(destination, payload)


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FbError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FbError(f"{what} {path} is not valid JSON: {exc}") from None


def open_work_dir(work: Path, state: dict[str, Any], log: Callable[[str], None] | None = None) -> bool:
    """The work folder of a resumable job: an interrupted run's is reused when its state.json equals `state` (the
    inputs its partial results depend on; returns True); otherwise it is emptied and started with `state`."""
    state_file = work / "state.json"
    if work.is_dir():
        try:
            previous = json.loads(state_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous == state:
            return True
        if log:
            log(f"{work} holds an interrupted run of other inputs: starting over")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_json(state_file, state)
    return False
