"""The study folder's journal.log, read so that damage is a UserError naming the line, not a
traceback: Optuna's file backend raises whatever json.loads raised (a UnicodeDecodeError for
binary garbage, a JSONDecodeError for a torn line followed by others) from deep inside any call,
and an entry with an op code it does not know is its bare "Should not reach.". The file itself
is checked first as every store file is (store.reading: a regular file of a journal's size):
Optuna reads it line by line, and a link to /dev/zero is one endless line.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation

from rhmscale.errors import UserError
from rhmscale.store.reading import open_checked

OP_CODES = {op.value for op in JournalOperation}


class CheckedJournal(JournalFileBackend):
    """JournalFileBackend whose reads raise a UserError at the first damaged line. (Optuna
    itself skips a torn last line, one a killed writer left without its newline: the entries
    before it are whole.) A write first drops such a torn line: Optuna appended after it, and
    the entry written was glued to it, lost (a new trial: an AttributeError in Optuna), and
    the journal damaged once another line followed."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):  # Optuna's own append, after drop_torn_tail
            check_file(Path(self._file_path))
            drop_torn_tail(Path(self._file_path))
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        check_file(Path(self._file_path))
        try:
            for entry in super().read_logs(log_number_from):
                if entry_damage(entry):
                    raise ValueError("not a journal entry")
                yield entry
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, Optuna's "Invalid log format"
            raise UserError(damage_message(Path(self._file_path))) from None


def drop_torn_tail(path: Path, block: int = 65536) -> None:
    """Cut the file after its last newline: a last line without one is a write cut short
    (readers skip it). Called with the journal's lock held, so no writer is mid-line."""
    with open(path, "r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        start = end
        while start > 0:  # back to the last newline, a block at a time
            start = max(0, start - block)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                break
        else:
            handle.truncate(0)
        handle.flush()
        os.fsync(handle.fileno())


def check_file(path: Path) -> None:
    """Raise store.reading.DamagedFile (a UserError) unless the journal is a regular file of a
    journal's size; a missing one is fine (Optuna creates it)."""
    with contextlib.suppress(FileNotFoundError):
        open_checked(path).close()


def entry_damage(entry: Any) -> str | None:
    """Why a decoded line is not a journal entry, or None when it is one."""
    if not isinstance(entry, dict) or "op_code" not in entry:
        return "not a journal entry"
    if entry["op_code"] not in OP_CODES:
        return f"op_code {entry['op_code']!r} is not one this Optuna knows (0 to {max(OP_CODES)})"
    return None


def first_damaged_line(path: Path) -> tuple[int, int, str] | None:
    """(line number from 1, byte offset where it starts, why) of the first line that is not a
    whole journal entry (a JSON object with a known op_code, ended by a newline); None when
    all are."""
    offset = 0
    with open_checked(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                why = entry_damage(json.loads(line))
            except ValueError:
                why = "not a journal entry"
            if not line.endswith(b"\n"):
                why = "not a journal entry (no newline)"
            if why:
                return number, offset, why
            offset += len(line)
    return None


def damage_message(path: Path) -> str:
    where = first_damaged_line(path)
    if where is None:  # changed since it was read: reading again may succeed
        return f"{path} could not be read (it changed while being read): run the command again"
    number, offset, why = where
    return (
        f"{path} is damaged at line {number} (byte {offset}): {why}. Back the file "
        f"up, then delete that line (sed -i '{number}d' {path}) and run the command again; if "
        f"the lines after it are damaged too, keep only those before it (truncate -s {offset} "
        f"{path}): the trials they recorded are then lost, and their runs stay in runs/"
    )
