"""Tuning without SLURM: study specs are validated whole (bad ones exit 2 and leave nothing),
objectives are computed from a run's rows, a study on the debug executor reloads from its
journal in a fresh process, and its tuned recipe reaches a sweep's runs (--params-from)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rhmscale.errors import UserError
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.spec import parse_spec
from rhmscale.tuning.checks import check_search
from rhmscale.tuning.dispatch import submit
from rhmscale.tuning.handoff import with_params
from rhmscale.tuning.spec import parse_study_spec
from rhmscale.tuning.study import (
    make_pruner,
    objective_settled,
    objective_value,
    report_step,
    study_cells,
    trial_config,
)

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
BASE = {
    "grammar": {"L": 2, "m": 2},
    "data": {"P": 8, "n_test": 4},
    "model": {"arch": "tree_unet", "width": 16},
    "train": {"max_steps": 20, "device": "cpu", "checkpoint_every": 10},
    "eval": {"n_samples": 16, "n_evals": 2},
}
STUDY = {
    "name": "cells",
    "base": BASE,
    "grid": {"grammar.v": [4, 8]},
    "search": {"train.lr": {"float": [1.0e-3, 1.0e-1], "log": True}},
    "objective": {"metric": "val/loss", "direction": "minimize"},
    "budget": {"trials": 2},
    "workers": 1,
    "executor": {"kind": "debug"},
    "tracking": {"wandb": "disabled"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"train.lrr": {"float": [0.1, 1]}}}, "unknown key 'train.lrr'"),
        ({"search": {"train.lr": {"float": [0, 1], "log": True}}}, "lower bound above 0"),
        ({"search": {"train.lr": {"float": [1, 0.1]}}}, "the lower must be below"),
        ({"search": {"train.lr": {"float": [0.1, 1], "choices": [1]}}}, "exactly one of"),
        ({"search": {"seed": {"int": [0, 9]}}}, "cannot be searched"),
        ({"search": {"grammar.v": {"choices": [4, 8]}}}, "both searched and in the grid"),
        ({"search": {"model.width": {"int": [0, 16]}}}, "search point model.width=0"),
        ({"enqueue": [{"train.wd": 0.1}]}, "not a searched key"),
        (
            {
                "objective": {"samples_to_learn": {"level": 2}},
                "search": {"train.max_steps": {"int": [10, 20]}},
            },
            "search train.batch_size, not train.max_steps",
        ),  # fmt: skip
        ({"objective": {"metric": "val/loss"}}, "direction"),
        # the objective must be what the runs record, at a level the grammar has (L = 2)
        ({"objective": {"metric": "val/los", "direction": "minimize"}}, "did you mean val/loss"),
        (
            {"objective": {"metric": "gen/novel_acc_l3", "direction": "maximize"}},
            "'gen/novel_acc_l3' is not recorded by the runs (did you mean gen/novel_acc_l2?)",
        ),
        ({"objective": {"samples_to_learn": {"level": 3}}}, "level 3 is deeper than the grammar"),
        ({"objective": {"samples_to_learn": {"level": 1.5}}}, "a grammar level"),
        # every width of the range, not only its ends, must divide into the heads
        (
            {
                "base": BASE | {"model": {"arch": "transformer", "width": 16, "heads": 4}},
                "search": {"model.width": {"int": [16, 64]}},
            },
            "search point model.width=17",
        ),
        # an enqueued value must be one the search could draw
        (
            {"search": {"model.width": {"choices": [16, 24]}}, "enqueue": [{"model.width": 32}]},
            "model.width=32 is not one of its choices [16, 24]",
        ),
        (
            {
                "search": {"model.width": {"int": [16, 64], "step": 8}},
                "enqueue": [{"model.width": 20}],
            },
            "model.width=20 is not on its grid (16 + a multiple of step 8)",
        ),  # fmt: skip
        ({"objective": {"samples_to_learn": {"level": 2, "threshold": 2}}}, "0 < t < 1"),
        ({"budget": {"trials": 0}}, "budget.trials"),
    ],
)
def test_a_bad_study_spec_exits_2_before_anything_is_submitted(tmp_path, change, message):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(STUDY | change))
    root = tmp_path / "runs"
    out = subprocess.run(
        [RHMSCALE, "tune", "submit", str(spec), "--root", str(root)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not root.exists()  # nothing written, nothing submitted


def test_cells_are_studies_unless_shared():
    per_cell = parse_study_spec(STUDY)
    assert [c.study_name for c in study_cells(per_cell)] == [
        "cells/grammar.v=4",
        "cells/grammar.v=8",
    ]
    shared = parse_study_spec(STUDY | {"per_cell": False})
    assert {c.study_name for c in study_cells(shared)} == {"cells"}
    assert len(check_search(per_cell)) == 2


def test_objectives_from_a_runs_rows():
    rows = [
        {"step": 10, "samples_seen": 160, "val/loss": 2.0, "gen/novel_acc_l2": 0.2},
        {"step": 20, "samples_seen": 320, "val/loss": 1.5, "gen/novel_acc_l2": 0.6},
        {"step": 30, "samples_seen": 480, "val/loss": 1.7, "gen/novel_acc_l2": 0.9},
    ]
    accuracy = {"metric": "gen/novel_acc_l2", "direction": "maximize"}
    best = parse_study_spec(STUDY | {"objective": accuracy})
    final = parse_study_spec(STUDY | {"objective": accuracy | {"at": "final"}})
    cell = study_cells(best)[0]
    assert objective_value(best, cell, rows) == 0.6  # at the lowest val/loss
    assert objective_value(final, cell, rows) == 0.9
    learn = parse_study_spec(
        STUDY | {"objective": {"samples_to_learn": {"level": 2}},
                 "search": {"train.batch_size": {"choices": [8, 16, 32]}}}
    )  # fmt: skip
    assert learn.objective.study_direction == "minimize"
    assert objective_value(learn, cell, rows) == 320  # first evaluation at >= 0.5
    # Not learned: behind any trial that did, closer ones ahead, whatever its own batch size.
    cap = 20 * 32  # BASE's max_steps x the largest batch size searched
    assert objective_value(learn, cell, rows[:1]) == cap * (2 - 0.2 / 0.5)
    assert objective_value(learn, cell, [{**rows[0], "gen/novel_acc_l2": 0.0}]) == 2 * cap
    # ... and every trial may see those samples: a smaller batch trains for more steps
    steps = {b: trial_config(learn, cell, {"train.batch_size": b}, {}).train.max_steps
             for b in (8, 16, 32)}  # fmt: skip
    assert steps == {8: 80, 16: 40, 32: 20}
    assert trial_config(best, cell, {"train.lr": 0.01}, {}).train.max_steps == 20
    # learned: more training cannot change the value, so the trial's run stops there
    assert [objective_settled(learn, rows[:n]) for n in (1, 2, 3)] == [False, True, True]
    assert not objective_settled(final, rows)


def test_samples_to_learn_prunes_at_equal_samples_not_equal_steps():
    """Two trials that learn at the same rate per sample, one with a 4x smaller batch: the
    small-batch one is behind at every step but not at any number of samples, so it must not
    be pruned (on a step axis it was, and a study lost every batch-64 trial)."""
    import optuna

    spec = parse_study_spec(
        STUDY | {"objective": {"samples_to_learn": {"level": 3}},
                 "pruner": {"kind": "median", "startup_trials": 1, "warmup_evals": 1},
                 "search": {"train.batch_size": {"choices": [64, 256]}}}
    )  # fmt: skip
    cell = study_cells(spec)[0]

    def rows(batch):  # evaluations every 250 steps; novel accuracy 0.5 at 256k samples
        return [{"step": s, "samples_seen": s * batch, "gen/novel_acc_l3": s * batch / 512_000}
                for s in range(250, 4001, 250)]  # fmt: skip

    def pruned_at(step_of) -> int | None:
        study = optuna.create_study(direction="minimize", pruner=make_pruner(spec))
        done = study.ask()
        for i, row in enumerate(rows(256)[:3]):  # learned at the 4th: settled, not reported
            done.report(objective_value(spec, cell, rows(256)[: i + 1], final=False),
                        step_of(row, i))  # fmt: skip
        study.tell(done, objective_value(spec, cell, rows(256)))
        small = study.ask()
        for i, row in enumerate(rows(64)):
            small.report(objective_value(spec, cell, rows(64)[: i + 1], final=False),
                         step_of(row, i))  # fmt: skip
            if i + 1 > spec.pruner.warmup_evals and small.should_prune():
                return row["step"]
        return None

    assert pruned_at(lambda row, i: report_step(spec, row, i)) is None
    assert pruned_at(lambda row, i: i) == 500  # at evaluation 1: 32k samples against 128k


def test_a_trial_stops_once_its_objective_is_settled(tmp_path):
    """samples_to_learn: a trial's run stops at the evaluation where the level is learned
    (result.json: settled, not pruned), and the trial's value is the samples seen there."""
    goal = {"samples_to_learn": {"level": 1, "threshold": 0.05}}  # chance is about 1/4
    base = BASE | {
        "train": BASE["train"] | {"max_steps": 40},
        "eval": {"n_samples": 64, "every": 10, "n_evals": 2, "min_novel": 1},
    }
    spec = parse_study_spec(
        STUDY | {"grid": {"grammar.v": [4]}, "base": base, "objective": goal,
                 "budget": {"trials": 1}}
    )  # fmt: skip
    for job in submit(spec, tmp_path).jobs:
        job.result()
    import optuna

    from rhmscale.tuning.study import storage

    (trial,) = optuna.load_study(study_name="cells", storage=storage(tmp_path / "cells")).trials
    run = tmp_path / "cells" / "runs" / trial.user_attrs["run_id"]
    result = json.loads((run / "result.json").read_text())
    assert result["settled"] and not result["pruned"] and result["final"]["step"] < 40
    assert trial.state.name == "COMPLETE"
    assert trial.value == result["final"]["samples_seen"]
    import pandas as pd

    from rhmscale.tuning.checks import recorded_metrics

    # what check_search takes an objective's metric against is what the run recorded
    assert set(pd.read_parquet(run / "metrics.parquet").columns) == recorded_metrics(2)
    from rhmscale.tuning.report import study_reports

    (report,) = study_reports(tmp_path / "cells", tmp_path / "report")
    assert report.trials["learned l1"].tolist() == [True]
    assert "study0-curves.png" in [f.name for f in report.figures]  # novel_acc_l1 vs samples
    assert any("above the samples cap, 10,240" in note for note in report.reading)


def test_a_studys_recipe_goes_to_a_sweep_cell_by_cell(tmp_path):
    spec = parse_study_spec(STUDY)
    submitted = submit(spec, tmp_path)
    for job in submitted.jobs:
        job.result()
    folder = tmp_path / "cells"
    # The journal reloads in a fresh process: tune status --json.
    out = subprocess.run(
        [RHMSCALE, "tune", "status", str(folder), "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    studies = {s["name"]: s for s in json.loads(out.stdout)["studies"]}
    assert {n: s["counts"] for n, s in studies.items()} == {
        "cells/grammar.v=4": {"complete": 2},
        "cells/grammar.v=8": {"complete": 2},
    }
    best = {n: s["best_params"]["train.lr"] for n, s in studies.items()}
    sweep = parse_spec(
        {
            "name": "swp",
            "base": BASE | {"data": {"n_test": 4}},
            "grid": [
                {"grammar.v": [4], "data.P": [8, 16], "seed": [0, 1]},
                {"grammar.v": [8], "data.P": [8, 32]},
            ],
        }
    )
    tuned = with_params(sweep, folder)
    lrs = {(p.config.grammar.v, p.config.data.P, p.config.seed): p.config.train.lr
           for p in expand_points(tuned).points}  # fmt: skip
    assert len(lrs) == 6
    assert all(lr == best[f"cells/grammar.v={v}"] for (v, _, _), lr in lrs.items())
    with pytest.raises(UserError, match="varies train.lr"):
        with_params(sweep.model_copy(update={"grid": {"train.lr": [0.1]}}), folder)
    outside = sweep.model_copy(update={"grid": {"grammar.v": [4, 16], "data.P": [8]}})
    with pytest.raises(UserError, match="exactly one tuned cell"):
        with_params(outside, folder)
    # A recipe tuned on one model is not handed to another (matching is by grammar and model).
    wider = sweep.model_copy(update={"base": sweep.base | {"model": {"width": 32}}})
    with pytest.raises(UserError, match="width=32 .* takes the recipe of study cells/grammar"):
        with_params(wider, folder)
    with pytest.warns(UserWarning, match="--params-unlike: .*width=32"):
        taken = with_params(wider, folder, allow_unlike=True)
    assert {p.config.train.lr for p in expand_points(taken).points} == set(best.values())


def test_a_seeded_study_draws_the_same_trials_when_run_again(tmp_path):
    """sampler.seed: two fresh study folders of one spec get the same parameters, trial by
    trial (a worker's stream changes only when it is started again in the same folder)."""
    import optuna

    from rhmscale.tuning.study import storage

    spec = parse_study_spec(STUDY | {"grid": {"grammar.v": [4]}, "budget": {"trials": 3}})
    drawn = []
    for root in (tmp_path / "a", tmp_path / "b"):
        for job in submit(spec, root).jobs:
            job.result()
        study = optuna.load_study(study_name="cells", storage=storage(root / "cells"))
        drawn.append([t.params for t in study.trials])
    assert drawn[0] == drawn[1] and len({p["train.lr"] for p in drawn[0]}) == 3


def test_a_worker_trains_trials_of_one_shape_as_a_pack(tmp_path):
    """With a packing executor the later trials of a pack take the first's shape (model.width)
    and differ in what members may (learning rate, clipping); every trial is told."""
    spec = parse_study_spec(
        STUDY
        | {
            "grid": {"grammar.v": [4]},
            "search": {
                "model.width": {"choices": [16, 32]},
                "train.grad_clip": {"float": [0.1, 1.0]},
                "train.lr": {"float": [1.0e-3, 1.0e-1], "log": True},
            },
            "budget": {"trials": 4},
            "executor": {"kind": "debug", "pack": True, "runs_per_task": 2},
        }
    )
    for job in submit(spec, tmp_path).jobs:
        job.result()
    import optuna

    from rhmscale.tuning.study import storage

    trials = optuna.load_study(study_name="cells", storage=storage(tmp_path / "cells")).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    for first, second in (trials[0:2], trials[2:4]):  # asked together, trained together
        assert first.params["model.width"] == second.params["model.width"]
        assert first.params["train.grad_clip"] != second.params["train.grad_clip"]
        assert first.params["train.lr"] != second.params["train.lr"]
        log = (tmp_path / "cells" / "runs" / first.user_attrs["run_id"] / "run.log").read_text()
        assert "training 2 run(s) from step 0" in log


def test_a_trials_wandb_run_says_study_trial_and_parameters(tmp_path):
    """Offline W&B, read back from the .wandb log: group = study, job type trial, and the
    trial's number and parameters in the run's config."""
    from rhmscale.results.wandb_log import read_offline_log

    spec = parse_study_spec(
        STUDY
        | {
            "grid": {"grammar.v": [4]},
            "budget": {"trials": 1},
            "tracking": {"wandb": "offline"},
        }  # fmt: skip
    )
    for job in submit(spec, tmp_path).jobs:
        job.result()
    (log_file,) = (tmp_path / "cells" / "runs").glob("*/wandb/offline-run-*/run-*.wandb")
    log = read_offline_log(log_file)
    assert (log.group, log.job_type) == ("cells", "trial")
    trial = log.config["tracking.trial"]
    assert trial["number"] == 0 and trial["study"] == "cells"
    assert trial["params"]["train.lr"] == log.config["train.lr"]


@pytest.mark.slow
def test_tune_report_writes_best_trials_figures_and_a_wandb_run(tmp_path):
    from rhmscale.results.wandb_log import read_offline_log

    spec = parse_study_spec(STUDY | {"budget": {"trials": 3}})
    for job in submit(spec, tmp_path).jobs:
        job.result()
    out = tmp_path / "report"
    out_proc = subprocess.run(
        [RHMSCALE, "tune", "report", str(tmp_path / "cells"), "-o", str(out), "--wandb", "offline"],
        capture_output=True,
        text=True,
    )
    assert out_proc.returncode == 0, out_proc.stderr
    best = json.loads((out / "best.json").read_text())
    assert set(best) == {"cells/grammar.v=4", "cells/grammar.v=8"}
    assert all("train.lr" in b["params"] and b["cell"] for b in best.values())
    text = (out / "report.md").read_text()
    assert text.count("Best: trial") == 2 and "## Study spec" in text
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 6  # 3 trials in each of 2 studies
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "study0-history.png" in figures and "study1-history.png" in figures
    assert "study0-curves.png" in figures and "study1-curves.png" in figures
    (log_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    log = read_offline_log(log_file)
    assert (log.group, log.job_type) == ("cells", "tune-report")


@pytest.mark.parametrize(
    ("executor", "trials", "startup"),
    [({"kind": "debug"}, 64, 10), ({"kind": "debug"}, 8, 4),
     ({"kind": "local", "pack": True, "runs_per_task": 16}, 64, 32),
     ({"kind": "local", "pack": True, "runs_per_task": 16}, 400, 160)],
)  # fmt: skip
def test_tpe_starts_at_random_for_packs_not_trials(executor, trials, startup):
    """A pack's trials share one draw of the shape keys: TPE's random start counts packs (with
    10 trials, one pack of 16 ended it and TPE proposed that shape again)."""
    from rhmscale.tuning.study import make_sampler

    spec = parse_study_spec(STUDY | {"executor": executor, "budget": {"trials": trials}})
    assert make_sampler(spec, 0)._n_startup_trials == startup
