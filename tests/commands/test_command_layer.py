"""The command layer: `fbcompress --help` stays instant (no torch, transformers or onnx imported by the commands
themselves), and every command explains itself with an example."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner


def test_the_command_line_loads_without_the_heavy_libraries():
    """Breaks caught: a command module importing a library layer (and with it torch) at module level."""
    code = ("import sys, fbcompress.commands.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("command", [["data", "synth"], ["data", "fashiongen"], ["train-teacher"], ["distill"],
                                     ["eval"], ["export"], ["quantize"], ["check"], ["bench"], ["quickstart"]])
def test_every_command_has_help_with_an_example(command):
    from fbcompress.commands.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "fbcompress " + command[0] in result.output
