"""`sweep sync` / `tune sync`: a folder's offline W&B runs found exactly, handed to wandb's own
sync (its dry run reads our folders), skipped once synced, and resumed after a broken upload."""

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

import rhmscale.store.wandb_sync as wandb_sync
from rhmscale.cli import app
from rhmscale.errors import UserError
from rhmscale.store.wandb_sync import offline_runs, sync_command
from tests.test_collect_wandb import sweep  # noqa: F401 - the fixture: three offline runs


@pytest.fixture
def copy(sweep, tmp_path):  # noqa: F811
    root, ids = sweep
    target = tmp_path / "sweep"
    shutil.copytree(root, target, symlinks=True)
    return target, ids


def test_the_sweeps_offline_runs_are_found_oldest_folder_first(copy):
    root, ids = copy
    runs = {run.run_id: run for run in offline_runs(root)}
    assert set(runs) == set(ids.values())
    resumed = runs[ids["resumed"]]
    assert len(resumed.folders) == 2 and resumed.folders == sorted(resumed.folders)
    assert all(f.parent == root / "runs" / ids["resumed"] / "wandb" for f in resumed.folders)
    assert {r.run_id: r.state for r in runs.values()} == {
        ids["done"]: "done",
        ids["resumed"]: "done",
        ids["stopped"]: "interrupted",
    }
    assert not any(r.synced for r in runs.values())


def test_wandbs_own_dry_run_takes_every_folder_we_hand_it(copy):
    root, ids = copy
    folders = [f for run in offline_runs(root) for f in run.folders]
    out = subprocess.run(
        sync_command(folders, dry_run=True), capture_output=True, text=True, check=True, timeout=120
    )
    said = out.stdout + out.stderr
    assert f"Would sync {len(folders)} run(s)" in said, said
    for folder in folders:
        assert str(next(folder.glob("*.wandb"))) in said


def test_sync_uploads_what_is_left_and_goes_on_after_a_broken_upload(copy, monkeypatch):
    root, ids = copy
    calls: list[list[str]] = []
    broken = {"once": True}

    def fake_wandb(command):
        """wandb sync as it behaves: a marker beside each log it uploaded; the first call
        breaks after the first folder (a lost connection)."""
        assert command[:4] == [wandb_sync.sys.executable, "-m", "wandb", "sync"]
        folders = [a for a in command if not a.startswith("-") and "offline-run-" in a]
        calls.append(folders)
        for folder in folders[:1] if broken.pop("once", False) else folders:
            for log in (wandb_sync.Path(folder)).glob("*.wandb"):
                log.with_suffix(".wandb.synced").touch()
        return subprocess.CompletedProcess(command, 1, "", "wandb: ERROR connection lost")

    monkeypatch.setattr(wandb_sync, "run_wandb", fake_wandb)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    runner = CliRunner()
    dry = runner.invoke(app, ["sweep", "sync", str(root), "--dry-run"])
    assert dry.exit_code == 0 and not calls, dry.output
    said = " ".join(dry.output.split())
    assert "3 runs with offline W&B logs: 0 synced already, 2 to upload (3 folders)" in said
    assert "1 not ended (left for a later sync" in said
    first = runner.invoke(app, ["sweep", "sync", str(root)])
    assert first.exit_code == 1, first.output
    whole = [run.run_id for run in offline_runs(root) if run.synced]  # its only folder, or none
    assert len(calls[0]) == 3 and len(whole) <= 1
    assert f"uploaded {len(whole)} of 2 runs" in first.output and "connection lost" in first.output
    assert "run the command again" in first.output
    second = runner.invoke(app, ["sweep", "sync", str(root)])
    left = 2 - len(whole)
    assert second.exit_code == 0 and f"uploaded {left} of {left} runs" in second.output
    # The second call was handed only the runs not wholly synced (all their folders: wandb
    # skips a synced one itself); the run that has not ended, never.
    assert len(calls) == 2 and not any(run_id in " ".join(calls[1]) for run_id in whole)
    assert ids["stopped"] not in " ".join(calls[0] + calls[1])
    third = runner.invoke(app, ["sweep", "sync", str(root)])
    assert third.exit_code == 0 and len(calls) == 2
    assert "2 synced already, 0 to upload" in " ".join(third.output.split())
    unfinished = runner.invoke(app, ["sweep", "sync", str(root), "--unfinished"])
    assert unfinished.exit_code == 0 and len(calls) == 3
    (stopped,) = [run for run in offline_runs(root) if run.run_id == ids["stopped"]]
    assert calls[2] == [str(f) for f in stopped.folders] and stopped.synced


def test_sync_without_credentials_says_how_to_give_them(copy, monkeypatch):
    root, _ = copy
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(root / "no-netrc"))
    monkeypatch.setenv("HOME", str(root))
    result = CliRunner().invoke(app, ["tune", "sync", str(root)])
    assert isinstance(result.exception, UserError)
    assert "WANDB_API_KEY" in str(result.exception) and "--dry-run" in str(result.exception)
    not_a_sweep = CliRunner().invoke(app, ["sweep", "sync", str(root / "runs")])
    assert isinstance(not_a_sweep.exception, UserError)
    assert "is not a sweep folder" in str(not_a_sweep.exception)
