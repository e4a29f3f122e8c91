"""Nothing runs away (issue 19, point 2): a stop request ends an evaluation at its next denoiser
call and the resumed run redoes it; every config number that sizes memory or time is bounded when
the config is read, naming the key; YAML aliases cannot expand a small file into a huge tree."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from rhmscale.config_io import build_config, load_yaml
from rhmscale.errors import UserError
from rhmscale.store.folders import RunDir
from rhmscale.training import execute, stop

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))
TINY = [
    *("grammar.L=2", "grammar.v=4", "grammar.m=2", "data.P=8", "data.n_test=4"),
    *("train.max_steps=30", "train.checkpoint_every=10", "model.arch=tree_unet"),
    *("model.width=16", "eval.n_samples=16", "eval.batch_size=4", "eval.n_evals=3"),
    *("train.device=cpu", "tracking.wandb=disabled"),
]  # evaluations at steps 1, 5 and 30, of 4 sampling batches each


def tiny(*overrides):
    return build_config({}, [*TINY, *overrides])


def run(config, path, **kw):
    (outcome,) = execute([config], [path], **kw)
    return outcome


def history(path):
    rows = pd.read_parquet(RunDir(path).metrics).to_dict("records")
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


# --- a stop request during an evaluation ------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An undisturbed run, to compare the interrupted ones with."""
    path = tmp_path_factory.mktemp("whole")
    assert run(tiny(), path).state == "done"
    return history(path)


def stored_state(path):
    return torch.load(RunDir(path).last_checkpoint, weights_only=False)


@pytest.mark.parametrize("at", [5, 30])  # an evaluation mid-run, and the final one
def test_a_stop_request_during_an_evaluation_interrupts_it_and_a_resume_redoes_it(
    tmp_path, whole, at
):
    step, asked = [0], []

    def should_stop() -> bool:  # asked after each step, and before each denoiser call
        if step[0] == at:
            asked.append(step[0])
        return len(asked) >= 2  # once a step of this evaluation's sampling has run

    def on_step(trainer, losses):
        step[0] = int(trainer.steps[0])

    outcome = run(tiny(), tmp_path, should_stop=should_stop, on_step=on_step)
    assert outcome.state == "interrupted"
    assert len(asked) == 2  # it stopped at the next denoiser call, not after the evaluation
    state = stored_state(tmp_path)
    assert state["step"] == at  # checkpointed at the evaluation's step, without its row
    assert [row["step"] for row in state["history"]] == [r["step"] for r in whole if r["step"] < at]
    assert f"stopped during the evaluation at step {at}" in RunDir(tmp_path).log.read_text()
    assert run(tiny(), tmp_path).state == "done"
    assert history(tmp_path) == whole  # the evaluation redone, exactly as if never stopped


def test_a_stop_signal_during_an_evaluation_ends_it(tmp_path, whole, monkeypatch):
    monkeypatch.setattr(stop, "_requested", {})  # this test's stop flag, not the process's

    def signal_at_5(trainer, losses):
        if trainer.steps[0] == 5:  # just before the evaluation at step 5
            os.kill(os.getpid(), signal.SIGTERM)

    assert run(tiny(), tmp_path, on_step=signal_at_5).state == "interrupted"
    assert stop.requested()
    assert [row["step"] for row in stored_state(tmp_path)["history"]] == [1]
    monkeypatch.setattr(stop, "_requested", {})
    assert run(tiny(), tmp_path).state == "done"
    assert history(tmp_path) == whole


def test_batched_sampling_draws_what_one_call_draws():
    """Evaluation samples batch by batch (eval.batch_size bounds its memory): the same
    samples as MaskedDiffusion.sample over all of them with that batch size."""
    from rhmscale.models.diffusion import MaskedDiffusion
    from rhmscale.models.stacked import stack_denoisers
    from rhmscale.training.evaluation import eval_generators, sample_and_score, val_generators

    config, cpu = tiny("eval.n_samples=10"), torch.device("cpu")
    stack = stack_denoisers(config.model, config.grammar, [config.seed])
    diffusion = MaskedDiffusion(config.grammar.v)
    test = torch.zeros((1, 4, config.grammar.seq_len), dtype=torch.long)
    generators, val_gens = eval_generators([config], 7, cpu), val_generators([config], cpu)
    samples, _ = sample_and_score(diffusion, stack, config, test, generators, val_gens)
    at_once = diffusion.sample(
        stack, 10, config.grammar.seq_len, None, cpu, eval_generators([config], 7, cpu), 4
    )
    assert torch.equal(samples, at_once)


# --- bounds on what sizes memory or time ------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "bound"),
    [
        ("eval.n_samples=1000000000", "1,000,000"),
        ("eval.batch_size=1000000000", "65,536"),
        ("eval.val_draws=1000000", "256"),
        ("eval.n_evals=1000000000", "10,000"),
        ("data.n_test=1000000000", "1,000,000"),
        ("data.P=1000000000", "100,000,000"),
        ("train.batch_size=1000000000", "65,536"),
        ("train.max_steps=1000000000000", "10,000,000"),
        ("train.warmup_steps=1000000000000", "10,000,000"),
        ("train.min_steps=1000000000000", "10,000,000"),
        ("model.width=1000000", "4,096"),
        ("model.depth=1000000", "64"),
        ("model.heads=1000000", "128"),
        ("diffusion.sampling_steps=1000000000", "10,000"),
        ("grammar.v=1000000000", "1,024"),
        ("grammar.m=1000000000", "1,024"),
        ("seed=18446744073709551616", "4,294,967,295"),
        ("tracking.n_table_samples=1000000000", "1,000"),
    ],
)
def test_a_size_beyond_its_bound_is_refused_naming_the_key(override, bound):
    key = override.split("=")[0]
    started = time.perf_counter()
    with pytest.raises(UserError, match=f"{key}: must be at most {bound} ") as error:
        build_config({}, [override])
    assert time.perf_counter() - started < 1
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["grammar.L=12", "eval.batch_size=2048"], "eval.batch_size=2,048 sequences of 4,096"),
        (["grammar.L=12", "train.batch_size=4096"], "lower train.batch_size"),
        (["grammar.L=12", "eval.n_samples=200000"], "lower eval.n_samples"),
        (["train.max_steps=1000000", "eval.every=1"], "raise eval.every"),
    ],
)
def test_sizes_that_depend_on_several_keys_are_bounded(overrides, says):
    with pytest.raises(UserError, match=says):
        build_config({}, overrides)


def test_the_defaults_and_the_presets_are_within_the_bounds():
    from rhmscale.sweeps.grid import expand_points
    from rhmscale.sweeps.spec import load_spec, preset_names

    build_config({}, [])
    for name in preset_names():
        assert expand_points(load_spec(name)).points


@pytest.mark.slow
def test_a_run_with_a_huge_evaluation_exits_2_at_once(tmp_path):
    overrides = [*TINY, "eval.n_samples=1000000000"]
    result = subprocess.run(
        [RHMSCALE, "run", *[a for o in overrides for a in ("--set", o)], "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "eval.n_samples" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


# --- YAML that expands ------------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """Flow-style YAML of 9**levels ones in nested lists, each level 9 aliases of the one below."""
    names = "abcdefghijklmnop"[:levels]
    parts = [f"&{names[0]} [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    parts += [f"&{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:], strict=False)]
    return f"[{', '.join(parts)}]"


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"tracking:\n  tags: {alias_bomb()}\n")
    started = time.perf_counter()
    with pytest.raises(UserError, match="aliases expand it to more than 100,000"):
        load_yaml(bomb)
    with pytest.raises(UserError, match="override 'tracking.tags=.*aliases expand"):
        build_config({}, [f"tracking.tags={alias_bomb()}"])
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: &a [*a]\n", "contains it"),  # an alias inside its own anchor: endless
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: " + "x" * 2_000_000 + "\n", "more than 1,000,000 characters"),
    ],
)
def test_endless_deep_or_huge_yaml_is_one_user_error(tmp_path, text, says):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=says):
        load_yaml(path)


def test_yaml_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train: &t {lr: 0.01, max_steps: 40}\neval: {n_samples: 8}\nx: {<<: *t}\n")
    assert load_yaml(path)["x"] == {"lr": 0.01, "max_steps": 40}
    assert build_config({}, ["tracking.tags=[&a x, *a]"]).tracking.tags == ["x", "x"]
