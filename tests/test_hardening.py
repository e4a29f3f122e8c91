"""Nothing lost, nothing stuck: damaged run files, divergence, stop signals, one writer per run,
sizes checked before anything big is built, and bad input as clear errors (issue 12)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.store.folders import RunDir
from rhmscale.training import execute

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
TINY = [
    "grammar.L=2",
    "grammar.v=4",
    "grammar.m=2",
    "data.P=8",
    "data.n_test=4",
    "train.max_steps=30",
    "train.checkpoint_every=10",
    "model.arch=tree_unet",
    "model.width=16",
    "eval.n_samples=16",
    "eval.n_evals=3",
    "train.device=cpu",
    "tracking.wandb=disabled",
]


def tiny(*overrides):
    return build_config({}, [*TINY, *overrides])


def run(config, path, **kw):
    (outcome,) = execute([config], [path], **kw)
    return outcome


def without_wall(rows):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def history(path):
    return without_wall(pd.read_parquet(RunDir(path).metrics).to_dict("records"))


@pytest.fixture
def whole(tmp_path):
    """An undisturbed run, to compare repaired ones with."""
    config = tiny()
    return config, history(run(config, tmp_path / "whole").run_dir)


# --- damaged files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        # These two retrain the run (10-20 s each): slow.
        pytest.param("result", marks=pytest.mark.slow),
        pytest.param("result-final", marks=pytest.mark.slow),
        "metrics",
        "metrics-missing",
        "config",
        "config-edited",
    ],
)
def test_a_damaged_finished_run_is_corrupt_and_a_retry_repairs_it(tmp_path, whole, damage):
    config, expected = whole
    path = tmp_path / "run"
    run(config, path)
    store = RunDir(path)
    if damage == "result":
        store.result.write_text('{"final": {"st')
    elif damage == "result-final":  # JSON of the right shape, not of the right types
        store.result.write_text(json.dumps(json.loads(store.result.read_text()) | {"final": "x"}))
    elif damage == "config-edited":  # its metrics would be filed under another grammar
        meta = json.loads(store.config.read_text())
        meta["config"]["grammar"]["v"] = 8
        store.config.write_text(json.dumps(meta))
    elif damage == "metrics":
        store.metrics.write_bytes(store.metrics.read_bytes()[:-20])
    elif damage == "metrics-missing":
        store.metrics.unlink()
    else:
        store.config.write_text("garbage")
    assert store.state() == "corrupt" and store.damage()
    outcome = run(config, path)  # what `sweep retry` does
    assert outcome.state == "done" and store.state() == "done" and store.damage() is None
    assert history(path) == expected


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_or_to_scratch(tmp_path, whole):
    config, expected = whole
    path = tmp_path / "run"
    assert run(config, path, stop_at_step=25).state == "interrupted"
    store = RunDir(path)
    assert store.last_checkpoint.exists() and store.previous_checkpoint.exists()
    store.last_checkpoint.write_bytes(store.last_checkpoint.read_bytes()[:1000])
    assert store.state() == "interrupted"  # prev.ckpt is whole
    assert run(config, path).state == "done"
    assert history(path) == expected
    assert "set aside" in store.log.read_text()

    again = tmp_path / "again"
    run(config, again, stop_at_step=25)
    for ckpt in (RunDir(again).last_checkpoint, RunDir(again).previous_checkpoint):
        ckpt.write_bytes(b"not a checkpoint")
    assert RunDir(again).state() == "corrupt"
    assert run(config, again).state == "done"  # from scratch, not stuck
    assert history(again) == expected


def test_an_interrupted_run_whose_metrics_were_deleted_keeps_its_history(tmp_path, whole):
    config, expected = whole
    path = tmp_path / "run"
    run(config, path, stop_at_step=30 - 1)
    RunDir(path).metrics.unlink()
    assert run(config, path).state == "done"
    assert history(path) == expected


def test_temporaries_left_by_a_killed_write_are_cleaned(tmp_path):
    config = tiny()
    path = tmp_path / "run"
    run(config, path, stop_at_step=10)
    store = RunDir(path)
    stale = [store.checkpoints / ".last.ckpt.abc.tmp", store.path / ".metrics.parquet.x.tmp"]
    for file in stale:
        file.write_bytes(b"half")
    run(config, path)
    assert not any(file.exists() for file in stale)


# --- divergence ---------------------------------------------------------------------------


def test_a_diverged_run_fails_and_says_so(tmp_path):
    config = tiny("train.lr=1e30", "train.warmup_steps=0")
    outcome = run(config, tmp_path / "run")
    store = RunDir(tmp_path / "run")
    failed = json.loads(store.failed.read_text())
    assert outcome.state == "failed" and store.state() == "diverged"
    assert failed["reason"] == "diverged" and failed["step"] >= 1
    assert "not finite" in failed["message"] and not store.result.exists()


@pytest.mark.parametrize("value", ["inf", "nan", ".inf"])
def test_non_finite_settings_are_refused(value):
    with pytest.raises(UserError, match="finite"):
        tiny(f"train.lr={value}")


# --- sizes checked before anything big is built --------------------------------------------


def test_a_large_depth_is_refused_at_once():
    started = time.perf_counter()
    for L in (16, 40, 10**9):
        with pytest.raises(UserError, match="longer than 4,096"):
            build_config({}, [f"grammar.L={L}"])
    assert time.perf_counter() - started < 2
    with pytest.raises(UserError, match="GiB on the device"):
        build_config({}, ["grammar.L=12", "grammar.v=64", "grammar.m=8", "data.P=1000000"])


def test_a_huge_grid_is_refused_before_it_is_expanded():
    from rhmscale.sweeps.grid import expand_points
    from rhmscale.sweeps.spec import parse_spec

    started = time.perf_counter()
    for grid in (
        {"data.P": {"logspace": [1, 100, 10**9]}},
        {"seed": list(range(1000)), "data.P": {"logspace": [1, 1000, 1000]}},
    ):
        with pytest.raises(UserError, match="at most|logspace needs"):
            expand_points(parse_spec({"name": "big", "grid": grid}))
    assert time.perf_counter() - started < 2
    tree = {"name": "s", "grid": {"data.P": {"logspace": [1, "1e3", 4]}}}  # YAML reads 1e3 so
    assert [p.config.data.P for p in expand_points(parse_spec(tree)).points] == [1, 10, 100, 1000]


# --- stop requests and one writer per run ----------------------------------------------------


def start_run(tmp_path, *extra):
    args = [a for o in [*TINY, "train.max_steps=200000", *extra] for a in ("--set", o)]
    return subprocess.Popen(
        [RHMSCALE, "run", *args, "--root", str(tmp_path), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_training(tmp_path, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = list(tmp_path.glob("adhoc/runs/*/run.log"))
        if logs and "training 1 run(s)" in logs[0].read_text():
            return RunDir(logs[0].parent)
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("the run did not start training")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_and_exits_within_seconds(tmp_path, sig):
    process = start_run(tmp_path)
    store = wait_for_training(tmp_path, process)
    time.sleep(1)
    sent = time.perf_counter()
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert time.perf_counter() - sent < 10
    assert process.returncode == 3, err  # stopped at a checkpoint
    assert store.state() == "interrupted" and "run again to resume" in out


@pytest.mark.slow
def test_a_second_identical_run_says_where_the_first_runs_and_exits(tmp_path):
    first = start_run(tmp_path)
    store = wait_for_training(tmp_path, first)
    second = subprocess.run(
        [RHMSCALE, "run", *[a for o in [*TINY, "train.max_steps=200000"] for a in ("--set", o)],
         "--root", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    assert second.returncode == 2
    assert "already running" in second.stderr and f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert store.state() == "interrupted"


def test_a_pack_leaves_a_run_that_another_process_trains_alone(tmp_path):
    from rhmscale.store.lock import try_lock

    configs = [tiny("seed=0"), tiny("seed=1")]
    paths = [tmp_path / c.run_id() for c in configs]
    held = try_lock(RunDir(paths[1]).lock_file)  # as another process would hold it
    try:
        first, second = execute(configs, paths)
    finally:
        held.release()
    assert first.state == "done"
    assert second.state == "running" and f"pid {os.getpid()}" in second.error
    assert not RunDir(paths[1]).failed.exists() and not RunDir(paths[1]).result.exists()


@pytest.mark.slow
def test_cancelling_a_local_sweep_ends_its_process_within_seconds(tmp_path):
    import yaml

    from rhmscale.store.folders import SweepDir
    from tests.test_stop_signals import ENDLESS

    tracking = {"wandb": "disabled"}
    spec = {"name": "long", "base": ENDLESS, "grid": {"seed": [0]}, "tracking": tracking}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(spec))
    # Output to a file: the worker it starts inherits the submitting process's descriptors.
    with open(tmp_path / "submit.log", "w") as log:
        out = subprocess.run(
            [RHMSCALE, "sweep", "submit", str(tmp_path / "long.yaml"), "--root", str(tmp_path),
             "--no-wait"],
            stdout=log, stderr=subprocess.STDOUT, timeout=60,
        )  # fmt: skip
    assert out.returncode == 0, (tmp_path / "submit.log").read_text()
    sweep = SweepDir(tmp_path / "long")
    pid = int(sweep.read_job_lines()[0]["tasks"][0]["job_id"])

    def training() -> bool:
        logs = list(sweep.runs.glob("*/run.log"))
        return bool(logs) and "training 1 run(s)" in logs[0].read_text()

    deadline = time.time() + 60
    while not training():
        assert time.time() < deadline, "the run did not start"
        time.sleep(0.2)
    cancelled = subprocess.run(
        [RHMSCALE, "sweep", "cancel", str(sweep.path)], capture_output=True, text=True, timeout=60
    )
    assert cancelled.returncode == 0 and str(pid) in cancelled.stdout
    sent = time.time()
    while time.time() - sent < 15:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"process {pid} still runs 15 s after the cancel")
    (run,) = [RunDir(p) for p in sweep.runs.iterdir()]
    assert run.state() == "interrupted"  # it checkpointed on the way out


# --- bad input to the fit: one line, exit 2 ------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    import numpy as np

    from tests.synthetic_sweep import synthetic_frame, write_run_dirs

    root = tmp_path_factory.mktemp("syn")
    write_run_dirs(synthetic_frame(np.random.default_rng(1), cells=[(8, 4), (16, 4)]), root)
    return root


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--theory", "10**10**10", "gives P_k = inf"),
        ("--theory", "v**10**10", "gives P_k = inf"),
        ("--theory", "0*v", "gives P_k = 0"),
        ("--theory", "(" * 300 + "v" + ")" * 300, "under 200"),
        ("--theory", "-" * 151 + "v", "positive finite"),
        ("--metric", "{x}{k}", "only '{k}'"),
    ],
)
def test_bad_fit_input_is_one_line_and_exit_2(synthetic, option, value, says):
    import re

    out = subprocess.run(
        [RHMSCALE, "fit", str(synthetic), option, value, "--n-boot", "50"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if not line.startswith(str(synthetic))]
    assert len(lines) == 1 and re.search(says, lines[0]), out.stderr


def test_a_metrics_file_with_text_in_a_metric_column_is_named_and_left_out(tmp_path, whole):
    from rhmscale.results.collect import collect

    run(tiny(), tmp_path / "a")
    run(tiny("seed=1"), tmp_path / "b")
    metrics = RunDir(tmp_path / "b").metrics
    frame = pd.read_parquet(metrics)
    frame["val/loss"] = frame["val/loss"].astype(str)
    frame.to_parquet(metrics)
    collection = collect(tmp_path)
    assert collection.frame["run_id"].nunique() == 1
    assert collection.skipped == {"corrupt": [tmp_path.joinpath("b").name]}
