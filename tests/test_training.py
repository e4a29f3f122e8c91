"""The one trainer on CPU: a member of a pack is its lone run (a pack of one), step for step and
on disk; checkpoints move a run between lone and packed training; compiled steps follow eager."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import rhmscale.rhm.data as rhm_data
from rhmscale.config import pack_key
from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.models.stacked import stack_denoisers
from rhmscale.results.collect import collect
from rhmscale.store.folders import RunDir
from rhmscale.training import execute

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


def history(path):
    return pd.read_parquet(RunDir(path).metrics).to_dict("records")


def assert_rows_close(a, b):
    """Metrics rows equal up to float noise (gen/* are counts over 64 samples)."""
    assert [row["step"] for row in a] == [row["step"] for row in b]
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key != "wall_s":
                expected = pytest.approx(row_b[key], rel=1e-5, abs=2 / 64, nan_ok=True)
                assert row_a[key] == expected, key


def losses_of(configs, paths, **kw):
    """Per-step losses (steps, K) of one execute call, and its outcomes."""
    steps = []
    outcomes = execute(configs, paths, on_step=lambda _, losses: steps.append(losses), **kw)
    return torch.stack(steps), outcomes


def test_members_start_from_their_lone_runs_weights():
    cfg = small("model.arch=tree_unet", "data.P=64")
    stack = stack_denoisers(cfg.model, cfg.grammar, [0, 5])
    for k, seed in enumerate([0, 5]):
        lone = stack_denoisers(cfg.model, cfg.grammar, [seed])
        for name, p in lone.params.items():
            assert torch.equal(stack.params[name][k], p[0]), name


def test_pack_key_ignores_what_members_may_differ_in():
    a, b, c = pack_configs()
    assert pack_key(a) == pack_key(b) == pack_key(c)
    assert pack_key(a) != pack_key(small(*MEMBERS[0], "train.max_steps=61"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "tree_unet"])
def test_member_follows_its_lone_run_step_for_step(tmp_path, arch):
    configs = pack_configs(f"model.arch={arch}", "train.checkpoint_every=1000")
    packed, _ = losses_of(configs, dirs(tmp_path / "pack", configs))
    assert packed.shape == (60, len(configs))
    for k, cfg in enumerate(configs):
        (path,) = dirs(tmp_path / "lone", [cfg])
        lone, (outcome,) = losses_of([cfg], [path])
        assert outcome.state == "done"
        torch.testing.assert_close(packed[:, k], lone[:, 0], rtol=0, atol=1e-5)
        assert_rows_close(history(dirs(tmp_path / "pack", configs)[k]), history(path))


@pytest.mark.slow
def test_pack_run_dirs_look_like_lone_runs(tmp_path):
    configs = pack_configs(n=2)
    outcomes = execute(configs, dirs(tmp_path / "pack", configs))
    assert [o.state for o in outcomes] == ["done", "done"]
    for cfg, outcome in zip(configs, outcomes, strict=True):
        (lone,) = execute([cfg], dirs(tmp_path / "lone", [cfg]))
        packed_dir, lone_dir = outcome.run_dir, lone.run_dir
        assert sorted(p.name for p in packed_dir.iterdir()) == sorted(
            p.name for p in lone_dir.iterdir()
        )
        assert outcome.result.keys() == lone.result.keys()
        assert outcome.result["run_id"] == cfg.run_id()
        assert_rows_close([outcome.result["final"]], [lone.result["final"]])
        a, b = (
            pd.read_parquet(RunDir(packed_dir).metrics),
            pd.read_parquet(RunDir(lone_dir).metrics),
        )
        assert list(a.columns) == list(b.columns)
        assert_rows_close(a.to_dict("records"), b.to_dict("records"))
        assert json.loads(RunDir(packed_dir).grammar.read_text()) == json.loads(
            RunDir(lone_dir).grammar.read_text()
        )
    packed, lone = collect(tmp_path / "pack"), collect(tmp_path / "lone")
    assert list(packed.frame.columns) == list(lone.frame.columns)
    assert len(packed.frame) == len(lone.frame) and not packed.skipped
    # Done runs are skipped, not retrained.
    again = execute(configs, dirs(tmp_path / "pack", configs))
    assert [o.result for o in again] == [o.result for o in outcomes]


@pytest.mark.slow
def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path):
    configs = pack_configs()
    whole = execute(configs, dirs(tmp_path / "whole", configs))
    step = [0]

    def on_step(trainer, losses):
        step[0] = int(trainer.steps.max())

    def should_stop():  # asked after every step and in evaluations; a signal in step 30
        return step[0] >= 30

    split = dirs(tmp_path / "split", configs)
    first = execute(configs, split, should_stop=should_stop, on_step=on_step)
    assert [o.state for o in first] == ["interrupted"] * 3
    for cfg, path in zip(configs, split, strict=True):
        store = RunDir(path)
        assert store.state() == "interrupted"
        state = torch.load(store.last_checkpoint, weights_only=True)
        assert state["step"] == 30 and state["run_id"] == cfg.run_id()
    second = execute(configs, split)
    assert [o.state for o in second] == ["done"] * 3
    for a, b in zip(whole, second, strict=True):
        assert without_wall(history(a.run_dir)) == without_wall(history(b.run_dir))
        assert without_wall([a.result["final"]]) == without_wall([b.result["final"]])


@pytest.mark.slow
def test_a_run_moves_between_lone_and_packed_training(tmp_path):
    configs = pack_configs(n=2)
    whole = execute(configs, dirs(tmp_path / "whole", configs))
    # Lone, interrupted at step 30, then resumed in a pack beside a fresh run (two sub-packs).
    paths = dirs(tmp_path / "lone-then-pack", configs)
    (first,) = execute(configs[:1], paths[:1], stop_at_step=30)
    assert first.state == "interrupted"
    assert [o.state for o in execute(configs, paths)] == ["done", "done"]
    assert "from step 30" in RunDir(paths[0]).log.read_text()
    # Packed, interrupted at step 20, then each run resumed alone.
    paths2 = dirs(tmp_path / "pack-then-lone", configs)
    assert [o.state for o in execute(configs, paths2, stop_at_step=20)] == ["interrupted"] * 2
    for cfg, path in zip(configs, paths2, strict=True):
        assert execute([cfg], [path])[0].state == "done"
    for a, b, c in zip(whole, paths, paths2, strict=True):
        assert_rows_close(history(b), history(a.run_dir))
        assert_rows_close(history(c), history(a.run_dir))


def test_mismatched_shapes_are_refused_naming_the_key(tmp_path):
    for override, key in [
        ("model.width=64", "model.width"),
        ("train.batch_size=16", "train.batch_size"),
        ("grammar.v=5", "grammar.v"),
    ]:
        configs = [small(*MEMBERS[0]), small(*MEMBERS[1], override)]
        with pytest.raises(UserError, match=f"share '{key}'"):
            execute(configs, dirs(tmp_path, configs))
    with pytest.raises(UserError, match="twice"):
        execute([small(*MEMBERS[0]), small(*MEMBERS[0])], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_a_failing_member_fails_alone(tmp_path, monkeypatch):
    real = rhm_data.make_datasets

    def broken_for_seed_3(config):
        if config.seed == 3:
            raise RuntimeError("bad data")
        return real(config)

    monkeypatch.setattr(rhm_data, "make_datasets", broken_for_seed_3)
    configs = pack_configs()
    outcomes = execute(configs, dirs(tmp_path, configs))
    assert [o.state for o in outcomes] == ["done", "failed", "done"]
    assert "bad data" in outcomes[1].error
    failed = RunDir(outcomes[1].run_dir)
    assert failed.state() == "failed" and "bad data" in failed.log.read_text()
    assert json.loads(failed.failed.read_text())["error"] == "RuntimeError"


@pytest.mark.slow
def test_each_member_has_its_own_wandb_run(tmp_path):
    configs = pack_configs("tracking.wandb=offline", "train.max_steps=20", n=2)
    outcomes = execute(configs, dirs(tmp_path, configs))
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


@pytest.mark.slow
def test_wandb_gets_sample_tables_at_the_log_spaced_evaluations_only(tmp_path):
    cfg = small("data.P=64", "tracking.wandb=offline", "train.max_steps=40", "eval.every=10")
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"n_evals": 2})})
    (outcome,) = execute([cfg], dirs(tmp_path, [cfg]))
    (offline,) = (outcome.run_dir / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    rows = [r["history"]["item"] for r in records if r.get("type") == "history"]
    evaluated = [row["step"] for row in rows if "val/loss" in row]
    tabled = [row["step"] for row in rows if "gen/samples.nrows" in row]
    assert evaluated == [1, 10, 20, 30, 40] and tabled == [1, 40]  # log-spaced: 1 and 40


# --- compiled steps (what runs do on GPUs) follow the eager ones ------------------------------
# Inductor needs a C++ compiler and minutes on a CPU, so torch.compile is pointed at the
# aot_eager backend here (the aot_eager fixture, tests/conftest.py): Dynamo still traces our
# step (vmap, functional_call, the per-member clipping) and AOTAutograd still builds its
# backward, which is where tracing goes wrong.


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "n"), [("transformer", 1), ("transformer", 3), ("tree_unet", 3)])
def test_a_compiled_step_follows_the_eager_one(tmp_path, aot_eager, arch, n):
    trajectories = []
    for mode in ("off", "default"):
        configs = pack_configs(
            f"model.arch={arch}", "train.max_steps=20", f"train.compile={mode}", n=n
        )
        losses, _ = losses_of(configs, dirs(tmp_path / mode, configs))
        trajectories.append(losses)
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=0, atol=1e-5)


# --- early stopping ----------------------------------------------------------------------------


def test_early_stopping_waits_for_its_patience_and_min_steps():
    from rhmscale.training.schedule import eval_steps, stopped_early

    def rows(*losses):
        return [{"step": 10 * (i + 1), "val/loss": x} for i, x in enumerate(losses)]

    assert not stopped_early(rows(3.0, 2.0, 1.0), patience=2, min_steps=0)
    assert stopped_early(rows(3.0, 1.0, 2.0, 1.5), patience=2, min_steps=0)
    assert not stopped_early(rows(3.0, 1.0, 2.0, 1.5), patience=3, min_steps=0)
    assert not stopped_early(rows(3.0, 1.0, 2.0, 1.5), patience=2, min_steps=41)
    assert not stopped_early(rows(3.0, 1.0, 2.0, 1.5), patience=0, min_steps=0)
    assert stopped_early(rows(float("nan"), 1.0, 2.0), patience=1, min_steps=0)
    assert eval_steps(100, 3, every=25) == [1, 10, 25, 50, 75, 100]


def test_restacking_must_pay_for_its_start_up():
    from rhmscale.training.schedule import StepClock

    clock = StepClock(warmup=0, sync=lambda: None)
    assert not clock.restack_pays(10_000, 0.5)  # nothing measured yet
    clock.startup_s, clock.step_s = 15.0, 0.003  # an H100 pack of 32 tiny models
    assert not clock.restack_pays(9_000, 0.7)  # saves at most 19 s: not twice 15 s
    clock.step_s = 0.036  # a pack of 32 transformers at L=5
    assert clock.restack_pays(9_000, 0.5)


@pytest.mark.slow
def test_a_member_that_stops_early_leaves_the_others_their_lone_trajectory(tmp_path, monkeypatch):
    from rhmscale.training.schedule import StepClock

    monkeypatch.setattr(StepClock, "restack_pays", lambda *args: True)  # re-stack at once
    # Member 0 stops at its first evaluation without a new best val/loss; the pack of two is
    # then re-stacked as a pack of one, whose run must still follow its lone run step for step.
    stopper, runner = pack_configs("eval.every=5", n=2)
    stopper = stopper.model_copy(
        update={"train": stopper.train.model_copy(update={"early_stop_patience": 1})}
    )
    steps = []
    early, done = execute(
        [stopper, runner],
        dirs(tmp_path / "pack", [stopper, runner]),
        on_step=lambda _, losses: steps.append(losses[-1]),  # the runner is the last member
    )
    assert early.state == done.state == "done"
    assert early.result["stopped_early"] and early.result["final"]["step"] < 60
    assert not done.result["stopped_early"] and done.result["final"]["step"] == 60
    rows = history(early.run_dir)
    assert rows[-1]["step"] == early.result["final"]["step"]  # nothing recorded after the stop
    best = min(rows, key=lambda row: row["val/loss"])
    assert early.result["best_step"] == best["step"] < early.result["final"]["step"]
    assert "training 1 run(s) from step" in RunDir(done.run_dir).log.read_text()  # re-stacked
    lone, _ = losses_of([runner], dirs(tmp_path / "lone", [runner]))
    torch.testing.assert_close(torch.stack(steps), lone[:, 0], rtol=0, atol=1e-5)
    assert_rows_close(history(done.run_dir), history(dirs(tmp_path / "lone", [runner])[0]))


def test_val_loss_draws_the_same_t_and_masks_at_every_evaluation():
    """Common random numbers: the same weights score the same val/loss at any step, so early
    stopping compares models, not draws; the samples still change from step to step."""
    from rhmscale.models.diffusion import MaskedDiffusion
    from rhmscale.training.evaluation import eval_generators, sample_and_score, val_generators

    configs = [small(*member) for member in MEMBERS[:2]]
    cfg = configs[0]
    stack = stack_denoisers(cfg.model, cfg.grammar, [c.seed for c in configs])
    diffusion = MaskedDiffusion(cfg.grammar.v, cfg.diffusion.schedule, cfg.diffusion.antithetic)
    test = torch.randint(0, cfg.grammar.v, (2, cfg.data.n_test, cfg.grammar.seq_len))
    cpu = torch.device("cpu")
    scored = [
        sample_and_score(
            diffusion,
            stack,
            cfg,
            test,
            eval_generators(configs, step, cpu),
            val_generators(configs, cpu),
        )  # fmt: skip
        for step in (10, 20)
    ]
    (samples_a, loss_a), (samples_b, loss_b) = scored
    assert torch.equal(loss_a, loss_b) and not torch.equal(samples_a, samples_b)
    assert loss_a[0] != loss_a[1]  # each member its own draws


@pytest.mark.parametrize("verdict", ["pruned", "settled"])
def test_a_judged_member_stops_at_that_evaluation_and_says_why(tmp_path, verdict):
    """A tuning trial's judge stops its run at the evaluation it says so, in a pack whose
    other member trains to the end; the stopped run is done, with its verdict true."""
    configs = pack_configs("eval.every=10", n=2)
    asked = []

    def stop_at_20(row):
        asked.append(row["step"])
        return verdict if row["step"] >= 20 else None

    outcomes = execute(configs, dirs(tmp_path, configs), judge=[stop_at_20, None])
    judged, other = (o.result for o in outcomes)
    assert [o.state for o in outcomes] == ["done", "done"]
    assert judged[verdict] and judged["stopped_early"] and judged["final"]["step"] == 20
    assert not judged[{"pruned": "settled", "settled": "pruned"}[verdict]]
    assert asked == sorted(set(asked)) and asked[-1] == 20  # once per evaluation row
    assert not other["pruned"] and not other["settled"] and other["final"]["step"] == 60
