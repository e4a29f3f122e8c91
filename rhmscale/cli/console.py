"""The rich console every command prints with (imported on use, so `--help` stays fast)."""

from __future__ import annotations

from typing import Any


def make_console(stderr: bool = False) -> Any:
    """A rich Console on stdout, or on stderr for what scripts should not parse. A reader that
    stops reading (`rhmscale ... | head`) ends the command quietly, exit code 0: rich's own
    answer to a broken pipe is exit code 1."""
    from rich.console import Console

    class QuietOnBrokenPipe(Console):
        def on_broken_pipe(self) -> None:
            from rhmscale.cli.failures import silence_stdout

            silence_stdout()
            raise SystemExit(0)

    return QuietOnBrokenPipe(stderr=stderr)
