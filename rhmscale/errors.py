"""The one exception type for mistakes a user can fix (bad config, impossible grammar, ...),
and its kind for a damaged file of the store (store/reading.py raises it: a run's damaged file
makes that run corrupt; a sweep's or study's ends the command).

The CLI prints its message without a traceback and exits with code 2.
"""

from pathlib import Path


class UserError(Exception):
    """Raised for input the user can correct; the message says what to change."""


class DamagedFile(UserError):
    """A store file that cannot be read as its kind: `reason` says why, after the file's name
    ("result.json is not a regular file (a character device)")."""

    def __init__(self, path: Path, why: str):
        self.path = Path(path)
        self.reason = f"{self.path.name} {why}"
        super().__init__(f"{self.path} {why}")

    def with_remedy(self, remedy: str) -> UserError:
        """The error for a sweep's or study's own file: the command stops and says what to do."""
        return UserError(f"{self}: {remedy}")
