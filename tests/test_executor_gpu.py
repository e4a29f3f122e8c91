"""GPU settings of the executor: their sbatch lines, their validation, and `sweep plan`'s
#SBATCH lines, which are those that a submission hands sbatch. No SLURM needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rhmscale.cli import app
from rhmscale.errors import UserError
from rhmscale.sweeps.dispatch import apply_executor_overrides, submit
from rhmscale.sweeps.executors import sbatch_lines
from rhmscale.sweeps.spec import ExecutorSpec, parse_spec, spec_to_yaml

BASE = {
    "grammar": {"v": 4, "m": 2, "L": 3},
    "data": {"P": 32, "n_test": 16},
    "model": {"arch": "tree_unet", "width": 16},
    "train": {"max_steps": 10, "device": "cpu"},
    "tracking": {"wandb": "disabled"},
}
# `python -m rhmscale`, not the entry-point script: make test-gpu runs this file where the
# checkout is only on PYTHONPATH and no script is installed.
CLI = [sys.executable, "-m", "rhmscale"]


def lines(n_tasks=2, **executor):
    return sbatch_lines(
        ExecutorSpec(kind="slurm", **executor), Path("/sweep/submitit"), "t", n_tasks
    )


def options(sbatch):
    """The sbatch option names the lines set."""
    return {line.removeprefix("#SBATCH --").split("=")[0] for line in sbatch}


@pytest.mark.parametrize(
    ("executor", "present", "absent"),
    [
        ({}, ["--cpus-per-task=1"], ["gpus-per-task", "gres", "cpus-per-gpu", "mem"]),
        ({"gpus_per_task": 2}, ["--gpus-per-task=2"], ["gres"]),
        ({"gpus_per_task": 1, "gpu_type": "h100"}, ["--gpus-per-task=h100:1"], ["gres"]),
        (
            {"gpus_per_task": 1, "gpu_type": "h100", "gpu_request": "gres"},
            ["--gres=gpu:h100:1"],
            ["gpus-per-task"],
        ),
        ({"gpus_per_task": 2, "gpu_request": "gres"}, ["--gres=gpu:2"], ["gpus-per-task"]),
        (
            {"gpus_per_task": 1, "cpus_per_gpu": 8, "mem_per_gpu_gb": 40},
            ["--cpus-per-gpu=8", "--mem-per-gpu=40GB"],
            ["cpus-per-task", "mem"],
        ),
        ({"mem_gb": 1.5}, ["--mem=1536MB"], ["mem-per-gpu"]),
        (
            {"gpus_per_task": 1, "tasks_per_gpu": 2, "shards_per_gpu": 4, "constraint": "h100"},
            ["--gres=shard:2", "--constraint=h100"],
            ["gpus-per-task", "cpus-per-gpu", "mem-per-gpu"],
        ),
        (
            {"gpus_per_task": 1, "tasks_per_gpu": 4, "shards_per_gpu": 4, "cpus_per_task": 2},
            ["--gres=shard:1", "--cpus-per-task=2"],
            ["gpus-per-task"],
        ),
    ],
)
def test_each_gpu_setting_becomes_its_sbatch_line(executor, present, absent):
    sbatch = lines(**executor)
    for option in present:
        assert f"#SBATCH {option}" in sbatch, sbatch
    assert not options(sbatch) & set(absent), sbatch
    assert "#SBATCH --array=0-1%2" in sbatch and "#SBATCH --job-name=rhm-t" in sbatch


def test_one_task_is_one_job_not_an_array():
    assert "array" not in options(lines(n_tasks=1))


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ({"gpus_per_task": 1, "gpu_type": "h100 80gb"}, "executor.gpu_type"),
        ({"gpu_type": "h100"}, "executor.gpu_type=h100 needs GPUs: set executor.gpus_per_task"),
        ({"cpus_per_gpu": 4}, "executor.cpus_per_gpu=4 needs GPUs"),
        ({"mem_per_gpu_gb": 8}, "executor.mem_per_gpu_gb=8.0 needs GPUs"),
        ({"gpus_per_task": 1, "cpus_per_gpu": 4, "cpus_per_task": 4}, "executor.cpus_per_gpu or"),
        ({"gpus_per_task": 1, "mem_per_gpu_gb": 8, "mem_gb": 8}, "executor.mem_per_gpu_gb or"),
        ({"gpus_per_task": 1, "tasks_per_gpu": 2}, "set executor.shards_per_gpu"),
        ({"gpus_per_task": 1, "tasks_per_gpu": 2}, "scontrol show node"),
        ({"gpus_per_task": 2, "tasks_per_gpu": 2, "shards_per_gpu": 4}, "gpus_per_task: 1"),
        ({"gpus_per_task": 1, "tasks_per_gpu": 3, "shards_per_gpu": 4}, "executor.tasks_per_gpu"),
        (
            {"gpus_per_task": 1, "tasks_per_gpu": 2, "shards_per_gpu": 4, "gpu_type": "h100"},
            "unset gpu_type and pick the GPU model with executor.constraint",
        ),
        (
            {"gpus_per_task": 1, "tasks_per_gpu": 2, "shards_per_gpu": 4, "cpus_per_gpu": 2},
            "unset cpus_per_gpu and set cpus_per_task",
        ),
        (
            {"gpus_per_task": 1, "tasks_per_gpu": 2, "shards_per_gpu": 4, "mem_per_gpu_gb": 8},
            "unset mem_per_gpu_gb and set mem_gb",
        ),
        ({"shards_per_gpu": 0}, "executor.shards_per_gpu"),
        ({"gpu_request": "gpus"}, "executor.gpu_request"),
        ({"sbatch": {"gres": "gpu:1"}}, "set executor.gpus_per_task, gpu_type and gpu_request"),
        ({"sbatch": {"gpus-per-task": 1}}, "set executor.gpus_per_task"),
        ({"sbatch": {"cpus_per_gpu": 4}}, "set executor.cpus_per_gpu instead"),
        ({"sbatch": {"mem-per-gpu": "8G"}}, "set executor.mem_per_gpu_gb instead"),
        ({"sbatch": {"constraint": "h100"}}, "set executor.constraint instead"),
    ],
)
def test_a_bad_gpu_setting_names_the_key_to_change(executor, message):
    with pytest.raises(UserError) as caught:
        parse_spec({"name": "t", "base": BASE, "executor": {"kind": "slurm", **executor}})
    assert message in str(caught.value)


def test_slurm_gpu_settings_are_ignored_by_the_local_executor():
    slurm = {"kind": "slurm", "gpus_per_task": 1, "gpu_type": "h100", "cpus_per_gpu": 4}
    local = apply_executor_overrides(ExecutorSpec(**slurm), {"kind": "local"})
    assert local.kind == "local" and local.cpus == 4
    shared = ExecutorSpec(kind="slurm", gpus_per_task=1, tasks_per_gpu=2, shards_per_gpu=2)
    assert apply_executor_overrides(shared, {"kind": "local"}).tasks_per_gpu == 2
    assert ExecutorSpec(kind="local", tasks_per_gpu=2, gpus_per_task=1).shards_per_gpu is None


def test_a_stored_spec_with_cpus_per_gpu_reads_back():
    """sweep.yaml holds every field; cpus_per_task's unset default must not conflict."""
    sweep = parse_spec(
        {
            "name": "t",
            "base": BASE,
            "executor": {"kind": "slurm", "gpus_per_task": 1, "cpus_per_gpu": 4},
        }
    )
    again = parse_spec(yaml.safe_load(spec_to_yaml(sweep)))
    assert again.executor == sweep.executor and again.executor.cpus == 4


def write_spec(tmp_path, **executor):
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "g", "base": BASE, "grid": {"seed": [0, 1, 2]}, "executor": executor}
        )
    )
    return path


def test_plan_shows_the_sbatch_lines_of_the_array(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # a laptop: no SLURM
    args = ["sweep", "plan", str(write_spec(tmp_path)), "--root", str(tmp_path)]
    args += ["--executor", "slurm", "--gpus-per-task", "1", "--gpu-type", "h100"]
    args += ["--constraint", "80gb"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    for line in ["--array=0-2%3", "--gpus-per-task=h100:1", "--constraint=80gb"]:
        assert f"#SBATCH {line}\n" in out.output
    submitit = tmp_path.resolve() / "g" / "submitit"
    assert f"#SBATCH --output={submitit}/%A_%a_0_log.out\n" in out.output
    shards = ["--tasks-per-gpu", "2", "--shards-per-gpu", "8"]
    with pytest.raises(UserError, match="executor.constraint"):
        CliRunner().invoke(app, args + shards, catch_exceptions=False)
    local = CliRunner().invoke(app, args[:5] + ["--executor", "local"])
    assert local.exit_code == 0 and "#SBATCH" not in local.output


def fake_slurm(folder: Path) -> Path:
    """sbatch that keeps the script it is given and answers as SLURM does; srun (submitit's
    test for a SLURM host) that is never called."""
    folder.mkdir()
    (folder / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {folder}/script.sh\necho "Submitted batch job 4242"\n'
    )
    (folder / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (folder / tool).chmod(0o755)
    return folder / "script.sh"


def test_submit_hands_sbatch_the_lines_that_plan_shows(tmp_path, monkeypatch):
    script = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    overrides = {"kind": "slurm", "gpus_per_task": 1, "tasks_per_gpu": 2, "shards_per_gpu": 4}
    spec_path = write_spec(tmp_path, partition="gpu", cpus_per_task=4, constraint="h100")
    args = ["sweep", "plan", str(spec_path), "--root", str(tmp_path), "-e", "slurm"]
    args += ["--gpus-per-task", "1", "--tasks-per-gpu", "2", "--shards-per-gpu", "4"]
    plan = CliRunner().invoke(app, args)
    assert plan.exit_code == 0, plan.output
    planned = [line for line in plan.output.splitlines() if line.startswith("#SBATCH")]
    from rhmscale.sweeps.spec import load_spec

    submission = submit(load_spec(spec_path), tmp_path, executor=overrides)
    assert submission.array_ids == ["4242"]
    submitted = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert submitted == planned and "#SBATCH --gres=shard:2" in submitted


def test_bad_gpu_settings_fail_submit_before_anything_is_submitted(tmp_path):
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}  # no sbatch: validation comes first
    if "PYTHONPATH" in os.environ:  # where rhmscale and its packages are found, if not installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    spec_path = write_spec(tmp_path, kind="slurm", gpus_per_task=1)
    bad = [
        ["--tasks-per-gpu", "2"],  # no shards_per_gpu
        ["--gpu-type", "h100 80gb"],
    ]
    for options in bad:
        out = subprocess.run(
            [*CLI, "sweep", "submit", str(spec_path), "--root", str(tmp_path), *options],
            capture_output=True,
            text=True,
            env=env,
        )
        assert out.returncode == 2 and "executor" in out.stderr and "sbatch" not in out.stderr, (
            out.stderr
        )
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "g").exists()  # no jobs.jsonl, no sweep folder


def test_the_device_line_names_the_gpus_a_task_was_given(monkeypatch):
    import torch

    from rhmscale.training.fabric import device_note

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    line = device_note(torch.device("cpu"))
    assert line == "device cpu; CUDA_VISIBLE_DEVICES=unset SLURM_JOB_ID=4243"


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("(null)", {}),
        ("gpu:1,shard:4", {"gpu": 1, "shard": 4}),
        ("gpu:h100:4(S:0-1),shard:16", {"gpu": 4, "gpu:h100": 4, "shard": 16}),
        ("gpu:a100:2(S:0),gpu:v100:2(S:1)", {"gpu": 4, "gpu:a100": 2, "gpu:v100": 2}),
    ],
)
def test_sinfo_gres_is_read_by_name_and_type(text, counts):
    from rhmscale.sweeps.slurm_checks import parse_gres

    assert parse_gres(text) == counts
