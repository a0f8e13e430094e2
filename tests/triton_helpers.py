"""What the real-server tests share: the serving environment (skipped, with its reason, where `make serve-env` could
not install it) and a client run inside it (tests/serving/triton_probe.py: tritonclient needs that environment)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "serving" / "triton_probe.py"


def serving_env():
    """The serving environment's TritonDist, or a skip naming what is missing."""
    from fbcompress.core.errors import BackendUnavailable
    from fbcompress.serving.triton_server import TritonDist

    try:
        return TritonDist.find()
    except BackendUnavailable as exc:
        pytest.skip(f"no Triton server here: {exc}")


def probe(serving, url: str, protocol: str, cases: list[dict], tmp_path: Path, concurrent: bool = False
          ) -> list[dict]:
    """Send `cases` (triton_probe.py's format) over `protocol`, one after another or (`concurrent`, HTTP) all at
    once; one answer per case: {"output"} or {"error"}."""
    path = tmp_path / f"cases-{protocol}.json"
    path.write_text(json.dumps(cases))
    done = subprocess.run([str(serving.python), str(PROBE), url, protocol, str(path),
                           *(["--concurrent"] if concurrent else [])], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
