"""bench/gpu_scaling.py on a machine without GPUs: stand-in GPU ids (--fake-gpus), CPU runs.
It checks the machinery (counts, what each worker is given, the table), not the speed."""

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_scaling.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_dry_run_deals_each_count_of_gpus_its_workers(tmp_path):
    """paper-lite (3 workers a GPU) on 8 stand-in GPUs: 1, 2 and 8 GPUs, 3 workers each."""
    ids = [str(i) for i in range(10, 18)]
    out = bench("paper-lite", "--root", str(tmp_path), "--fake-gpus", ",".join(ids), "--dry-run")
    dealt = [line for line in out.stdout.splitlines() if "workers' GPUs" in line]
    assert len(dealt) == 3
    for n, line in zip((1, 2, 8), dealt, strict=True):
        given = Counter(ast.literal_eval(line.split(":", 1)[1].strip()))
        assert given == {gpu: 3 for gpu in ids[:n]}
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow
def test_fake_gpus_measure_each_count_and_record_each_workers_gpu(tmp_path):
    """Each count in its own root, on the first n ids; each worker's id recorded; the
    efficiency is wall(1) / (n wall(n)) of the rows."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": {
                    "grammar": {"v": 4, "m": 2, "L": 2},
                    "data": {"n_test": 8},
                    "model": {"width": 8},
                    "train": {"max_steps": 6, "batch_size": 8, "device": "cpu"},
                    "eval": {"n_samples": 8, "n_evals": 1},
                },
                "grid": {"data.P": [8, 12], "seed": [0, 1]},
                "executor": {"kind": "local", "pack": True, "runs_per_task": 1},
                "tracking": {"wandb": "disabled"},
            }
        )
    )
    # Two calls, as where one call cannot hold every count: 1 GPU, then 2 with the first's rows.
    common = ["--root", str(tmp_path / "runs"), "--fake-gpus", "5,7"]
    common += ["--submit-args", "--gpus-per-task 1"]
    bench(str(spec), *common, "--out", str(tmp_path / "first"), "--counts", "1")
    first = tmp_path / "first" / "gpu_scaling.json"
    out = tmp_path / "out"
    bench(str(spec), *common, "--out", str(out), "--counts", "2", "--previous", str(first))
    report = json.loads((out / "gpu_scaling.json").read_text())
    rows = report["rows"]
    assert [row["gpus"] for row in rows] == [1, 2]
    assert rows[0]["from"] == str(first) and "from" not in rows[1]
    assert [row["cuda_visible_devices"] for row in rows] == ["5", "5,7"]
    assert all(row["rc"] == 0 and row["runs_done"] == 4 for row in rows)
    assert [row["workers_per_gpu"] for row in rows] == [{"5": 1}, {"5": 1, "7": 1}]
    one, two = rows[0]["wall_s"], rows[1]["wall_s"]
    assert rows[1]["efficiency"] == round(one / (2 * two), 3)
    assert report["meets_goal"] == (rows[1]["efficiency"] >= 0.9)
    assert (out / "2gpu-submit.log").exists()
