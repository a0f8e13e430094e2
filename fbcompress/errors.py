"""One exception type for every user-facing failure.

The CLI turns an `FbError` into one line on stderr and exit code 2, so a bad input never shows a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FbError(Exception):
    """A problem the user can fix (bad path, bad recipe key, corrupt file...). The message is the whole story."""
