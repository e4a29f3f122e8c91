"""A study never jams (issue 19): status and report read a read-only study folder; a damaged
journal names its line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rhmscale.tuning.dispatch import submit
from rhmscale.tuning.spec import parse_study_spec
from tests.test_tune import STUDY

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
ONE_CELL = STUDY | {"grid": {"grammar.v": [4]}}


def tune(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RHMSCALE, "tune", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("garbage", "then_a_trial"),
    [(b"\xff\xfe garbage\n", False), (b'{"torn": \n', True), (b"[1, 2]\n", False)],
)
def test_a_damaged_journal_names_its_line(tmp_path, garbage, then_a_trial):
    spec = parse_study_spec(ONE_CELL | {"budget": {"trials": 1}})
    for job in submit(spec, tmp_path).jobs:
        job.result()
    folder = tmp_path / "cells"
    journal = folder / "journal.log"
    lines = journal.read_bytes().count(b"\n")
    with open(journal, "ab") as handle:
        handle.write(garbage)
        if then_a_trial:  # a line after the damaged one: Optuna no longer skips it
            handle.write(journal.read_bytes().splitlines(keepends=True)[-1])
    for command in (["status"], ["retry"], ["report", "-o", str(tmp_path / "r")]):
        out = tune(*command, str(folder))
        assert out.returncode == 2, (command, out.stderr)
        assert "Traceback" not in out.stderr
        assert f"journal.log is damaged at line {lines + 1}" in out.stderr
        assert f"sed -i '{lines + 1}d'" in out.stderr


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder and its files unwritable, for root too (chattr +i where it can be set)."""
    paths = [folder, *folder.rglob("*")]
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(path.stat().st_mode & ~0o222)
        yield
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)
        return
    files = [str(p) for p in paths if not p.is_symlink()]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode:
        pytest.skip("cannot make files immutable here (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def test_status_and_report_read_a_read_only_study_folder(tmp_path):
    spec = parse_study_spec(ONE_CELL)
    for job in submit(spec, tmp_path).jobs:
        job.result()
    folder = tmp_path / "cells"
    with read_only(folder):
        shown = tune("status", str(folder))
        assert shown.returncode == 0, shown.stderr
        assert "2 complete" in shown.stdout
        out = tmp_path / "report"
        report = tune("report", str(folder), "-o", str(out), "--wandb", "disabled")
        assert report.returncode == 0, report.stderr
        assert "train.lr" in (out / "best.json").read_text()
