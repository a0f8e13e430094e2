"""The release gate's verdict record (`release/verdict.py`): what `check --json` writes is what its readers parse,
and a file that is not a verdict is refused in one line naming the key."""

from __future__ import annotations

import json

import pytest
from records import verdict_record

from fbcompress.core.errors import FbError
from fbcompress.release.verdict import CHECK_SCHEMA, CheckVerdict, read_verdict


def test_a_written_verdict_reads_back_the_same(tmp_path):
    record = verdict_record({"p50_ms": 2.5})
    record["checks"].append({"metric": "speed-up (p50 ms @ 1x16 cpu)", "teacher": 10.0, "candidate": 2.5,
                             "delta": 4.0, "limit": ">= 3x", "passed": True})
    (tmp_path / "check.json").write_text(json.dumps(record))
    verdict = read_verdict(tmp_path / "check.json")
    assert verdict.to_json() == record and verdict.to_json()["schema"] == CHECK_SCHEMA
    assert verdict.speedup() == 4.0 and verdict.candidate.latency["p50_ms"] == 2.5


def test_no_file_is_no_verdict_and_a_broken_one_is_one_line(tmp_path):
    """Breaks caught: a missing verdict raising; a bad file escaping as a traceback or read as a verdict; the
    message not naming the file."""
    assert read_verdict(tmp_path / "none.json") is None
    path = tmp_path / "check.json"
    path.write_text("{not json")
    with pytest.raises(FbError, match=r"check.json is not valid JSON"):
        read_verdict(path)
    for edit, message in [
        ({"verdict": "MAYBE"}, "verdict: Input should be 'PASS' or 'FAIL'"),
        ({"schema": "fbcompress-check/2"}, "schema: Input should be 'fbcompress-check/1'"),
        ({"checks": [{"metric": "AUC"}]}, "checks[0].teacher: Field required"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ]:
        path.write_text(json.dumps({**verdict_record({"p50_ms": 1.0}), **edit}))
        with pytest.raises(FbError) as caught:
            read_verdict(path)
        assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), message
        assert "\n" not in str(caught.value)


def test_the_gate_rows_of_a_verdict_keep_info_rows_apart():
    """An information row (passed None) is not a gate: a verdict is built from rows as `verdict_rows` makes them."""
    record = verdict_record({"p50_ms": 1.0})
    record["checks"].append({"metric": "ACC", "teacher": 0.9, "candidate": 0.8, "delta": -0.1, "limit": "info",
                             "passed": None})
    verdict = CheckVerdict.model_validate(record)
    assert [row.passed for row in verdict.checks] == [True, None] and verdict.speedup() is None
