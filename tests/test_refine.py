"""`sweep refine` on synthetic sweeps with a known law (tests/synthetic_sweep.py): sizes only
inside brackets wider than the target, no run twice, censored cells, idempotence once the
target is met, the grown spec accepted into its sweep folder, and a refined sweep's exponent
intervals covering the truth at least as often as the full grid's."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rhmscale.cli import app
from rhmscale.errors import UserError
from rhmscale.results.collect import collect
from rhmscale.results.fit import fit
from rhmscale.results.options import FitOptions
from rhmscale.results.refinement import refinement
from rhmscale.store.atomic import atomic_write_text
from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.dispatch import prepare
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.refine import grow
from rhmscale.sweeps.spec import parse_spec, spec_to_yaml
from rhmscale.sweeps.status import load_sweep_spec
from tests.synthetic_sweep import run_rows, synthetic_frame, true_p_star, write_run_dirs

# The configs write_run_dirs makes, as a sweep spec's base.
BASE = {
    "grammar": {"L": 3},
    "data": {"n_test": 16},
    "train": {"batch_size": 64, "max_steps": 10000},
}
OPTIONS = FitOptions(n_boot=300)
CELLS = [(8, 3), (16, 3), (8, 4)]  # coarse(): every size a valid config (P < v m^7)


def make_sweep(root: Path, frame: pd.DataFrame, name: str = "syn") -> Path:
    """The synthetic runs as a sweep folder whose sweep.yaml expands to exactly them."""
    folder = root / name
    write_run_dirs(frame, folder)
    blocks = [
        {
            "grammar.v": [int(v)],
            "grammar.m": [int(m)],
            "data.P": sorted(int(P) for P in cell["data.P"].unique()),
            "seed": sorted(int(s) for s in cell["seed"].unique()),
        }
        for (v, m), cell in frame.groupby(["grammar.v", "grammar.m"])
    ]
    spec = {"name": name, "base": BASE, "grid": blocks, "executor": {"kind": "debug"}}
    spec = parse_spec(spec | {"tracking": {"wandb": "disabled"}})
    atomic_write_text(SweepDir(folder).spec_file, spec_to_yaml(spec))
    held = {p.run_id for p in expand_points(spec).points}
    assert held == {p.name for p in (folder / "runs").iterdir()}  # the spec holds the runs
    return folder


def complete(folder: Path, rng: np.random.Generator) -> int:
    """Runs the recorded spec's runs that are not done, from the law; how many."""
    rows = []
    for point in expand_points(load_sweep_spec(SweepDir(folder))).points:
        if not (folder / "runs" / point.run_id / "result.json").exists():
            g = point.config.grammar
            rows += run_rows(rng, g.v, g.m, point.config.data.P, point.config.seed)
    if rows:
        write_run_dirs(pd.DataFrame(rows), folder)
    return len({(r["run_id"]) for r in rows})


def coarse(rng: np.random.Generator, cells=CELLS, n_sizes: int = 4, seeds: int = 2):
    """A coarse start: n_sizes per cell log-spaced from P*_1 / 4 to 4 P*_3, from the law."""
    rows = []
    for v, m in cells:
        sizes = np.geomspace(true_p_star(v, m, 1) / 4, 4 * true_p_star(v, m, 3), n_sizes)
        for P in np.round(sizes).astype(int):
            rows += [r for seed in range(seeds) for r in run_rows(rng, v, m, int(P), seed)]
    return pd.DataFrame(rows)


def test_sizes_only_inside_brackets_wider_than_the_target():
    frame = coarse(np.random.default_rng(0))  # brackets x5.2 (m=3 cells) and x6.3 (m=4)
    for target in (1.25, 5.8):
        found = refinement(frame, OPTIONS, target)
        measured = found.points[found.points["censored"] == ""]
        assert len(measured) and (found.points["censored"] == "").all()
        wide = measured[measured["bracket_ratio"] > target]
        narrow = measured[measured["bracket_ratio"] <= target]
        for proposal in found.proposals.to_dict("records"):
            P = proposal["data.P"]
            inside = wide[(wide["cell"] == proposal["cell"]) & (wide["P_left"] < P)]
            inside = inside[inside["P_right"] > P]
            assert len(inside), f"{proposal['cell']} P={P} lies in no bracket wider than {target}"
            # the log-midpoint of its bracket, shared by the levels whose crossing lies there
            row = inside.iloc[0]
            assert round(math.sqrt(row["P_left"] * row["P_right"])) == P
            assert (inside["P_left"] == row["P_left"]).all()
        assert (narrow["action"] == "").all()
        sizes = found.proposals.groupby("cell")["data.P"]
        assert sizes.nunique().equals(sizes.size())  # a size proposed once per cell
        if target == 5.8:
            assert len(narrow) and set(found.proposals["cell"]) == {"v=8 m=4 s=2 L=3"}


def test_grow_never_repeats_a_run_and_the_sweep_accepts_it(tmp_path):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(1)))
    spec = load_sweep_spec(SweepDir(folder))
    before = {p.run_id for p in expand_points(spec).points}
    found = refinement(collect(folder).frame, OPTIONS, 1.25)
    growth = grow(spec, found.proposals.to_dict("records"))
    after = {p.run_id for p in expand_points(growth.spec).points}
    added = {rid for p in growth.taken for rid in p["run_ids"]}
    assert added and not added & before and after == before | added
    assert (
        growth.spec.grid[: len(spec.grid)] == spec.grid
    )  # the recorded blocks first, as they were
    prepared = prepare(growth.spec, tmp_path, query_queue=False)  # same folder: accepted
    assert set(prepared.run_ids) == added
    # The same proposals again, before their runs are done: nothing new.
    again = grow(growth.spec, found.proposals.to_dict("records"))
    assert not again.taken and again.spec == growth.spec
    assert {why for _, why in again.left} == {"its runs are in the sweep already"}
    # The original spec is now a part of the sweep: refused, and told which spec to go on with.
    atomic_write_text(SweepDir(folder).spec_file, spec_to_yaml(growth.spec))
    with pytest.raises(UserError, match="it was grown"):
        prepare(spec, tmp_path, query_queue=False)


def test_a_budget_is_spent_on_whole_proposals_in_priority_order(tmp_path):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(2)))
    spec = load_sweep_spec(SweepDir(folder))
    n = len(expand_points(spec).points)
    found = refinement(collect(folder).frame, OPTIONS, 1.25)
    growth = grow(spec, found.proposals.to_dict("records"), max_runs=n + 5)
    assert 0 < growth.n_added <= 5
    taken = [p["priority"] for p in growth.taken]
    assert taken == sorted(taken, reverse=True)
    assert grow(spec, found.proposals.to_dict("records"), max_runs=n).taken == []


def test_censored_cells_get_one_size_beyond_the_grid():
    rng = np.random.default_rng(3)
    v, m = 8, 4
    rows = []
    for P in (4 * true_p_star(v, m, 3), 8 * true_p_star(v, m, 3)):  # every level learned
        rows += [r for seed in range(2) for r in run_rows(rng, v, m, round(P), seed)]
    v2 = 16
    for P in (true_p_star(v2, m, 1) / 8, true_p_star(v2, m, 1) / 4):  # nothing learned
        rows += [r for seed in range(2) for r in run_rows(rng, v2, m, round(P), seed)]
    frame = pd.DataFrame(rows)
    found = refinement(frame, OPTIONS, 1.25)
    assert set(found.points["censored"]) == {"below", "above"}
    for proposal in found.proposals.to_dict("records"):
        sizes = sorted(frame[frame["grammar.v"] == proposal["grammar.v"]]["data.P"].unique())
        P = proposal["data.P"]
        if proposal["grammar.v"] == v:
            assert round(sizes[0] / 2) == P  # one of the grid's steps (x2) below it
        else:
            assert round(sizes[-1] * 2) == P
        assert "censored" in proposal["reason"]
    assert len(found.proposals) == 2  # one size per cell, shared by its levels


def test_rounds_end_when_every_bracket_meets_the_target_and_refine_is_then_idempotent(tmp_path):
    rng = np.random.default_rng(4)
    folder = make_sweep(tmp_path, coarse(rng, cells=[(8, 3)], n_sizes=3, seeds=2))
    target = 1.5
    for _ in range(12):
        spec = load_sweep_spec(SweepDir(folder))
        found = refinement(collect(folder).frame, OPTIONS, target)
        growth = grow(spec, found.proposals.to_dict("records"))
        if not growth.taken:
            break
        atomic_write_text(SweepDir(folder).spec_file, spec_to_yaml(growth.spec))
        assert complete(folder, rng) == growth.n_added
    else:
        pytest.fail("refine did not converge in 12 rounds")
    assert len(found.proposals) == 0 and (found.points["action"] == "").all()
    assert (found.points["bracket_ratio"] <= target).all()
    recorded = SweepDir(folder).spec_file.read_text()
    result = CliRunner().invoke(app, ["sweep", "refine", str(folder), "--target", str(target),
                                      "--n-boot", "300", "--submit"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "every bracket meets the target" in result.output
    assert SweepDir(folder).spec_file.read_text() == recorded


def test_cli_plans_writes_and_submits_a_refinement(tmp_path):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(5)))
    # A run the sweep holds but has not run (a cell left for later): refine leaves it pending.
    held = load_sweep_spec(SweepDir(folder))
    later = {"grammar.v": [32], "grammar.m": [3], "data.P": [100], "seed": [0]}
    held = held.model_copy(update={"grid": [*held.grid, later]})
    atomic_write_text(SweepDir(folder).spec_file, spec_to_yaml(held))
    (pending,) = {p.run_id for p in expand_points(held).points} - {
        p.name for p in (folder / "runs").iterdir()
    }
    recorded = SweepDir(folder).spec_file.read_text()
    out = tmp_path / "grown.yaml"
    runner = CliRunner()
    plan = runner.invoke(app, ["sweep", "refine", str(folder), "-o", str(out), "--n-boot", "300"])
    assert plan.exit_code == 0, plan.output
    assert "brackets of P*_k" in plan.output and "to submit" in plan.output
    assert SweepDir(folder).spec_file.read_text() == recorded  # a plan writes nothing there
    grown = load_sweep_spec(SweepDir(folder)).model_copy()
    written = parse_spec(__import__("yaml").safe_load(out.read_text()))
    assert len(written.grid) > len(grown.grid)
    submitted = runner.invoke(
        app, ["sweep", "refine", str(folder), "--submit", "--no-wait", "--n-boot", "300"]
    )
    assert submitted.exit_code == 0, submitted.output
    assert SweepDir(folder).spec_file.read_text() == spec_to_yaml(written)
    assert "submitted" in submitted.output
    (line,) = [r for r in SweepDir(folder).read_job_lines() if r["event"] == "refine"]
    assert line["first_block"] == len(grown.grid) and line["runs_added"] > 0
    assert line["runs_added"] == sum(len(p["seeds"]) for p in line["proposals"])
    (submit,) = [r for r in SweepDir(folder).read_job_lines() if r["event"] == "submit"]
    sent = {rid for task in submit["tasks"] for rid in task["run_ids"]}
    new = {p.run_id for p in expand_points(written).points} - {
        p.run_id for p in expand_points(held).points
    }
    assert sent == new and pending not in sent  # the refinement's runs only
    # The new runs are not done: refine says so and proposes none of them again.
    again = runner.invoke(app, ["sweep", "refine", str(folder), "--n-boot", "300"])
    assert again.exit_code == 0, again.output
    assert "runs are not done" in again.output and "refinement:" not in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "1"], "Invalid value for '--target': 1.0; it must be above 1"),
        (["--seeds", "0"], "Invalid value for '--seeds': 0; it must be from 1 to 100"),
        (["--levels", "5"], "--levels 5: no such level"),
        (["--where", "v=99"], "selects no runs"),
        (["--tasks-per-gpu", "2", "-o", "{tmp}/grown.yaml"], "tasks_per_gpu"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(8), cells=[(8, 3)]))
    recorded = SweepDir(folder).spec_file.read_text()
    rhmscale = str(Path(sys.executable).with_name("rhmscale"))
    args = [arg.format(tmp=tmp_path) for arg in args]
    command = [rhmscale, "sweep", "refine", str(folder), "--submit", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert SweepDir(folder).spec_file.read_text() == recorded
    assert not (folder / "jobs.jsonl").exists() and not (tmp_path / "grown.yaml").exists()
    result = subprocess.run(
        [rhmscale, "sweep", "refine", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not a sweep folder" in result.stderr


def spent_whole(counts, room):
    """Which proposals (`counts` runs each, in priority order) a budget of `room` runs takes,
    each whole, as grow() spends it."""
    taken = []
    for count in counts:
        taken.append(count <= room)
        room -= count if taken[-1] else 0
    return taken


def refine_rounds(frame, rng, options, target, budget):
    """refine -> run the proposals from the law -> refine ..., within a budget of runs."""
    for _ in range(10):
        found = refinement(frame, options, target)
        runs = frame["run_id"].nunique()
        proposals = found.proposals.to_dict("records")
        taken = spent_whole([len(p["seeds"]) for p in proposals], budget - runs)
        rows = [
            r
            for p, t in zip(proposals, taken, strict=True)
            if t
            for seed in p["seeds"]
            for r in run_rows(rng, int(p["grammar.v"]), int(p["grammar.m"]), p["data.P"], seed)
        ]
        if not rows:
            return frame
        frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    return frame


def covers(frame, options) -> bool:
    exponents = fit(frame, options).exponents
    return bool(((exponents["lo"] <= 1) & (exponents["hi"] >= 1)).all())


@pytest.mark.slow
def test_a_refined_sweep_covers_the_truth_at_least_as_often_as_the_full_grid():
    """Full grid: 9 sizes x 3 seeds per cell. Refined: its first, middle and last sizes, then
    refine's proposals measured from the same law, within half the full grid's runs. Both
    cover the true exponents about 90% of the time; over 40 sweeps one binomial standard
    deviation is 2 hits, which is the slack allowed."""
    rng = np.random.default_rng(7)
    options = FitOptions(n_boot=200)
    full_hits = refined_hits = 0
    reps = 40
    for _ in range(reps):
        full = synthetic_frame(rng, n_sizes=9, seeds=3)
        full_hits += covers(full, options)
        keep = []
        for _, cell in full.groupby(["grammar.v", "grammar.m"]):
            sizes = np.sort(cell["data.P"].unique())
            ends = [sizes[0], sizes[len(sizes) // 2], sizes[-1]]
            keep += list(cell.index[cell["data.P"].isin(ends)])
        budget = full["run_id"].nunique() // 2
        refined = refine_rounds(full.loc[keep], rng, options, 1.25, budget)
        assert budget - 3 < refined["run_id"].nunique() <= budget  # the budget spent
        refined_hits += covers(refined, options)
    assert refined_hits >= full_hits - 2, (refined_hits, full_hits)
    assert refined_hits >= 0.8 * reps


def test_seed_noise_wider_than_a_narrow_bracket_gets_more_seeds():
    """Sizes 10% apart around P*_2 and noisy seeds: the crossing's interval reaches well past
    its bracket, so more sizes would not narrow it; more seeds at the bracket's ends would."""
    rng = np.random.default_rng(9)
    v, m = 8, 3
    centre = true_p_star(v, m, 2)
    sizes = np.round(centre * 1.1 ** np.arange(-6, 7)).astype(int)
    rows = [
        r for P in sizes for seed in range(2) for r in run_rows(rng, v, m, int(P), seed, noise=0.25)
    ]
    found = refinement(pd.DataFrame(rows), FitOptions(n_boot=300, levels="2"), 1.25)
    (point,) = found.points.itertuples()
    assert point.bracket_ratio <= 1.25 and point.P_hi > point.P_right * 1.25  # noise: wide
    seeded = found.proposals[found.proposals["reason"].str.contains("more seeds")]
    assert sorted(seeded["data.P"]) == sorted([int(point.P_left), int(point.P_right)])
    assert all(list(s) == [2, 3] for s in seeded["seeds"])  # new seeds, as many as the cell has
    assert len(found.proposals) == len(seeded)  # no size: the bracket meets the target
    more = refinement(pd.DataFrame(rows), FitOptions(n_boot=300, levels="2"), 1.25, seeds=3)
    assert all(list(s) == [2, 3, 4] for s in more.proposals["seeds"])


def test_refine_until_goes_round_after_round_holding_the_workers(tmp_path, monkeypatch):
    """--until: refine, submit to the living workers (a stand-in that trains whatever the
    backlog holds, from the law), wait, again, until every bracket meets the target; the
    sweep is held (its workers kept) while it runs and let go at the end."""
    import threading
    import time

    import rhmscale.cli.refine as refine_cli
    import rhmscale.sweeps.dispatch as dispatch
    from rhmscale.sweeps.backlog import Backlog, held

    rng = np.random.default_rng(4)
    folder = make_sweep(tmp_path, coarse(rng, cells=[(8, 3)], n_sizes=3, seeds=2))
    sweep = SweepDir(folder)
    monkeypatch.setattr(dispatch, "live_workers", lambda sweep, strict=True: [("local", "1")])
    monkeypatch.setattr(refine_cli, "POLL_S", 0.05)
    stop, rounds, holds = threading.Event(), [], []

    def worker() -> None:
        while not stop.is_set():
            if entries := Backlog(sweep).entries():
                holds.append(held(sweep))
                rows = []
                for entry in entries:  # the backlog's runs, trained as the law says
                    g, data = entry.config["grammar"], entry.config["data"]
                    rows += run_rows(rng, g["v"], g["m"], data["P"], entry.config["seed"])
                write_run_dirs(pd.DataFrame(rows), folder)
                rounds.append(len(entries))
                for entry in entries:
                    Backlog(sweep).remove(entry.run_id)
            time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = CliRunner().invoke(
            app, ["sweep", "refine", str(folder), "--target", "1.5", "--n-boot", "300", "--until"]
        )
    finally:
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert len(rounds) >= 2 and all(rounds) and all(holds), (rounds, holds)
    assert "refine round 2" in result.output
    assert "every bracket meets the target" in result.output
    assert not held(sweep) and not (folder / "hold.json").exists()
    refines = [r for r in sweep.read_job_lines() if r["event"] == "refine"]
    # The stand-in may take a round in two bites (it reads the backlog while the submission is
    # still writing it), so the runs, not the bites, must add up.
    proposed = sum(len(p["seeds"]) for r in refines for p in r["proposals"])
    assert 2 <= len(refines) <= len(rounds) and proposed == sum(rounds), (refines, rounds)
