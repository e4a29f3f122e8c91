"""Runs and packs start in order of their expected cost (rhmscale/sweeps/cost.py): longer
sequences, more steps and more data first, on SLURM arrays and local queues alike."""

from pathlib import Path

import pandas as pd
import pytest

from rhmscale.config import RunConfig
from rhmscale.sweeps.cost import expected_steps, pack_cost
from rhmscale.sweeps.dispatch import prepare
from rhmscale.sweeps.grouping import group_tasks, pack_plan
from rhmscale.sweeps.spec import ExecutorSpec, load_spec, parse_spec

COLLECTED = Path(__file__).resolve().parents[1] / "results" / "paper-lite" / "collected.csv"


def packs_in_order(tasks):
    """pack number -> its members' configs, in the order the packs start."""
    packs: dict[int, dict[str, RunConfig]] = {}
    for task in tasks:
        for item in task:
            packs.setdefault(item["pack"], {})[item["run_id"]] = RunConfig.model_validate(
                item["config"]
            )
    return [list(packs[number].values()) for number in sorted(packs)]


def dominates(a: list[RunConfig], b: list[RunConfig]) -> bool:
    """Pack a is at least as long as b by every measure, and has longer sequences, more
    steps allowed or more members: any cost model that grows with each must start a before b.
    (More data alone is no proof: two packs of runs that all reach max_steps cost the same.)"""

    def measures(pack):
        first = pack[0]
        return (first.grammar.seq_len, first.train.max_steps, len(pack), first.train.batch_size)

    ma, mb = measures(a), measures(b)
    more_data = max(c.data.P for c in a) >= max(c.data.P for c in b)
    return more_data and all(x >= y for x, y in zip(ma, mb, strict=True)) and ma != mb


def test_paper_packs_start_most_expensive_first(tmp_path):
    """The paper preset mixes L=3 (8 tokens, 30,000 steps), L=4 (16 tokens, 60,000 steps) and
    s=3 (27 tokens) cells: ordering by the largest data.P alone started an L=3 pack before an
    L=4 pack of the same P and more of everything."""
    packs = packs_in_order(prepare(load_spec("paper"), tmp_path, query_queue=False).tasks)
    assert len(packs) == 20
    for i, earlier in enumerate(packs):
        for later in packs[i + 1 :]:
            assert not dominates(later, earlier), (
                [(c.grammar.L, c.data.P) for c in earlier[:1]],
                [(c.grammar.L, c.data.P) for c in later[:1]],
            )
    costs = [pack_cost(pack) for pack in packs]
    assert costs == sorted(costs, reverse=True)
    assert packs[0][0].grammar.L == 4  # twice the tokens and up to twice the steps of L=3
    short = [i for i, pack in enumerate(packs) if max(expected_steps(c) for c in pack) == 2000]
    assert short and min(short) > max(
        i for i, pack in enumerate(packs) if max(expected_steps(c) for c in pack) >= 30000
    )


@pytest.mark.parametrize("kind", ["local", "slurm"])
def test_at_equal_p_the_longer_sequences_start_first(kind):
    """Two cells with the same sizes, L=3 listed first: the L=4 packs come first (by the
    largest data.P alone they tied and kept the L=3 packs in front)."""
    items = []
    for L, max_steps in ((3, 30000), (4, 60000)):
        for P in (64, 128, 4096, 8192):
            tree = {
                "grammar": {"v": 32, "m": 3, "L": L},
                "data": {"P": P},
                "train": {"max_steps": max_steps, "early_stop_patience": 6, "min_steps": 2000},
            }
            items.append({"run_id": f"L{L}P{P}", "config": tree, "run_dir": "/x"})
    ex = ExecutorSpec(kind=kind, pack=True, runs_per_task=2, workers=2)
    order = [c[0].grammar.L for c in packs_in_order(group_tasks(items, ex))]
    assert order == [4, 3, 4, 3]  # at each P range, L=4 first


def test_unpacked_runs_start_longest_first():
    """Without packs too: the run of the most steps is dealt first, on SLURM and locally."""
    items = [
        {"run_id": f"P{P}", "config": {"data": {"P": P}, "train": {"max_steps": steps}}}
        for P, steps in ((64, 100), (64, 4000), (64, 900))
    ]
    slurm = group_tasks(items, ExecutorSpec(kind="slurm"))
    assert [t[0]["run_id"] for t in slurm] == ["P64", "P64", "P64"]
    assert [t[0]["config"]["train"]["max_steps"] for t in slurm] == [4000, 900, 100]
    local = group_tasks(items, ExecutorSpec(kind="local", workers=2))
    assert [i["config"]["train"]["max_steps"] for i in local[0]] == [4000, 100]


def test_expected_steps_follow_the_paper_lite_runs():
    """The model against the data it was fitted on: the final step of each paper-lite run."""
    frame = pd.read_csv(COLLECTED)
    final = frame[frame["final"].astype(str) == "True"]
    assert len(final) == 189
    errors = []
    for _, row in final.iterrows():
        config = RunConfig.model_validate(
            {
                "data": {"P": int(row["data.P"])},
                "train": {
                    key: int(row[f"train.{key}"])
                    for key in ("max_steps", "min_steps", "early_stop_patience")
                },
            }
        )
        errors.append(expected_steps(config) / row["step"])
    within = sum(1 / 1.5 <= e <= 1.5 for e in errors) / len(errors)
    assert within >= 0.9, sorted(errors)


def test_without_early_stopping_a_run_trains_max_steps():
    config = RunConfig.model_validate({"data": {"P": 100_000}, "train": {"max_steps": 300}})
    assert expected_steps(config) == 300
    small = RunConfig.model_validate(
        {"data": {"P": 8}, "train": {"max_steps": 300, "early_stop_patience": 2, "min_steps": 100}}
    )
    assert expected_steps(small) == 100  # early stopping ends it at min_steps


def test_plan_rows_carry_the_expected_steps_and_cost(tmp_path):
    spec = parse_spec(
        {
            "name": "mix",
            "base": {"data": {"n_test": 16}, "train": {"device": "cpu", "max_steps": 500}},
            "grid": [
                {"grammar.L": [2], "data.P": [32, 64]},
                {"grammar.L": [3], "data.P": [32, 64]},
            ],
            "executor": {"kind": "slurm", "pack": True, "runs_per_task": 4},
        }
    )
    plan = pack_plan(prepare(spec, tmp_path, query_queue=False).tasks)
    assert [pack.shape["grammar.L"] for pack in plan.packs] == [3, 2]
    assert [pack.steps for pack in plan.packs] == [500, 500]
    assert plan.packs[0].cost == 2 * plan.packs[1].cost  # 8 tokens against 4
