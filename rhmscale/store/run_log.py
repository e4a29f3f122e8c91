"""run.log's handler: a log line that cannot be written (a full disk, a quota) is said once,
in one line on stderr, and the run goes on (what fails it, e.g. its checkpoint, says why).

Python's logging prints a "--- Logging error ---" traceback for every line it cannot write:
on a full disk, one for each line of each run of a sweep.
"""

from __future__ import annotations

import contextlib
import logging
import sys


class RunLogHandler(logging.FileHandler):
    """logging.FileHandler whose write errors are said once, not once per line."""

    def __init__(self, path: str, run_id: str) -> None:
        super().__init__(path)
        self.run_id = run_id
        self.failed = False

    def close(self) -> None:
        """Closed even when the lines still buffered cannot be written."""
        try:
            super().close()
        except OSError:
            self.handleError(None)

    def handleError(self, record: logging.LogRecord | None) -> None:  # noqa: N802 - logging's
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or repr(exc)
        with contextlib.suppress(Exception):  # stderr on the same full disk: nowhere to say it
            print(
                f"run {self.run_id}: cannot write {self.baseFilename}: {reason} "
                "(later lines it cannot write are dropped without a word)",
                file=sys.stderr,
                flush=True,
            )
