"""`fbcompress check`'s verdict as a typed record: what `check --json` writes and what the quickstart reads back.

One owner for the format: `run_check` builds a `CheckVerdict`, the JSON is its dump, and readers (the quickstart's
choice of the fastest student, its report) parse it here instead of walking nested dicts. The two models' evals
and latencies are the `eval` and timing records as measured (their own formats), kept whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fbcompress.core.errors import FbError, validation_error_line

CHECK_SCHEMA = "fbcompress-check/1"


class GateRow(BaseModel):
    """One line of the verdict table: a gate (passed True/False) or information only (passed None)."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    teacher: float
    candidate: float
    delta: float
    limit: str
    passed: bool | None


class CheckedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    eval: dict[str, Any]
    latency: dict[str, Any]  # p50/p90/p99 ms, pairs/s, backend, precision at the recipe's reference shape


class CheckVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: Literal["fbcompress-check/1"] = Field(CHECK_SCHEMA, alias="schema")
    passed: bool
    verdict: Literal["PASS", "FAIL"]
    failed: list[str]
    split: str
    data: str
    synthetic_data: bool
    device: str
    tolerances: dict[str, Any]
    tolerances_from: str | None = None
    checks: list[GateRow]
    teacher: CheckedModel
    candidate: CheckedModel
    machine: dict[str, Any]

    def speedup(self) -> float | None:
        """The measured teacher p50 / candidate p50 (the speed-up gate's figure)."""
        return next((row.delta for row in self.checks if row.metric.startswith("speed-up")), None)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def read_verdict(path: Path) -> CheckVerdict | None:
    """A saved verdict, or None when there is none yet; a file that is not one is refused in one line."""
    import json

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FbError(f"{path} is not valid JSON: {exc}") from None
    try:
        return CheckVerdict.model_validate(raw)
    except ValidationError as exc:
        raise FbError(validation_error_line(str(path), exc)) from None
