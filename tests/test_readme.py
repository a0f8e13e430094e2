"""The README is for users: every `fbcompress` command line in it must be one the CLI accepts, its links must stay
inside the repository and exist, and it stays short enough to read (~15,000 characters).

The command lines are parsed by the real Click commands (options, types, choices, required options) with each
command's body replaced by a no-op: parsing is what a typo in the README would break; running them needs a
teacher and a GPU.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _example_lines() -> list[str]:
    """Complete `fbcompress ...` lines with options: in `code spans` and in code blocks, `torchrun ... -m
    fbcompress` included. A bare command name is prose; lines with `...` or `[optional]` placeholders are
    fragments, not commands."""
    text = README.read_text()
    lines = re.findall(r"`(fbcompress [^`]+)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [line.split("#")[0].strip() for line in block.splitlines()]
    commands = []
    for line in lines:
        line = re.sub(r"^torchrun .*?-m fbcompress", "fbcompress", line.strip())
        if line.startswith("fbcompress ") and " -" in line and "..." not in line and "[" not in line:
            commands.append(line)
    return commands


def _commands(group: click.Group):
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command)


def test_the_readme_has_the_commands_a_user_needs():
    names = {shlex.split(line)[1] for line in _example_lines()}
    assert {"data", "train-teacher", "distill", "eval", "export", "quantize", "bench", "check"} <= names


@pytest.mark.parametrize("line", _example_lines())
def test_every_readme_command_line_parses(line, monkeypatch):
    """A misspelt option, a choice the command does not offer or a missing required option fails here."""
    from fbcompress.commands.cli import main

    for command in _commands(main):
        if not isinstance(command, click.Group):
            monkeypatch.setattr(command, "callback", lambda **_: None)
    result = CliRunner().invoke(main, shlex.split(line)[1:])
    assert result.exit_code == 0, f"{line}\n{result.output}"


def test_readme_links_stay_in_the_repository_and_exist():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        assert not re.match(r"[a-z]+://", target), f"README links outside the repository: {target}"
        assert (ROOT / target).resolve().is_relative_to(ROOT) and (ROOT / target).exists(), target


def test_readme_stays_short():
    assert len(README.read_text()) <= 15_000
