"""The rich console every command prints with (imported on use, so `--help` stays fast)."""

from __future__ import annotations

from typing import Any


def make_console(stderr: bool = False) -> Any:
    """A rich Console on stdout, or on stderr for what scripts should not parse."""
    from rich.console import Console

    return Console(stderr=stderr)
