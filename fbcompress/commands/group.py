"""The error contract of every command, and running a command in-process.

An `FbError` anywhere below a command prints one line on stderr and exits 2; an `FbWarning` prints one
`warning:` line; Ctrl-C exits 130 and says what was kept. The quickstart runs each of its stages as the public
command a user could type, in this process (`invoke_command`).
"""

from __future__ import annotations

import sys
import warnings

import click

from fbcompress.core.errors import FbError, FbWarning

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _warning_printer(default):
    """`warnings.showwarning` that prints an FbWarning as one `warning: ...` line (no file and line number)."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FbWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


class FbGroup(click.Group):
    """Turns an FbError anywhere below into one line on stderr and exit code 2, an FbWarning into one line."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", FbWarning)
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FbError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted: the last complete checkpoint is kept; re-run with --resume", err=True)
            sys.exit(EXIT_INTERRUPTED)


def invoke_command(group: click.Group, args: list[str]) -> int:
    """Run one command of `group` in this process; its exit code (0 on success)."""
    try:
        group.main(args=args, prog_name="fbcompress", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0
