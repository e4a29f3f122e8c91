"""Packed training on CPU: a member of a pack is its lone run, step for step and on disk."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.models import build_denoiser
from rhmscale.models.stacked import stack_denoisers
from rhmscale.results.collect import collect
from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training import run_pack
from rhmscale.training.pack_checkpoint import read_member_checkpoint
from rhmscale.training.packed import Member, PackTrainer
from rhmscale.training.packing import pack_key
from rhmscale.training.run import execute
from rhmscale.training.run_pack import execute_pack
from rhmscale.training.train import train

# v=4, m=2, s=2, L=3: 512 distinct sequences of length 8.
SMALL = [
    "grammar.v=4",
    "grammar.m=2",
    "grammar.L=3",
    "model.width=32",
    "model.depth=2",
    "train.batch_size=32",
    "train.warmup_steps=10",
    "train.lr=3e-3",
    "train.max_steps=60",
    "train.checkpoint_every=20",
    "train.device=cpu",
    "eval.n_samples=64",
    "eval.n_evals=3",
    "data.n_test=32",
    "tracking.wandb=disabled",
]
# Members differ in what a pack allows: data set size, seed, grammar rules, clipping.
MEMBERS = [
    ["data.P=64", "seed=0"],
    ["data.P=100", "seed=3", "grammar.m=3", "grammar.seed=1", "train.grad_clip=0.05"],
    ["data.P=128", "seed=7", "train.grad_clip=0"],
]


def small(*overrides):
    return build_config({}, [*SMALL, *overrides])


def pack_configs(*overrides, n=3):
    return [small(*member, *overrides) for member in MEMBERS[:n]]


def dirs(root, configs):
    return [root / "runs" / c.run_id() for c in configs]


def without_wall(rows):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def assert_rows_close(a, b):
    """Metrics rows equal up to float noise (gen/* are counts over 64 samples)."""
    assert [row["step"] for row in a] == [row["step"] for row in b]
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key != "wall_s":
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=2 / 64), key


def test_members_start_from_their_lone_runs_weights():
    cfg = small("model.arch=tree_unet", "data.P=64")
    stack = stack_denoisers(cfg.model, cfg.grammar, [0, 5])
    for k, seed in enumerate([0, 5]):
        L.seed_everything(seed, verbose=False)
        lone = build_denoiser(cfg.model, cfg.grammar)
        for name, p in lone.named_parameters():
            assert torch.equal(stack.params[name][k], p), name


def test_pack_key_ignores_what_members_may_differ_in():
    a, b, c = pack_configs()
    assert pack_key(a) == pack_key(b) == pack_key(c)
    assert pack_key(a) != pack_key(small(*MEMBERS[0], "train.max_steps=61"))


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, *args):
        self.losses.append(outputs["loss"].detach())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_member_follows_its_lone_run_step_for_step(tmp_path, arch):
    configs = pack_configs(f"model.arch={arch}", "train.checkpoint_every=1000")
    lone = []
    for i, cfg in enumerate(configs):
        recorder = LossRecorder()
        out = train(cfg, make_datasets(cfg), RunDir(tmp_path / f"lone{i}"), callbacks=[recorder])
        lone.append((torch.stack(recorder.losses), out.history))
    packed = []
    members = [
        Member(cfg, make_datasets(cfg), RunDir(tmp_path / f"member{i}"))
        for i, cfg in enumerate(configs)
    ]
    trainer = PackTrainer(members, on_step=lambda step, losses: packed.append(losses))
    assert trainer.fit()
    packed = torch.stack(packed)
    assert packed.shape == (60, len(configs))
    for k, (losses, history) in enumerate(lone):
        torch.testing.assert_close(packed[:, k], losses, rtol=0, atol=1e-5)
        assert_rows_close(members[k].history, history)


@pytest.mark.slow
def test_pack_run_dirs_look_like_lone_runs(tmp_path):
    configs = pack_configs(n=2)
    outcomes = execute_pack(configs, dirs(tmp_path / "pack", configs))
    assert [o.state for o in outcomes] == ["done", "done"]
    for cfg, outcome in zip(configs, outcomes, strict=True):
        lone = execute(cfg, tmp_path / "lone" / "runs" / cfg.run_id())
        packed_dir, lone_dir = outcome.run_dir, lone.run_dir
        assert sorted(p.name for p in packed_dir.iterdir()) == sorted(
            p.name for p in lone_dir.iterdir()
        )
        assert outcome.result.keys() == lone.result.keys()
        assert outcome.result["run_id"] == cfg.run_id()
        assert_rows_close([outcome.result["final"]], [lone.result["final"]])
        a = pd.read_parquet(RunDir(packed_dir).metrics)
        b = pd.read_parquet(RunDir(lone_dir).metrics)
        assert list(a.columns) == list(b.columns)
        assert_rows_close(a.to_dict("records"), b.to_dict("records"))
        assert json.loads(RunDir(packed_dir).grammar.read_text()) == json.loads(
            RunDir(lone_dir).grammar.read_text()
        )
    packed, lone = collect(tmp_path / "pack"), collect(tmp_path / "lone")
    assert list(packed.frame.columns) == list(lone.frame.columns)
    assert len(packed.frame) == len(lone.frame) and not packed.skipped
    # Done runs are skipped, not retrained.
    again = execute_pack(configs, dirs(tmp_path / "pack", configs))
    assert [o.result for o in again] == [o.result for o in outcomes]


@pytest.mark.slow
def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path):
    configs = pack_configs()
    whole = execute_pack(configs, dirs(tmp_path / "whole", configs))
    calls = []

    def should_stop():  # asked before training, then after every step; a signal in step 30
        calls.append(1)
        return len(calls) > 30

    split = dirs(tmp_path / "split", configs)
    first = execute_pack(configs, split, should_stop=should_stop)
    assert [o.state for o in first] == ["interrupted"] * 3
    for cfg, path in zip(configs, split, strict=True):
        store = RunDir(path)
        assert store.state() == "interrupted"
        state = read_member_checkpoint(store.last_checkpoint)
        assert state["step"] == 30 and state["run_id"] == cfg.run_id()
    second = execute_pack(configs, split)
    assert [o.state for o in second] == ["done"] * 3
    for a, b in zip(whole, second, strict=True):
        assert without_wall(pd.read_parquet(RunDir(a.run_dir).metrics).to_dict("records")) == (
            without_wall(pd.read_parquet(RunDir(b.run_dir).metrics).to_dict("records"))
        )
        assert without_wall([a.result["final"]]) == without_wall([b.result["final"]])


@pytest.mark.slow
def test_members_at_different_steps_resume_in_sub_packs(tmp_path):
    # A lone run's Lightning checkpoint at step 30 is resumed in a pack beside a fresh run.
    configs = pack_configs(n=2)
    lone_whole = execute(configs[0], tmp_path / "lone")
    paths = dirs(tmp_path / "pack", configs)
    assert execute(configs[0], paths[0], stop_at_step=30).state == "interrupted"
    outcomes = execute_pack(configs, paths)
    assert [o.state for o in outcomes] == ["done", "done"]
    assert_rows_close(
        pd.read_parquet(RunDir(paths[0]).metrics).to_dict("records"),
        pd.read_parquet(RunDir(lone_whole.run_dir).metrics).to_dict("records"),
    )
    assert "from step 30" in RunDir(paths[0]).log.read_text()


@pytest.mark.slow
def test_a_lone_run_refuses_a_pack_checkpoint(tmp_path):
    configs = pack_configs(n=2)
    paths = dirs(tmp_path, configs)
    execute_pack(configs, paths, stop_at_step=20)
    with pytest.raises(UserError, match="packed training"):
        execute(configs[0], paths[0])


def test_mismatched_shapes_are_refused_naming_the_key(tmp_path):
    for override, key in [
        ("model.width=64", "model.width"),
        ("train.lr=1e-2", "train.lr"),
        ("grammar.v=5", "grammar.v"),
    ]:
        configs = [small(*MEMBERS[0]), small(*MEMBERS[1], override)]
        with pytest.raises(UserError, match=f"share '{key}'"):
            execute_pack(configs, dirs(tmp_path, configs))
    with pytest.raises(UserError, match="twice"):
        execute_pack([small(*MEMBERS[0]), small(*MEMBERS[0])], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_a_failing_member_fails_alone(tmp_path, monkeypatch):
    real = run_pack.make_datasets

    def broken_for_seed_3(config):
        if config.seed == 3:
            raise RuntimeError("bad data")
        return real(config)

    monkeypatch.setattr(run_pack, "make_datasets", broken_for_seed_3)
    configs = pack_configs()
    outcomes = execute_pack(configs, dirs(tmp_path, configs))
    assert [o.state for o in outcomes] == ["done", "failed", "done"]
    assert "bad data" in outcomes[1].error
    failed = RunDir(outcomes[1].run_dir)
    assert failed.state() == "failed" and "bad data" in failed.log.read_text()
    assert json.loads(failed.failed.read_text())["error"] == "RuntimeError"


@pytest.mark.slow
def test_each_member_has_its_own_wandb_run(tmp_path):
    configs = pack_configs("tracking.wandb=offline", "train.max_steps=20", n=2)
    outcomes = execute_pack(configs, dirs(tmp_path, configs))
    wandb_cli = Path(sys.executable).with_name("wandb")
    for cfg, outcome in zip(configs, outcomes, strict=True):
        offline = list((outcome.run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and offline[0].name.endswith(cfg.run_id()), offline
        out = subprocess.run(
            [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline[0])],
            capture_output=True,
            text=True,
            check=True,
        )
        summary = json.dumps(json.loads(out.stdout))
        assert cfg.run_id() in summary and "final/gen/acc_l3" in summary
