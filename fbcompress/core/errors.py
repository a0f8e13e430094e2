"""One exception type for every user-facing failure.

The CLI turns an `FbError` into one line on stderr and exit code 2, so a bad input never shows a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Any


class FbError(Exception):
    """A problem the user can fix (bad path, bad recipe key, corrupt file...). The message is the whole story."""


class BackendUnavailable(FbError):
    """A backend this machine cannot run: TensorRT or its libraries missing, no CUDA device, an ONNX Runtime
    execution provider that is listed but does not load.

    Still an `FbError` (one line, exit 2) where the user asked for that backend alone (`export --target tensorrt`,
    `eval --model x.plan`); a benchmark matrix catches it per model and skips that row with the reason instead.
    """


class FbWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one `warning:` line."""


def validation_error_line(where: str, exc: Any, prefix: str = "") -> str:
    """One line from a pydantic ValidationError (duck-typed: no pydantic import here): the first error's key path
    as a reader would index it (`models['model.onnx'].latency.cases[0].p50_ms`), the rule and the offending value."""
    first = exc.errors()[0]
    path = prefix
    for part in first["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{part!r}]"
    message = " ".join(str(first["msg"]).split()).removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {_short(value)})"  # a missing key's input: its dict
    return f"{where}: {path or 'the top level'}: {message}{shown}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
