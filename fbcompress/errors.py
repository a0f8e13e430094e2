"""One exception type for every user-facing failure.

The CLI turns an `FbError` into one line on stderr and exit code 2, so a bad input never shows a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
