"""One run end to end on CPU: learning, memorisation, resume, failure, W&B offline read-back."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rhmscale.config_io import build_config
from rhmscale.labels import run_label
from rhmscale.store.folders import RunDir
from rhmscale.training import execute

pytestmark = pytest.mark.slow

# v=4, m=2, s=2, L=3: 512 distinct sequences of length 8.
SMALL = [
    "grammar.v=4",
    "grammar.m=2",
    "grammar.L=3",
    "model.width=64",
    "model.depth=2",
    "train.batch_size=128",
    "train.warmup_steps=20",
    "train.device=cpu",
    "eval.n_samples=256",
    "data.n_test=32",
    "tracking.wandb=disabled",
]


def small(*overrides):
    return build_config({}, [*SMALL, *overrides])


def run_one(config, path, **kw):
    """A lone run: a pack of one."""
    (outcome,) = execute([config], [path], **kw)
    return outcome


def test_learns_the_grammar_from_all_sequences(tmp_path):
    # The tree U-Net mirrors the grammar and learns it within a CPU minute; the transformer
    # needs several times more steps for the top level.
    cfg = small(
        "model.arch=tree_unet",
        "data.P=480",
        "data.n_test=32",
        "train.max_steps=800",
        "train.lr=2e-3",
        "train.lr_schedule=cosine",
        "eval.n_evals=3",
    )
    outcome = run_one(cfg, tmp_path / "run")
    final = outcome.result["final"]
    assert outcome.state == "done"
    assert final["gen/acc_l3"] >= 0.9, final
    assert final["gen/acc_l1"] >= final["gen/acc_l2"] >= final["gen/acc_l3"]
    history = pd.read_parquet(RunDir(tmp_path / "run").metrics)
    assert list(history["step"]) == sorted(history["step"]) and history["step"].iloc[-1] == 800
    assert history["gen/acc_l3"].iloc[-1] > history["gen/acc_l3"].iloc[0]


def test_few_sequences_are_memorised(tmp_path):
    cfg = small(
        "model.arch=tree_unet",
        "data.P=8",
        "data.n_test=32",
        "train.max_steps=400",
        "train.lr=2e-3",
        "eval.n_evals=1",
    )
    final = run_one(cfg, tmp_path / "run").result["final"]
    assert final["gen/memorized_frac"] >= 0.8, final
    assert final["gen/novel_frac"] <= 0.2


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    cfg = small("data.P=64", "train.max_steps=60", "train.checkpoint_every=20", "eval.n_evals=4")
    whole = run_one(cfg, tmp_path / "whole")
    first = run_one(cfg, tmp_path / "split", stop_at_step=30)
    assert first.state == "interrupted"
    store = RunDir(tmp_path / "split")
    assert store.state() == "interrupted" and not store.result.exists()
    second = run_one(cfg, tmp_path / "split")
    assert second.state == "done"

    def strip(rows):
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    a = pd.read_parquet(RunDir(tmp_path / "whole").metrics).to_dict("records")
    b = pd.read_parquet(store.metrics).to_dict("records")
    assert strip(a) == strip(b)
    final_a = {k: v for k, v in whole.result["final"].items() if k != "wall_s"}
    final_b = {k: v for k, v in second.result["final"].items() if k != "wall_s"}
    assert final_a == final_b
    # A finished run is skipped, not retrained.
    assert run_one(cfg, tmp_path / "split").result == second.result


def test_a_failing_run_leaves_failed_json_and_a_log(tmp_path, monkeypatch):
    import rhmscale.rhm.data as data

    def broken(config):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(data, "make_datasets", broken)
    outcome = run_one(small("data.P=64", "train.max_steps=5"), tmp_path / "run")
    assert outcome.state == "failed" and outcome.error == "RuntimeError: disk on fire"
    store = RunDir(tmp_path / "run")
    failed = json.loads(store.failed.read_text())
    assert store.state() == "failed"
    assert failed["error"] == "RuntimeError" and "disk on fire" in failed["traceback"]
    assert "disk on fire" in store.log.read_text()


def test_wandb_offline_run_reads_back(tmp_path):
    cfg = small(
        "data.P=64",
        "train.max_steps=30",
        "eval.n_evals=2",
        "tracking.wandb=offline",
        "tracking.group=testgroup",
    )
    result = run_one(cfg, tmp_path / "run").result
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    assert offline[0].name.endswith(cfg.run_id())
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline[0])],
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(out.stdout)
    text = json.dumps(record)
    assert cfg.run_id() in text
    flat_config = json.dumps(record.get("config", record))
    assert '"grammar.v"' in flat_config and '"data.P"' in flat_config
    summary = record.get("summary", record)
    final = result["final"]
    got = summary_value(summary, "gen/acc_l3")
    assert got is not None and math.isclose(float(got), final["gen/acc_l3"])
    # Named by what it is, its cell a config key the dashboard can group by.
    records = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(offline[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    (run,) = [json.loads(line)["run"] for line in records if '"type":"run"' in line]
    assert run["display_name"] == "v=4 m=2 s=2 L=3 P=64 seed=0" == run_label(cfg)
    assert run["run_id"] == cfg.run_id()
    assert run["config"]["update"]["cell"] == "v=4 m=2 s=2 L=3"


def summary_value(summary, key):
    """Find `key` in the summary record, whatever nesting the wandb version uses."""
    if isinstance(summary, dict):
        if key in summary:
            value = summary[key]
            return value.get("value", value) if isinstance(value, dict) else value
        for value in summary.values():
            found = summary_value(value, key)
            if found is not None:
                return found
    if isinstance(summary, list):
        for item in summary:
            if isinstance(item, dict) and item.get("key") == key:
                return item.get("value")
            found = summary_value(item, key)
            if found is not None:
                return found
    return None
