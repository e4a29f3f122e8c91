"""Slots: a run that takes a slot mid-pack, fresh or resumed from its checkpoint, trains exactly
as its lone run (losses step for step to 1e-5, its metrics.parquet), and so do the runs beside
it; an empty slot's weights do not move."""

import pytest
import torch

from rhmscale.store.folders import RunDir
from rhmscale.training import execute
from rhmscale.training.runs import Runs
from tests.test_training import assert_rows_close, dirs, history, losses_of, pack_configs


def stopper_runner_joiner(*overrides):
    """Run 0 stops early at its first evaluations (patience 1, an evaluation every 5 steps);
    run 1 trains to max_steps (60); run 2 waits for a slot."""
    stopper, runner, joiner = pack_configs("eval.every=5", *overrides)
    train = stopper.train.model_copy(update={"early_stop_patience": 1})
    return stopper.model_copy(update={"train": train}), runner, joiner


def train_in_slots(root, first, queued):
    """Train `first` in slots, feeding `queued` runs to the slots that empty. Returns each
    run's losses in its slot, by its own step (run id -> {step: loss}), where each queued run
    joined (run id -> (slot, the other slot's run's step)) and the outcomes."""
    runs = Runs()
    for config, path in zip(first, dirs(root, first), strict=True):
        runs.add(config, RunDir(path))
    waiting, joined, losses = list(queued), {}, {}

    class Feed:  # set up on the training thread, when a slot asks
        def next(self):
            if not waiting:
                return None
            config = waiting.pop(0)
            return runs.join(config, RunDir(dirs(root, [config])[0]))

        def exhausted(self):
            return not waiting

    def on_step(trainer, step_losses):
        for k, member in enumerate(trainer.slots):
            if member is None or trainer.train_step.active[k] == 0:
                continue
            run_id, step = member.config.run_id(), int(trainer.steps[k])
            if run_id not in losses and k == 0 and len(first) > 1:
                joined[run_id] = (k, int(trainer.steps[1]))
            losses.setdefault(run_id, {})[step] = step_losses[k].item()

    runs.train(False, None, None, on_step, feed=Feed())
    return losses, joined, runs.outcomes


def lone_losses(root, config):
    steps, (outcome,) = losses_of([config], dirs(root, [config]))
    assert outcome.state == "done"
    return steps[:, 0]


def assert_follows(slot_losses, lone, first_step=1):
    steps = sorted(slot_losses)
    assert steps == list(range(first_step, first_step + len(steps)))
    torch.testing.assert_close(
        torch.tensor([slot_losses[s] for s in steps]),
        lone[first_step - 1 : first_step - 1 + len(steps)],
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tree_unet", "transformer"])
def test_a_run_that_joins_mid_pack_trains_as_its_lone_run(tmp_path, arch):
    stopper, runner, joiner = stopper_runner_joiner(f"model.arch={arch}")
    losses, joined, outcomes = train_in_slots(tmp_path / "slots", [stopper, runner], [joiner])
    assert {o.state for o in outcomes.values()} == {"done"}
    # The joiner took the stopper's slot, after the runner's first steps.
    slot, runner_step = joined[joiner.run_id()]
    assert slot == 0 and 5 <= runner_step < 60
    assert outcomes[stopper.run_id()].result["stopped_early"]
    for config in (runner, joiner):  # the runner beside it, and the run that joined
        lone = lone_losses(tmp_path / "lone", config)
        slot_losses = losses[config.run_id()]
        assert max(slot_losses) == 60
        assert_follows(slot_losses, lone)
        (path,) = dirs(tmp_path / "slots", [config])
        assert_rows_close(history(path), history(dirs(tmp_path / "lone", [config])[0]))


@pytest.mark.slow
def test_a_run_resumed_into_a_slot_trains_as_its_lone_run(tmp_path):
    stopper, runner, joiner = stopper_runner_joiner("model.arch=tree_unet")
    root = tmp_path / "slots"
    # The joiner ran alone to step 20, checkpointed (checkpoint_every=20) and stopped.
    (outcome,) = execute([joiner], dirs(root, [joiner]), stop_at_step=20)
    assert outcome.state == "interrupted"
    losses, joined, outcomes = train_in_slots(root, [stopper, runner], [joiner])
    assert {o.state for o in outcomes.values()} == {"done"}
    lone = lone_losses(tmp_path / "lone", joiner)
    assert_follows(losses[joiner.run_id()], lone, first_step=21)
    (path,) = dirs(root, [joiner])
    assert_rows_close(history(path), history(dirs(tmp_path / "lone", [joiner])[0]))
    assert "took slot 0 at its step 20" in RunDir(path).log.read_text()


def test_an_empty_slot_does_not_move_its_weights(tmp_path):
    from rhmscale.rhm.data import make_datasets
    from rhmscale.training.fabric import make_fabric
    from rhmscale.training.member import Member
    from rhmscale.training.trainer import Trainer

    configs = pack_configs("model.arch=tree_unet", n=2)
    members = [
        Member(c, make_datasets(c), RunDir(tmp_path / str(i))) for i, c in enumerate(configs)
    ]
    trainer = Trainer(members, make_fabric(configs[0]))
    trainer.advance()
    trainer.free(0)
    before = {n: p[0].clone() for n, p in trainer.stack.params.items()}
    for _ in range(3):
        trainer.advance()
    assert trainer.steps.tolist() == [1, 4]
    for name, p in trainer.stack.params.items():
        assert torch.equal(p[0], before[name]), name


def test_a_run_is_marked_training_in_its_lock_when_it_takes_a_slot(tmp_path):
    """`sweep status` counts a run as running once its lock says "training": a run taken and
    set up ahead of its slot is not marked yet."""
    from rhmscale.store.lock import holder, try_lock

    stopper, runner, joiner = stopper_runner_joiner("model.arch=tree_unet")
    configs = [stopper, runner, joiner]
    stores = {c.run_id(): RunDir(p) for c, p in zip(configs, dirs(tmp_path, configs), strict=True)}
    locks = {run_id: try_lock(store.lock_file) for run_id, store in stores.items()}
    runs = Runs()
    for config in (stopper, runner):
        runs.add(config, stores[config.run_id()], lock=locks[config.run_id()])
    seen = []  # the joiner's lock line at each step, before and after it takes a slot

    class Feed:
        def __init__(self):
            self.left = [joiner]

        def next(self):
            if not self.left:
                return None
            config = self.left.pop()
            return runs.join(config, stores[config.run_id()], lock=locks[config.run_id()])

        def exhausted(self):
            return not self.left

    def on_step(trainer, losses):
        seen.append({r: holder(store.lock_file) for r, store in stores.items()})

    runs.train(False, None, None, on_step, feed=Feed())
    first = seen[0]
    assert all(" training since " in first[c.run_id()] for c in (stopper, runner))
    assert " training since " not in first[joiner.run_id()]  # taken, waiting for a slot
    assert any(" training since " in (lines[joiner.run_id()] or "") for lines in seen)
    assert {o.state for o in runs.outcomes.values()} == {"done"}
