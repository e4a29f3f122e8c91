"""Sweep specs: parsing, grid expansion, validation of every point, presets, plan/status."""

import json
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rhmscale.cli import app
from rhmscale.cli.sweep import cell_runs
from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.labels import cell_label, run_label
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import SweepDir
from rhmscale.sweeps.dispatch import prepare
from rhmscale.sweeps.executors import slurm_parameters
from rhmscale.sweeps.grid import expand_points, logspace_ints
from rhmscale.sweeps.grouping import group_tasks
from rhmscale.sweeps.spec import ExecutorSpec, load_spec, parse_spec, preset_names
from rhmscale.sweeps.status import sweep_status

BASE = {
    "grammar": {"v": 4, "m": 2, "L": 3},
    "data": {"P": 32, "n_test": 16},
    "model": {"arch": "tree_unet", "width": 16},
    "train": {"max_steps": 10, "device": "cpu"},
    "tracking": {"wandb": "disabled"},
}


def spec(grid, **extra):
    return parse_spec({"name": "t", "base": BASE, "grid": grid, **extra})


def expand(sweep):
    """The sweep's distinct runs' configs."""
    return [point.config for point in expand_points(sweep).points]


def test_lists_multiply_and_every_point_is_a_valid_config():
    configs = expand(spec({"data.P": [8, 16], "seed": [0, 1, 2]}))
    assert len(configs) == 6
    assert {(c.data.P, c.seed) for c in configs} == {(p, s) for p in (8, 16) for s in (0, 1, 2)}
    assert all(c.grammar.v == 4 and c.model.arch == "tree_unet" for c in configs)
    assert len({c.run_id() for c in configs}) == 6


def test_runs_are_named_by_their_cell_size_seed_and_the_other_keys_the_grid_varies():
    """W&B names: v, m, s, L, P and seed always; a key besides those only where the grid varies
    it (by its last part, the whole key where that would read as another letter)."""
    plain = expand(spec({"grammar.v": [4, 8], "data.P": [8, 16], "seed": [0, 1]}))
    assert {c.tracking.name_keys == [] for c in plain} == {True}
    labels = {run_label(c) for c in plain}
    assert labels >= {"v=4 m=2 s=2 L=3 P=8 seed=0", "v=8 m=2 s=2 L=3 P=16 seed=1"}
    grid = {"model.width": [16, 32], "grammar.seed": [0, 1], "train.lr": [1e-3], "seed": [0]}
    wide = expand(spec(grid))
    assert {tuple(c.tracking.name_keys) for c in wide} == {("model.width", "grammar.seed")}
    one = next(c for c in wide if c.model.width == 32 and c.grammar.seed == 1)
    assert cell_label(one) == "v=4 m=2 s=2 L=3 width=32 grammar.seed=1"
    assert run_label(one) == "v=4 m=2 s=2 L=3 width=32 grammar.seed=1 P=32 seed=0"
    # The name is bookkeeping: the run ids are those of the same configs without it.
    bare = [c.model_copy(update={"tracking": c.tracking.model_copy(update={"name_keys": []})})
            for c in wide]  # fmt: skip
    assert [c.run_id() for c in bare] == [c.run_id() for c in wide]
    with pytest.raises(UserError, match="tracking.name_keys: unknown keys"):
        build_config({}, ["tracking.name_keys=[model.wdith]"])


def test_a_cell_reads_the_same_in_wandb_in_sweep_status_and_in_the_fit_tables(tmp_path):
    """One rule names a cell everywhere (labels.py): a run's W&B `cell`, its cell in `sweep
    status`, and the "cell" column the fit groups by."""
    import pandas as pd

    from rhmscale.results.cells import with_cells
    from rhmscale.sweeps.status import sweep_status

    sweep = spec({"model.width": [16, 32], "train.lr": [0.001, 0.003], "seed": [0, 1]})
    configs = expand(sweep)
    status = sweep_status(tmp_path / sweep.name, sweep)
    in_status = {r.run_id: status.cell_label(dict(r.cell)) for r in status.runs}
    table = with_cells(pd.DataFrame([c.flat() | {"run_id": c.run_id()} for c in configs]))
    in_tables = dict(zip(table["run_id"], table["cell"], strict=True))
    for c in configs:
        assert in_status[c.run_id()] == in_tables[c.run_id()] == cell_label(c), c.run_id()
    assert "v=4 m=2 s=2 L=3 width=32 lr=0.003" in in_tables.values()


def test_logspace_rounds_to_distinct_integers():
    assert logspace_ints(16, 256, 5) == [16, 32, 64, 128, 256]
    assert logspace_ints(1, 3, 10) == [1, 2, 3]  # duplicates after rounding dropped
    assert logspace_ints(10, 10, 1) == [10]
    configs = expand(spec({"data.P": {"logspace": [8, 128, 5]}}))
    assert sorted(c.data.P for c in configs) == [8, 16, 32, 64, 128]


def test_bad_logspace_is_a_user_error():
    with pytest.raises(UserError, match="logspace"):
        expand(spec({"data.P": {"logspace": [8, 128]}}))
    with pytest.raises(UserError, match="logspace"):
        expand(spec({"data.P": {"logspace": [0, 128, 3]}}))
    with pytest.raises(UserError, match="only one allowed"):
        expand(spec({"data.P": {"linspace": [8, 128, 3]}}))


def test_zipped_keys_vary_together():
    configs = expand(spec({"zip": [{"grammar.v": [4, 8], "grammar.m": [2, 3]}], "seed": [0, 1]}))
    assert {(c.grammar.v, c.grammar.m) for c in configs} == {(4, 2), (8, 3)}
    assert len(configs) == 4


def test_zip_lengths_must_match():
    with pytest.raises(UserError, match="equal lengths"):
        expand(spec({"zip": [{"grammar.v": [4, 8], "grammar.m": [2]}]}))


def test_grid_blocks_are_a_union():
    configs = expand(
        spec([{"grammar.v": 4, "data.P": [8, 16]}, {"grammar.v": 8, "data.P": [32, 64]}])
    )
    assert sorted((c.grammar.v, c.data.P) for c in configs) == [(4, 8), (4, 16), (8, 32), (8, 64)]


def test_identical_points_collapse_by_run_id():
    expansion = expand_points(spec({"data.P": [8, 8, 16]}))
    assert expansion.n_grid_points == 3 and len(expansion.points) == 2


def test_unknown_grid_key_names_the_nearest_valid_key():
    with pytest.raises(UserError, match=r"unknown key 'grammar\.vv'.*did you mean 'grammar\.v'"):
        expand(spec({"grammar.vv": [4, 8]}))


def test_unknown_base_key_is_named():
    with pytest.raises(UserError, match="did you mean 'train.max_steps'"):
        expand(parse_spec({"name": "t", "base": {"train": {"max_step": 3}}, "grid": {"seed": [0]}}))


def test_tracking_keys_may_not_be_grid_keys():
    with pytest.raises(UserError, match="tracking"):
        expand(spec({"tracking.project": ["a", "b"]}))


def test_a_failing_point_is_named_with_its_values():
    with pytest.raises(UserError, match=r"point 2 \(data\.P=600\).*exceeds") as err:
        expand(spec({"data.P": [8, 600]}))
    assert "data.P" in str(err.value)


def test_empty_grid_and_empty_lists_are_errors():
    with pytest.raises(UserError, match="empty"):
        expand(spec({}))
    with pytest.raises(UserError, match="empty list"):
        expand(spec({"seed": []}))


@pytest.mark.parametrize("name", ["a/b", "../x", "x;rm -rf", "a b", "$(x)", "", "-x"])
def test_sweep_names_with_path_or_shell_characters_are_rejected(name):
    with pytest.raises(UserError, match="sweep name"):
        parse_spec({"name": name, "grid": {"seed": [0]}})


def test_unknown_spec_keys_and_executor_fields_are_rejected():
    with pytest.raises(UserError, match="grids"):
        parse_spec({"name": "t", "grids": {}})
    with pytest.raises(UserError, match="executor.kind"):
        parse_spec({"name": "t", "executor": {"kind": "kubernetes"}})


def test_sbatch_options_are_checked_against_a_known_set():
    ok = ExecutorSpec(kind="slurm", sbatch={"reservation": "r1", "mail_type": "END"})
    params = slurm_parameters(ok.model_copy(update={"qos": "high", "partition": "gpu"}), "t")
    assert params["additional_parameters"] == {"reservation": "r1", "mail_type": "END"}
    assert params["qos"] == "high" and params["partition"] == "gpu"
    with pytest.raises(ValueError, match="did you mean 'reservation'"):
        ExecutorSpec(sbatch={"reservaton": "r1"})
    with pytest.raises(ValueError, match="set executor.partition instead"):
        ExecutorSpec(sbatch={"partition": "gpu"})  # set by a field, not by hand


def test_tracking_is_merged_and_the_group_defaults_to_the_name():
    configs = expand(spec({"seed": [0]}, tracking={"tags": ["x"]}))
    assert configs[0].tracking.group == "t" and configs[0].tracking.tags == ["x"]
    assert configs[0].tracking.wandb == "disabled"  # from base
    with pytest.raises(UserError, match="tracking"):
        spec({"seed": [0]}, tracking={"projct": "x"})


def test_presets_load_and_expand():
    assert {"quick", "paper"} <= set(preset_names())
    quick = expand_points(load_spec("quick"))
    assert len(quick.points) == 20  # the demo: 2 v x 5 P x 2 seeds
    assert all(p.config.train.device == "cpu" for p in quick.points)
    for name in ("paper", "paper-transformer"):
        paper = load_spec(name)
        configs = expand(paper)
        assert {c.grammar.s for c in configs} == {2, 3}
        assert {c.grammar.L for c in configs} == {3, 4}
        assert {c.grammar.v for c in configs} == {16, 32, 64}
        assert {c.grammar.m for c in configs} == {2, 3, 4}
        assert {c.seed for c in configs} == {0, 1, 2}
        assert paper.executor.kind == "slurm" and paper.executor.gpus_per_task == 1
        assert paper.executor.pack
    assert {c.model.arch for c in expand(load_spec("paper"))} == {"tree_unet"}
    assert {c.model.arch for c in expand(load_spec("paper-transformer"))} == {"transformer"}
    lite = expand_points(load_spec("paper-lite")).points
    assert len(lite) == 189 and {p.config.grammar.L for p in lite} == {3}
    # every cell spans P_1/8 .. 4 P_L (P_k = v m^(k+1))
    for c in [*expand(load_spec("paper")), *(p.config for p in lite)]:
        v, m, L = c.grammar.v, c.grammar.m, c.grammar.L
        assert round(v * m**2 / 8) <= c.data.P <= 4 * v * m ** (L + 1)


def test_the_spec_argument_names_every_preset():
    from rhmscale.cli.options import SpecArg

    help_text = SpecArg.__metadata__[0].help
    assert all(name in help_text for name in preset_names())


def test_load_spec_from_a_file_and_a_missing_one(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "f", "base": BASE, "grid": {"seed": [0, 1]}}))
    assert len(expand(load_spec(path))) == 2
    with pytest.raises(UserError, match="presets"):
        load_spec(tmp_path / "nope.yaml")


def test_tasks_group_runs():
    items = [{"i": i, "config": {}} for i in range(7)]
    assert [len(t) for t in group_tasks(items, ExecutorSpec(kind="slurm", runs_per_task=3))] == [
        3,
        3,
        1,
    ]
    local = group_tasks(items, ExecutorSpec(kind="local", workers=2))
    assert len(local) == 2 and sorted(i["i"] for t in local for i in t) == list(range(7))
    assert len(group_tasks(items, ExecutorSpec(kind="debug"))) == 1


def fake_done(sweep_dir, run_id):
    """A finished run's files as the store checks them: a readable result, whole metrics."""
    store = SweepDir(sweep_dir).run_dir(run_id)
    store.write_metrics([{"step": 1}])
    atomic_write_json(store.result, {"run_id": run_id, "final": {"step": 1}})


def test_prepare_skips_done_runs_and_status_reads_files(tmp_path):
    s = spec({"data.P": [8, 16], "seed": [0, 1]})
    points = expand_points(s).points
    sweep = tmp_path / "t"
    fake_done(sweep, points[0].run_id)
    atomic_write_json(
        sweep / "runs" / points[1].run_id / "failed.json",
        {"error": "RuntimeError", "message": "disk on fire"},
    )
    ckpt = sweep / "runs" / points[2].run_id / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    zipfile.ZipFile(ckpt, "w").close()  # whole, as torch.save's zip files are
    prepared = prepare(s, tmp_path)
    assert set(prepared.run_ids) == {p.run_id for p in points[1:]}
    status = sweep_status(sweep, s)
    assert status.counts == {"done": 1, "failed": 1, "interrupted": 1, "pending": 1}
    failed = [r for r in status.runs if r.state == "failed"][0]
    assert failed.message == "RuntimeError: disk on fire"
    # A cancelled submission shows its unfinished runs as cancelled.
    SweepDir(sweep).append_job_line(
        {
            "event": "submit",
            "kind": "slurm",
            "tasks": [{"job_id": "999999_0", "run_ids": [points[3].run_id]}],
        },
    )
    SweepDir(sweep).append_job_line({"event": "cancel", "job_ids": ["999999"]})
    assert sweep_status(sweep, s, query_queue=False).counts["cancelled"] == 1


def test_cli_plan_and_errors(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "f", "base": BASE, "grid": {"seed": [0, 1]}}))
    runner = CliRunner()
    out = runner.invoke(app, ["sweep", "plan", str(path), "--root", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    assert "to submit" in out.output and "2 runs" in out.output


def test_cli_user_errors_exit_2_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "f", "base": BASE, "grid": {"grammar.vv": [1]}}))
    cli = Path(sys.executable).with_name("rhmscale")
    out = subprocess.run([str(cli), "sweep", "plan", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "did you mean 'grammar.v'" in out.stderr and "Traceback" not in out.stderr
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "g", "base": BASE, "grid": {"seed": [0]}}))
    out = subprocess.run(
        [str(cli), "sweep", "submit", str(good), "-e", "slurm", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 2 and "sbatch" in out.stderr, out.stderr
    assert not (tmp_path / "g" / "jobs.jsonl").exists()


def test_status_json(tmp_path):
    s = spec({"seed": [0, 1]})
    from rhmscale.sweeps.dispatch import submit_prepared

    prepared = prepare(s, tmp_path, executor={"kind": "local"}, states=set())
    submit_prepared(prepared)  # nothing to submit: only writes sweep.yaml
    fake_done(tmp_path / "t", expand_points(s).points[0].run_id)
    out = CliRunner().invoke(app, ["sweep", "status", str(tmp_path / "t"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["counts"]["done"] == 1 and data["counts"]["pending"] == 1


@pytest.mark.slow
def test_local_executor_runs_a_sweep_end_to_end(tmp_path):
    from rhmscale.sweeps.dispatch import submit, wait

    tiny = {
        **BASE,
        "grammar": {"v": 4, "m": 2, "L": 2},
        "data": {"P": 8, "n_test": 4},
        "train": {"max_steps": 10, "batch_size": 8, "warmup_steps": 0, "device": "cpu"},
        "eval": {"n_samples": 8, "n_evals": 1},
    }
    s = parse_spec(
        {"name": "loc", "base": tiny, "grid": {"seed": [0, 1]}, "executor": {"workers": 2}}
    )
    submission = submit(s, tmp_path)
    assert len(submission.jobs) == 2 and submission.record["kind"] == "local"
    assert not wait(submission)
    assert sweep_status(tmp_path / "loc", s).counts == {"done": 2}
    assert submit(s, tmp_path).record is None


@pytest.mark.slow
def test_one_worker_trains_compiled_packs_of_two_shapes(tmp_path):
    """Two vocabulary sizes are two pack shapes, trained one after another by one worker with
    a compiled step. A recompile for the second used to turn its sizes symbolic, which vmap's
    batched tensors refuse ("Cannot call sizes() on tensor with symbolic sizes"): every run
    of the second pack failed. Inductor on the CPU: about a minute and a half."""
    from rhmscale.sweeps.dispatch import submit, wait

    base = {
        **BASE,
        "grammar": {"m": 2, "s": 2, "L": 2},
        "data": {"P": 16, "n_test": 8},
        "model": {"arch": "tree_unet", "width": 16},
        "train": {"max_steps": 20, "batch_size": 16, "device": "cpu", "compile": "default"},
        "eval": {"n_samples": 16, "n_evals": 2},
    }
    executor = {"kind": "local", "cpus_per_task": 2, "runs_per_task": 4, "pack": True}
    s = parse_spec(
        {
            "name": "shapes",
            "base": base,
            "grid": {"grammar.v": [4, 8], "seed": [0, 1]},
            "executor": executor | {"workers": 1},
        }
    )
    submission = submit(s, tmp_path)
    assert len(submission.jobs) == 1  # one worker process trains both packs
    assert not wait(submission)
    assert sweep_status(tmp_path / "shapes", s).counts == {"done": 4}
    logs = [p.read_text() for p in (tmp_path / "shapes" / "runs").glob("*/run.log")]
    assert all("compile default" in log for log in logs)


def _append_many(path, worker, n):
    for i in range(n):
        SweepDir(path).append_job_line(
            {"event": "note", "worker": worker, "i": i, "pad": "x" * 500}
        )


def test_jobs_log_appends_from_many_processes_do_not_interleave(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = (tmp_path / "jobs.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["pad"] for line in lines)
    assert len(SweepDir(tmp_path).read_job_lines()) == 200


def test_a_submission_refuses_to_guess_when_squeue_cannot_answer(tmp_path, monkeypatch):
    s = spec({"seed": [0, 1]})
    rid = expand_points(s).points[0].run_id
    SweepDir(tmp_path / "t").append_job_line(
        {"event": "submit", "kind": "slurm", "tasks": [{"job_id": "5_0", "run_ids": [rid]}]},
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue
    with pytest.raises(UserError, match="squeue"):
        prepare(s, tmp_path)
    status = sweep_status(tmp_path / "t", s)  # status still answers, and says what it lacks
    assert status.counts == {"unknown": 1, "pending": 1}  # the submitted run may be queued
    assert status.notes[0].startswith("SLURM did not answer (squeue is not on PATH)")


def test_executor_compile_is_an_error_that_says_where_compile_went(tmp_path):
    with pytest.raises(UserError, match=r"set base: \{train: \{compile: off\}\}"):
        parse_spec(
            {"name": "t", "base": BASE, "grid": {"seed": [0]}, "executor": {"compile": False}}
        )
    path = tmp_path / "old.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "old", "base": BASE, "grid": {"seed": [0]}, "executor": {"compile": "auto"}}
        )
    )
    cli = str(Path(sys.executable).with_name("rhmscale"))
    for command in ("plan", "submit"):
        out = subprocess.run(
            [cli, "sweep", command, str(path), "--root", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "set base: {train: {compile: auto}} in the spec instead" in out.stderr
    assert not (tmp_path / "old").exists()  # nothing submitted, nothing written
    # Compilation is a run setting: a spec sets it in its base.
    configs = expand(
        spec({"seed": [0]}, base={**BASE, "train": {**BASE["train"], "compile": "off"}})
    )
    assert configs[0].train.compile == "off"


def test_presets_set_no_executor_compile():
    from importlib import resources

    for name in preset_names():
        text = (resources.files("rhmscale.sweeps") / "presets" / f"{name}.yaml").read_text()
        assert "compile" not in (yaml.safe_load(text).get("executor") or {}), name


def test_status_groups_runs_by_their_cell_of_science_keys(tmp_path):
    """Two cells that differ only in model.width are two rows, told apart by a width column."""
    s = spec({"model.width": [16, 32], "data.P": [8, 16], "seed": [0, 1]})
    status = sweep_status(tmp_path / "t", s, query_queue=False)
    cells = status.cells()
    assert len(cells) == 2 and [len(c.runs) for c in cells] == [4, 4]
    assert [c.cell["model.width"] for c in cells] == [16, 32]
    assert status.varying_keys() == ["model.width"]
    by_section = spec({"model": [{"arch": "tree_unet", "width": w} for w in (16, 32)]})
    status_by_section = sweep_status(tmp_path / "t", by_section, query_queue=False)
    assert [c.cell["model.width"] for c in status_by_section.cells()] == [16, 32]
    assert set(status.to_json()["cells"]) == {
        "v=4 m=2 s=2 L=3 width=16",
        "v=4 m=2 s=2 L=3 width=32",
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": BASE, "grid": {"model.width": [16, 32]}}))
    out = CliRunner().invoke(app, ["sweep", "plan", str(path), "--root", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "width" in out.output and "2 runs" in out.output


def test_retry_takes_the_sweep_folder_and_checks_its_name(tmp_path):
    from rhmscale.sweeps.dispatch import retry, submit_prepared

    s = spec({"seed": [0, 1]})
    submit_prepared(prepare(s, tmp_path, executor={"kind": "local"}, states=set()))
    assert retry(tmp_path / "t").record is None  # nothing failed, interrupted or cancelled
    (tmp_path / "t").rename(tmp_path / "renamed")
    with pytest.raises(UserError, match="its folder must be named so"):
        retry(tmp_path / "renamed")


def test_bad_executor_overrides_and_points_write_nothing(tmp_path):
    from rhmscale.sweeps.dispatch import submit

    with pytest.raises(UserError, match="runs_per_task"):
        submit(spec({"seed": [0]}), tmp_path, executor={"runs_per_task": 0})
    with pytest.raises(UserError, match="exceeds"):
        submit(spec({"data.P": [8, 600]}), tmp_path)
    assert not (tmp_path / "t").exists()


def test_runs_that_training_refuses_are_recorded_as_failed(tmp_path, monkeypatch):
    """Training raises input errors instead of writing failed.json; the worker writes it, so
    that status shows the failure with its message, and the runs leave the backlog."""
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps import job
    from rhmscale.sweeps.backlog import Backlog
    from rhmscale.training.runs import Runs

    s = spec({"seed": [0, 1]})
    prepared = prepare(s, tmp_path, executor={"kind": "debug"})
    sweep = SweepDir(tmp_path / "t")
    Backlog(sweep).put([item for task in prepared.tasks for item in task])

    def refuse(*args, **kwargs):
        raise UserError("train.device=cuda but no GPU is visible here")

    monkeypatch.setattr(Runs, "train", refuse)
    monkeypatch.setattr(job, "set_threads", lambda threads: threads)  # leave torch's alone
    monkeypatch.setattr(job, "start_compile_early", lambda first, slots: None)
    with pytest.raises(RuntimeError, match="2 of 2 runs failed"):
        job.SweepWorker()(str(sweep.path), 2)
    status = sweep_status(tmp_path / "t", s, query_queue=False)
    assert status.counts == {"failed": 2}
    assert all(
        r.message == "UserError: train.device=cuda but no GPU is visible here" for r in status.runs
    )
    assert Backlog(sweep).entries() == []


@pytest.mark.slow
def test_local_workers_take_each_run_of_the_backlog_once(tmp_path):
    """Three local workers, ten runs in slots of two: every run is set up and trained by
    exactly one worker, the backlog ends empty and every worker says it ended."""
    from rhmscale.sweeps.dispatch import submit, wait

    base = {
        **BASE,
        "grammar": {"m": 2, "s": 2, "L": 2},
        "data": {"n_test": 8},
        "model": {"arch": "tree_unet", "width": 8},
        "train": {"max_steps": 10, "batch_size": 8, "device": "cpu"},
        "eval": {"n_samples": 8, "n_evals": 1},
    }
    executor = {"kind": "local", "runs_per_task": 2, "pack": True, "workers": 3}
    s = parse_spec(
        {
            "name": "queue",
            "base": base,
            "grid": {"grammar.v": [4], "data.P": [8, 12, 16, 20, 24], "seed": [0, 1]},
            "executor": executor,
        }
    )
    submission = submit(s, tmp_path)
    assert len(submission.jobs) == 3 and submission.n_submitted == 10
    assert not wait(submission)
    assert sweep_status(tmp_path / "queue", s).counts == {"done": 10}
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "queue" / "runs").glob("*/run.log")}
    assert len(logs) == 10
    for run_id, log in logs.items():  # set up once, trained from one slot, done once
        assert log.count(f"run {run_id} on {socket.gethostname()} (job ") == 1
        assert log.count("run(s) from step") + log.count(f"run {run_id} took slot") == 1
        assert log.count(f"run {run_id} done") == 1
    assert not list((tmp_path / "queue" / "backlog").glob("*.json"))
    lines = [
        json.loads(line) for line in (tmp_path / "queue" / "jobs.jsonl").read_text().splitlines()
    ]
    assert sum(line["event"] == "worker-exit" for line in lines) == 3


def test_workers_share_one_gpu_each(monkeypatch):
    from rhmscale.sweeps.grouping import local_workers

    with pytest.raises(ValueError, match="executor.shards_per_gpu"):  # SLURM: GPU shards
        ExecutorSpec(kind="slurm", gpus_per_task=1, tasks_per_gpu=2)
    with pytest.raises(ValueError, match="gpus_per_task: 1"):
        ExecutorSpec(kind="local", gpus_per_task=2, tasks_per_gpu=2)
    with pytest.raises(UserError, match="tasks_per_gpu"):
        parse_spec({"name": "x", "executor": {"kind": "local", "tasks_per_gpu": 2}})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_workers(ExecutorSpec(kind="local", gpus_per_task=1, tasks_per_gpu=3)) == 6
    assert local_workers(ExecutorSpec(kind="local", gpus_per_task=1)) == 2


def test_another_spec_under_the_same_sweep_name_is_refused(tmp_path):
    from rhmscale.sweeps.dispatch import submit, wait

    tiny = {
        **BASE,
        "grammar": {"v": 4, "m": 2, "L": 2},
        "data": {"P": 8, "n_test": 4},
        "train": {"max_steps": 5, "batch_size": 8, "warmup_steps": 0, "device": "cpu"},
        "eval": {"n_samples": 8, "n_evals": 1},
    }
    first = {"name": "clash", "base": tiny, "grid": {"seed": [0]}, "executor": {"kind": "debug"}}
    assert not wait(submit(parse_spec(first), tmp_path))  # the debug executor runs on wait
    folder = tmp_path / "clash"
    recorded = (folder / "sweep.yaml").read_text()
    runs = sorted(p.name for p in (folder / "runs").iterdir())
    other = first | {"grid": {"seed": [0], "data.P": [16]}}
    with pytest.raises(UserError, match="holds sweep 'clash' from another spec"):
        submit(parse_spec(other), tmp_path)
    with pytest.raises(UserError, match="from another spec"):
        prepare(parse_spec(other), tmp_path)  # sweep plan says so too
    assert (folder / "sweep.yaml").read_text() == recorded
    assert sorted(p.name for p in (folder / "runs").iterdir()) == runs
    # The same runs under other executor or tracking settings are the same sweep.
    same = first | {"tracking": {"wandb": "disabled", "tags": ["again"]}}
    assert submit(parse_spec(same), tmp_path).record is None


def test_where_submits_the_selected_cells_and_leaves_the_others_pending(tmp_path):
    """`sweep plan|submit --where`: a sweep submitted a part at a time into one folder."""
    s = spec({"grammar.v": [8, 16], "data.P": [8, 16]})
    points = {}
    for point in expand_points(s).points:
        points.setdefault(point.config.grammar.v, []).append(point.run_id)
    assert cell_runs(s, "") is None
    assert cell_runs(s, "grammar.v=8|16") == set(points[8] + points[16])
    assert set(prepare(s, tmp_path, runs=cell_runs(s, "v=16")).run_ids) == set(points[16])
    for run_id in points[16]:
        fake_done(tmp_path / "t", run_id)
    assert prepare(s, tmp_path, runs=cell_runs(s, "v=16")).run_ids == []  # done: nothing to do
    assert set(prepare(s, tmp_path).run_ids) == set(points[8])  # the other part, later
    with pytest.raises(UserError, match=r"selects no runs; v is 8, 16"):
        cell_runs(s, "v=32")
    with pytest.raises(UserError, match="unknown key 'widht'"):
        cell_runs(s, "widht=8")


def test_a_logspace_of_formulas_gives_each_cell_its_own_range():
    """The coarse start for `sweep refine`: 4 sizes per cell from P_1/4 to 4 P_L."""
    sweep = spec(
        {
            "grammar.v": [4, 8],
            "grammar.m": [2],
            "data.P": {"logspace": ["v*m^2/4", "4*v*m^(L+1)", 4]},
            "seed": [0, 1],
        }
    )
    sizes: dict[int, set[int]] = {}
    for config in expand(sweep):
        sizes.setdefault(config.grammar.v, set()).add(config.data.P)
    for v, found in sizes.items():
        assert sorted(found) == logspace_ints(v * 4 / 4, 4 * v * 2**4, 4)
    assert len(expand(sweep)) == 2 * 4 * 2


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (["v*m^^2", 64, 3], "is not a formula"),
        (["k*v", 64, 3], "'k' is not allowed"),
        (["__import__('os')", 64, 3], "is not allowed"),
        (["v", "v/8", 3], "at v=4, m=2, s=2, L=3 (bounds 4, 0.5)"),
    ],
)
def test_a_bad_formula_logspace_is_a_user_error(bounds, message):
    with pytest.raises(UserError, match=re.escape(message)):
        expand(spec({"data.P": {"logspace": bounds}}))
    with pytest.raises(UserError, match="cannot be zipped"):
        expand(spec({"zip": [{"data.P": {"logspace": ["v", "2*v", 2]}, "seed": [0, 1]}]}))
