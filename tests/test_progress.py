"""The live view of a submission being waited for (cli/progress.py): counts by state, cells,
what each worker trains, an ETA only once enough runs ended, one line per change off a terminal."""

import io
import time
from collections import Counter

import numpy as np
from rich.console import Console

import rhmscale.cli.progress as progress
from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.status import load_sweep_spec
from tests.test_refine import coarse, make_sweep


def test_a_watch_counts_the_submissions_runs_by_state_and_cell(tmp_path):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(1), cells=[(8, 3)], n_sizes=5))
    sweep = SweepDir(folder)
    run_ids = sorted(p.name for p in (folder / "runs").iterdir())
    saved = {}
    for rid in run_ids[:6]:  # six of the ten runs not ended yet: their results set aside
        saved[rid] = (folder / "runs" / rid / "result.json").read_bytes()
        (folder / "runs" / rid / "result.json").unlink()
    watch = progress.Watch(folder, load_sweep_spec(sweep), run_ids)
    first = watch.look()
    assert first.counts == Counter(done=4, pending=6) and (first.ended, first.total) == (4, 10)
    assert first.cells == [("v=8 m=3 s=2 L=3", 4, 0, 10)] and first.workers == {}
    assert watch.eta(first) == ""  # nothing ended since the watch began
    summary = watch.summary(first)
    assert summary.startswith("4/10 runs ended (4 done), 6 waiting, ") and "ETA" not in summary
    (folder / "runs" / run_ids[0] / "result.json").write_bytes(saved[run_ids[0]])
    time.sleep(0.05)
    second = watch.look()
    assert second.ended == 5 and watch.eta(second).startswith("ETA ~")
    assert "(from the 1 runs ended so far)" in watch.summary(second)
    # Only the submission's runs count.
    assert progress.Watch(folder, load_sweep_spec(sweep), run_ids[:3]).look().total == 3


def test_the_table_names_what_each_worker_trains():
    snap = progress.Snapshot(
        Counter(done=2, running=4),
        [("v=8 m=3 s=2 L=3", 2, 4, 6)],
        {"77_1": [f"v=8 m=3 s=2 L=3 P={p}" for p in (10, 20, 40, 80)]},
        125.0,
    )
    watch = progress.Watch.__new__(progress.Watch)
    watch.ended_at_start = 0
    out = io.StringIO()
    Console(file=out, width=120).print(watch.render(snap))
    text = out.getvalue()
    assert "2/6 runs ended (2 done), 4 running, 2 min in" in text
    assert (
        "worker 77_1: v=8 m=3 s=2 L=3 P=10, v=8 m=3 s=2 L=3 P=20, v=8 m=3 s=2 L=3 P=40 and 1 more"
        in text
    )
    assert progress.JOB.search("vm pid 12 job 4567_3 since 2026-01-01").group(1) == "4567_3"


def test_off_a_terminal_a_line_when_the_counts_change(tmp_path, monkeypatch):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(2), cells=[(8, 3)], n_sizes=2))
    run_ids = sorted(p.name for p in (folder / "runs").iterdir())
    result = folder / "runs" / run_ids[0] / "result.json"
    saved = result.read_bytes()
    result.unlink()
    monkeypatch.setattr(progress, "POLL_S", 0.05)
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert not console.is_terminal
    with progress.watching(folder, load_sweep_spec(SweepDir(folder)), run_ids, console):
        time.sleep(0.3)  # several looks, one change: one line
        result.write_bytes(saved)
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        "3/4 runs ended (3 done)",
        "4/4 runs ended (4 done)",
        "4/4 runs ended (4 done)",  # the last word, at the end of the wait
    ], lines
