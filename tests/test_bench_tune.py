"""bench/bench_tune.py on the CPU: each variant a new study of its own pack size and workers,
timed, its trials and trained member-steps counted; a variant folder that exists is refused.
It checks the machinery, not the speed (that is measured on a GPU: bench/results/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_tune.py"
SPEC = {
    "name": "bt",
    "base": {
        "grammar": {"v": 8, "m": 2, "L": 3},
        "data": {"P": 64, "n_test": 32},
        "model": {"arch": "transformer", "width": 16, "depth": 1, "heads": 2},
        "train": {"max_steps": 20, "batch_size": 16, "checkpoint_every": 1000, "device": "cpu"},
        "eval": {"n_samples": 16, "n_evals": 2},
    },
    "search": {"train.lr": {"float": [1.0e-4, 3.0e-3], "log": True}},
    "objective": {"samples_to_learn": {"level": 3, "threshold": 0.99}},
    "budget": {"trials": 8},
    "sampler": {"kind": "random", "seed": 0},
    "executor": {"kind": "local", "gpus_per_task": 0},
    "tracking": {"wandb": "disabled"},
}


def bench(tmp_path: Path, *variants: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    args = [str(spec), "--variants", *variants, "--root", str(tmp_path / "root")]
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_each_variant_is_a_study_of_its_own_packing_timed_and_counted(tmp_path):
    out = bench(tmp_path, "1x1:2", "2x1:4")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["device"] == "cpu"
    one, packed = result["variants"]
    assert (one["pack"], one["workers"], one["trials"]) == (1, 1, 2)
    assert (packed["pack"], packed["workers"], packed["trials"]) == (2, 1, 4)
    # threshold 0.99 is not reached in 20 steps: every trial trains to max_steps
    assert one["member_steps"] == 2 * 20 and packed["member_steps"] == 4 * 20
    assert packed["trials_per_gpu_hour"] == 3600 * 4 / packed["wall_s"]
    root = tmp_path / "root"
    assert (root / "bt-k1w1").is_dir() and (root / "bt-k2w1").is_dir()
    # the packed variant trained its 4 trials as 2 packs of 2 members
    logs = "".join(p.read_text() for p in (root / "bt-k2w1" / "runs").glob("*/run.log"))
    assert "training 2 run(s)" in logs and "training 1 run(s)" not in logs

    again = bench(tmp_path, "1x1:2")
    assert again.returncode != 0 and "exists: a variant is timed on a new study" in again.stderr


def test_a_malformed_variant_is_refused_with_the_form_to_write(tmp_path):
    out = bench(tmp_path, "16by1")
    assert out.returncode == 2 and "write PACKxWORKERS[:TRIALS]" in out.stderr
    assert not (tmp_path / "root").exists()
