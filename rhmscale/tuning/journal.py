"""The study folder's journal.log, read so that damage is a UserError naming the line, not a
traceback: Optuna's file backend raises whatever json.loads raised (a UnicodeDecodeError for
binary garbage, a JSONDecodeError for a torn line followed by others) from deep inside any call.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from rhmscale.errors import UserError


class CheckedJournal(JournalFileBackend):
    """JournalFileBackend whose reads raise a UserError at the first damaged line. (Optuna
    itself skips a torn last line, one a killed writer left without its newline: the entries
    before it are whole.)"""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            for entry in super().read_logs(log_number_from):
                if not isinstance(entry, dict) or "op_code" not in entry:
                    raise ValueError("not a journal entry")
                yield entry
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, Optuna's "Invalid log format"
            raise UserError(damage_message(Path(self._file_path))) from None


def first_damaged_line(path: Path) -> tuple[int, int] | None:
    """(line number from 1, byte offset where it starts) of the first line that is not a whole
    journal entry (JSON object with an op_code, ended by a newline); None when all are."""
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not line.endswith(b"\n") or not isinstance(entry, dict) or "op_code" not in entry:
                return number, offset
            offset += len(line)
    return None


def damage_message(path: Path) -> str:
    where = first_damaged_line(path)
    if where is None:  # changed since it was read: reading again may succeed
        return f"{path} could not be read (it changed while being read): run the command again"
    number, offset = where
    return (
        f"{path} is damaged at line {number} (byte {offset}): not a journal entry. Back the file "
        f"up, then delete that line (sed -i '{number}d' {path}) and run the command again; if "
        f"the lines after it are damaged too, keep only those before it (truncate -s {offset} "
        f"{path}): the trials they recorded are then lost, and their runs stay in runs/"
    )
