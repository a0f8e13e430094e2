"""CLI helpers shared by the bench and check tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner


def run(*args: Any):
    from fbcompress.commands.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    """Bad input: exit 2, exactly one `error:` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def stdout_json(result) -> dict:
    """The JSON document a command wrote with `--json -` (the table went to stderr)."""
    return json.loads(result.stdout[result.stdout.index("{") :])
