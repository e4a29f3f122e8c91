"""Every file of the store, damaged in every way a file can be (issue 31, rules 1 and 5): links
to /dev/zero and /dev/urandom, FIFOs, huge sparse files, folders, binary garbage, text in a
parquet, JSON cut short, bytes that are not UTF-8. A damaged run is corrupt, named with the
reason, to status, collect and fit alike, and the command goes on with the others in seconds
and little memory; a damaged sweep or study file ends the command with exit 2 naming it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rhmscale.store.atomic import atomic_write_json, atomic_write_text
from rhmscale.store.folders import RunDir, SweepDir

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
GB = 1024**3


def link(target):
    def damage(path):
        path.unlink()
        path.symlink_to(target)

    return damage


def fifo(path):
    path.unlink()
    os.mkfifo(path)


def sparse(path):
    os.truncate(path, 100 * GB)  # a hole: no disk used, 100 GB to a reader


def folder(path):
    path.unlink()
    path.mkdir()


def cut_short(path):
    path.write_bytes(path.read_bytes()[:-12])


def not_utf8(path):
    path.write_bytes(b'{"run_id": "\xff\xfe", "final": {}}')


def garbage(path):
    path.write_bytes(b"PAR1" + np.random.default_rng(0).bytes(4096) + b"PAR1")


def text(path):
    path.write_text("step,val/loss\n1,0.5\n")


def text_column(path):
    frame = pd.read_parquet(path)
    frame["val/loss"] = frame["val/loss"].astype(str)
    frame.to_parquet(path)


# (file, how, what the run's message says)
DAMAGES = [
    ("result.json", link("/dev/zero"), "result.json is not a regular file (a character device)"),
    ("result.json", link("/dev/urandom"), "result.json is not a regular file (a character"),
    ("result.json", fifo, "result.json is not a regular file (a FIFO)"),
    ("result.json", sparse, "result.json is 100 GB, more than the 64 MB a result can be"),
    ("result.json", folder, "result.json is not a regular file (a folder)"),
    ("result.json", link("nowhere"), "result.json is a link to nothing"),
    ("result.json", cut_short, "result.json is not JSON (line"),
    ("result.json", not_utf8, "result.json is not UTF-8 text (line 1, byte 12)"),
    ("result.json", garbage, "result.json is not UTF-8 text"),
    ("metrics.parquet", link("/dev/zero"), "metrics.parquet is not a regular file (a character"),
    ("metrics.parquet", link("/dev/urandom"), "metrics.parquet is not a regular file (a char"),
    ("metrics.parquet", fifo, "metrics.parquet is not a regular file (a FIFO)"),
    ("metrics.parquet", sparse, "metrics.parquet is 100 GB, more than the 256 MB"),
    ("metrics.parquet", garbage, "metrics.parquet is not a parquet file"),
    ("metrics.parquet", text, "metrics.parquet is not a parquet file"),
    ("metrics.parquet", text_column, "metrics.parquet holds val/loss that are not numbers"),
    ("config.json", fifo, "config.json is not a regular file (a FIFO)"),
    ("config.json", link("/dev/zero"), "config.json is not a regular file (a character device)"),
    ("config.json", not_utf8, "config.json is not UTF-8 text"),
    ("config.json", sparse, "config.json is 100 GB, more than the 16 MB a run's config can be"),
]


def synthetic_sweep(root: Path, name: str = "dmg") -> tuple[SweepDir, list[str]]:
    """A finished sweep of 2 cells (v = 8, 16; m = 4) x 8 sizes x 3 seeds written from a known
    law (no training): sweep.yaml, and per run config.json, metrics.parquet, result.json."""
    from rhmscale.sweeps.grid import expand_points
    from rhmscale.sweeps.spec import parse_spec, spec_to_yaml
    from tests.synthetic_sweep import run_rows, true_p_star

    base = {
        "grammar": {"v": 8, "m": 4, "L": 3},
        "data": {"P": 32, "n_test": 16},
        "train": {"batch_size": 64, "max_steps": 10_000},
        "tracking": {"wandb": "disabled"},
    }
    sizes = np.unique(np.geomspace(true_p_star(8, 4, 1) / 4, true_p_star(16, 4, 3) * 4, 8))
    grid = {"grammar.v": [8, 16], "data.P": [int(p) for p in sizes], "seed": [0, 1, 2]}
    spec = parse_spec({"name": name, "base": base, "grid": grid})
    sweep = SweepDir(root / name)
    sweep.path.mkdir(parents=True)
    atomic_write_text(sweep.spec_file, spec_to_yaml(spec))
    rng = np.random.default_rng(3)
    ids = []
    for point in expand_points(spec).points:
        config = point.config
        rows = run_rows(rng, config.grammar.v, 4, config.data.P, config.seed, L=3)
        metrics = [
            {k: v for k, v in row.items() if "/" in k or k in ("step", "samples_seen")}
            for row in rows
        ]
        store = sweep.run_dir(point.run_id)
        atomic_write_json(
            store.config, {"run_id": point.run_id, "config": config.model_dump(mode="json")}
        )
        store.write_metrics(metrics)
        atomic_write_json(store.result, {"run_id": point.run_id, "final": metrics[-1]})
        ids.append(point.run_id)
    return sweep, ids


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """The synthetic sweep with one run damaged per entry of DAMAGES: run id -> message."""
    sweep, ids = synthetic_sweep(tmp_path_factory.mktemp("store"))
    said = {}
    for run_id, (name, how, says) in zip(ids[::2], DAMAGES, strict=False):
        how(sweep.run_dir(run_id).path / name)
        said[run_id] = says
    assert len(said) == len(DAMAGES)
    return sweep, said


def test_every_damaged_run_file_makes_its_run_corrupt_named_with_the_reason(damaged):
    sweep, said = damaged
    for run_id, says in said.items():
        store = sweep.run_dir(run_id)
        assert store.state() == "corrupt", (run_id, says)
        assert says in store.damage(), (store.damage(), says)


def run_measured(args, timeout=120):
    """The command's CompletedProcess, its peak resident memory in bytes (ru_maxrss of the
    child, measured by a Python in between so that only that child counts) and its stderr;
    it must end within a minute."""
    probe = (
        "import resource, subprocess, sys, time; t = time.time(); "
        "p = subprocess.run(sys.argv[1:]); "
        "print(f'{time.time() - t:.1f} s', file=sys.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); "
        "sys.exit(p.returncode)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=timeout
    )
    *stderr, wall, rss = out.stderr.rstrip("\n").split("\n")
    print(f"{args[1:3]}: {wall}, peak RSS {int(rss) / 2**20:.0f} MB")
    assert float(wall.split()[0]) < 60  # seconds, on 2 busy cores, imports included
    return out, int(rss), "\n".join(stderr)


def test_status_names_every_damaged_run_in_seconds_and_little_memory(damaged):
    sweep, said = damaged
    out, rss, err = run_measured([RHMSCALE, "sweep", "status", str(sweep.path), "--json"])
    assert out.returncode == 0, err
    assert rss < GB
    runs = {run["run_id"]: run for run in json.loads(out.stdout)["runs"]}
    for run_id, says in said.items():
        assert runs[run_id]["state"] == "corrupt" and says in runs[run_id]["message"]
    assert sum(run["state"] == "done" for run in runs.values()) == len(runs) - len(said)


def test_collect_and_fit_leave_every_damaged_run_out_in_seconds_and_little_memory(damaged):
    from rhmscale.results.collect import collect

    sweep, said = damaged
    collection = collect(sweep.path)
    assert collection.skipped == {"corrupt": sorted(said)}
    out, rss, err = run_measured([RHMSCALE, "fit", str(sweep.path), "--n-boot", "50"])
    assert out.returncode == 0, err
    said_lines = " ".join(err.split())
    assert f"{len(said)} corrupt" in said_lines and rss < GB
    for run_id in sorted(said)[:10]:  # the first ten with what is damaged, then the others' ids
        assert f"corrupt {run_id}: {said[run_id]}" in said_lines
    assert all(run_id in said_lines for run_id in said)


def test_a_damaged_failure_record_or_log_is_said_not_waited_for(tmp_path):
    from rhmscale.sweeps.status import failure_message

    store = RunDir(tmp_path)
    atomic_write_json(store.failed, {"error": "RuntimeError", "message": "boom"})
    os.mkfifo(store.log)
    assert failure_message(store) == "RuntimeError: boom"
    link("/dev/zero")(store.failed)
    assert store.state() == "failed"
    assert failure_message(store) == "failed.json is not a regular file (a character device)"


def test_a_checkpoint_that_is_a_device_is_corrupt_not_read(tmp_path):
    store = RunDir(tmp_path)
    store.checkpoints.mkdir(parents=True)
    store.last_checkpoint.symlink_to("/dev/zero")
    assert store.state() == "corrupt"
    assert store.damage() == "last.ckpt is not a regular file (a character device)"


# --- a sweep's and a study's own files: exit 2 naming the file and what to do --------------


def cli(*args, timeout=60):
    return subprocess.run([RHMSCALE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("how", "says"),
    [
        (fifo, "is not a regular file (a FIFO)"),
        (link("/dev/zero"), "is not a regular file (a character device)"),
        (sparse, "is 100 GB, more than the 16 MB a sweep spec can be"),
        (not_utf8, "is not UTF-8 text (line 1, byte 12)"),
    ],
)
def test_a_damaged_sweep_yaml_is_exit_2_naming_it_and_how_to_go_on(tmp_path, how, says):
    sweep, _ = synthetic_sweep(tmp_path)
    how(sweep.spec_file)
    for command in (["sweep", "status"], ["sweep", "retry"]):
        out = cli(*command, str(sweep.path))
        assert out.returncode == 2, out.stderr
        assert f"{sweep.spec_file} {says}" in out.stderr and "Traceback" not in out.stderr
        assert "submit the sweep's spec again" in out.stderr


def test_a_damaged_line_of_jobs_jsonl_is_exit_2_naming_the_line(tmp_path):
    sweep, _ = synthetic_sweep(tmp_path)
    sweep.jobs.write_bytes(
        b'{"event": "cancel", "job_ids": []}\n\xff\xfe garbage\n{"event": "x"}\n'
    )
    out = cli("sweep", "status", str(sweep.path))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{sweep.jobs} line 2 is not a job record" in out.stderr
    assert f"sed -i '2d' {sweep.jobs}" in out.stderr
    # A last line cut short by a crash is skipped, as before.
    sweep.jobs.write_bytes(b'{"event": "cancel", "job_ids": []}\n{"event": "ca')
    assert len(sweep.read_job_lines()) == 1
    link("/dev/zero")(sweep.jobs)
    out = cli("sweep", "status", str(sweep.path))
    assert out.returncode == 2 and "is not a regular file (a character device)" in out.stderr


def test_a_damaged_study_yaml_is_exit_2_naming_it(tmp_path):
    study = tmp_path / "st"
    study.mkdir()
    (study / "study.yaml").symlink_to("/dev/urandom")
    out = cli("tune", "status", str(study))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{study / 'study.yaml'} is not a regular file (a character device)" in out.stderr
    assert "submit the study's spec again" in out.stderr


def test_a_journal_line_with_an_unknown_op_code_is_named(tmp_path):
    import optuna

    from rhmscale.errors import UserError
    from rhmscale.tuning.study import storage

    optuna.create_study(study_name="s", storage=storage(tmp_path))
    journal = tmp_path / "journal.log"
    with open(journal, "a") as handle:
        handle.write(json.dumps({"op_code": 99, "worker_id": "w"}) + "\n")
    with pytest.raises(UserError, match=r"line 2 .*op_code 99 is not one this Optuna knows"):
        optuna.load_study(study_name="s", storage=storage(tmp_path))
    journal.unlink()
    journal.symlink_to("/dev/zero")
    with pytest.raises(UserError, match="journal.log is not a regular file"):
        optuna.load_study(study_name="s", storage=storage(tmp_path))


# --- repair: a retry sets the damaged files aside and trains the run again -----------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An undisturbed tiny run, to compare repaired ones with."""
    from tests.test_hardening import history, run, tiny

    config = tiny()
    return config, history(run(config, tmp_path_factory.mktemp("whole") / "run").run_dir)


@pytest.mark.slow  # each trains a run, then again (10-30 s on 2 cores)
@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("metrics.parquet", text_column),  # was "done" to status, corrupt to collect
        ("result.json", fifo),
        ("metrics.parquet", link("/dev/zero")),
        ("config.json", not_utf8),
    ],
)
def test_a_retry_sets_damaged_files_aside_and_repairs_the_run(tmp_path, whole, name, how):
    from tests.test_hardening import history, run

    config, expected = whole
    store = RunDir(tmp_path / "run")
    run(config, store.path)
    how(store.path / name)
    assert store.state() == "corrupt"
    outcome = run(config, store.path)  # what `sweep retry` does
    assert outcome.state == "done" and store.state() == "done", store.log.read_text()
    assert history(store.path) == expected
    aside = store.path / f"{name}.damaged"
    assert os.path.lexists(aside), sorted(os.listdir(store.path))  # kept as evidence
    assert f"{name} " in store.log.read_text() and "set aside as" in store.log.read_text()


# --- a full disk -------------------------------------------------------------------------


class FullDisk(RunDir):
    """A run folder whose run.log is /dev/full: every write fails with ENOSPC, as on a full
    disk."""

    @property
    def log(self):
        return Path("/dev/full")

    def usable_log(self):
        return self.log


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_run_log_on_a_full_disk_is_said_once_not_a_traceback_per_line(tmp_path, capfd):
    from rhmscale.training.runs import Runs
    from tests.test_hardening import tiny

    runs, config = Runs(), tiny()
    run_id = runs.add(config, FullDisk(tmp_path), todo=False)
    for step in range(10):
        runs.log[run_id].warning("step %d", step)
    runs.close_logs()
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert err == (
        f"run {run_id}: cannot write /dev/full: No space left on device (later lines it cannot "
        "write are dropped without a word)\n"
    )


def test_a_run_whose_job_ended_without_an_outcome_says_so_and_retry_takes_it(tmp_path):
    """After a full disk (failed.json could not be written) or a worker that died at start,
    the run is pending though its job ended: status says why and where to look, and `sweep
    retry` submits it again (a never-submitted pending run is left to `sweep submit`)."""
    import shutil

    from rhmscale.sweeps.dispatch import RETRYABLE, prepare
    from rhmscale.sweeps.status import load_sweep_spec

    sweep, ids = synthetic_sweep(tmp_path)
    ended, never = ids[0], ids[1]
    for run_id in (ended, never):
        shutil.rmtree(sweep.run_dir(run_id).path)
    sweep.run_dir(ended).path.mkdir()
    sweep.run_dir(ended).log.write_text("... OSError: [Errno 28] No space left on device\n")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a local job id is its pid: now one that ended
    task = {"job_id": str(dead.pid), "run_ids": [rid for rid in ids if rid != never]}
    sweep.append_job_line({"event": "submit", "kind": "local", "tasks": [task]})
    out = cli("sweep", "status", str(sweep.path), "--json")
    runs = {run["run_id"]: run for run in json.loads(out.stdout)["runs"]}
    assert runs[ended]["state"] == "pending" and runs[never]["state"] == "pending"
    assert f"its job {dead.pid} ended and the run recorded no outcome" in runs[ended]["message"]
    assert str(sweep.run_dir(ended).log) in runs[ended]["message"]
    said = " ".join(cli("sweep", "status", str(sweep.path)).stdout.split())
    assert f"pending {ended}" in said and "sweep retry" in said
    prepared = prepare(load_sweep_spec(sweep), tmp_path, states=RETRYABLE)
    assert prepared.run_ids == [ended]


def test_a_wandb_offline_log_that_is_a_fifo_or_a_device_is_a_corrupt_run(tmp_path):
    from rhmscale.results.collect_wandb import collect_wandb_offline

    for name, make in (("abc", os.mkfifo), ("def", lambda p: p.symlink_to("/dev/zero"))):
        offline = tmp_path / "runs" / name / "wandb" / f"offline-run-20260101_000000-{name}"
        offline.mkdir(parents=True)
        make(offline / f"run-{name}.wandb")
    assert collect_wandb_offline(tmp_path).skipped == {"corrupt": ["abc", "def"]}


# --- a worker that dies ---------------------------------------------------------------------


def test_a_job_that_dies_is_one_line_naming_its_error_and_log(tmp_path):
    """submitit's message for a failed job ends with its log paths: the line said is the
    traceback's error, with the .err log (was "20247: return tqdm(" or a log path)."""
    import submitit

    from rhmscale.sweeps.dispatch import wait_jobs

    job = submitit.LocalExecutor(folder=tmp_path).submit(int, "not a number")
    (line,) = wait_jobs([job])
    assert line.startswith(f"{job.job_id}: ValueError: invalid literal for int()"), line
    assert line.endswith(f"(log: {tmp_path / f'{job.job_id}_0_log.err'})"), line
