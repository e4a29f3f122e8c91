"""The local executor's GPUs, on a machine without any: fake GPU ids in CUDA_VISIBLE_DEVICES,
what each worker is handed (rhmscale/sweeps/gpus.py), and what a worker's run.log records."""

import re
from collections import Counter

import pytest

from rhmscale.errors import UserError
from rhmscale.sweeps.executors import submit_local
from rhmscale.sweeps.gpus import visible_gpus, worker_gpus
from rhmscale.sweeps.grouping import local_workers
from rhmscale.sweeps.spec import ExecutorSpec


class RecordingExecutor:
    """Stands in for submitit's LocalExecutor: records the GPUs each submission would get
    (submitit writes them, comma-joined, into the worker's CUDA_VISIBLE_DEVICES)."""

    def __init__(self) -> None:
        self.parameters: dict = {}
        self.given: list[str] = []

    def update_parameters(self, **kwargs) -> None:
        self.parameters.update(kwargs)

    def submit(self, fn, *args):
        n = self.parameters.get("gpus_per_node", 0)
        visible = self.parameters.get("visible_gpus", ()) or range(n)
        self.given.append(",".join(str(k) for k in list(visible)[:n]))
        return len(self.given)


def given_to_workers(monkeypatch, devices: str, **executor) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each worker a local submission starts, as many as it starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices)
    ex = ExecutorSpec(kind="local", **executor)
    recorder = RecordingExecutor()
    submit_local(recorder, ex, None, [()] * local_workers(ex), threads=1)
    return recorder.given


@pytest.mark.parametrize(("n_gpus", "per_gpu"), [(1, 3), (2, 1), (2, 3), (4, 2), (8, 3)])
def test_each_gpu_gets_tasks_per_gpu_workers(monkeypatch, n_gpus, per_gpu):
    ids = [str(10 + 3 * i) for i in range(n_gpus)]  # not 0..n-1: names pass through as given
    given = given_to_workers(monkeypatch, ",".join(ids), gpus_per_task=1, tasks_per_gpu=per_gpu)
    assert len(given) == n_gpus * per_gpu
    assert Counter(given) == {gpu: per_gpu for gpu in ids}
    assert given[:n_gpus] == ids  # the first workers (the longest packs) on different GPUs


def test_only_the_gpus_the_user_made_visible_are_used(monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3: workers get 2 and 3; the old code gave them 0 and 1, two GPUs
    the user had not allowed."""
    given = given_to_workers(monkeypatch, "2,3", gpus_per_task=1, tasks_per_gpu=2)
    assert given == ["2", "3", "2", "3"]


def test_a_worker_resubmitted_alone_gets_its_own_gpu(monkeypatch):
    """`tune retry` resubmits the workers that ended (here 1 and 3 of 0..3 on two GPUs): each
    gets the GPU its number had, not the first GPU, where worker 0 still runs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    recorder = RecordingExecutor()
    ex = ExecutorSpec(kind="local", gpus_per_task=1, tasks_per_gpu=2)
    submit_local(recorder, ex, None, [(), ()], threads=1, slots=[1, 3])
    assert recorder.given == ["1", "1"]


def test_tasks_of_several_gpus_get_disjoint_groups(monkeypatch):
    assert given_to_workers(monkeypatch, "4,5,6,7", gpus_per_task=2) == ["4,5", "6,7"]
    # 3 GPUs, 2 a task: one task's worth; the third GPU is left, never shared by two groups.
    assert given_to_workers(monkeypatch, "0,1,2", gpus_per_task=2, workers=2) == ["0,1", "0,1"]


def test_too_few_gpus_for_a_task_is_a_user_error(monkeypatch):
    with pytest.raises(UserError, match="gpus_per_task=2 but 1 GPU"):
        given_to_workers(monkeypatch, "3", gpus_per_task=2)


def test_gpus_named_by_uuid_ask_for_indices(monkeypatch):
    with pytest.raises(UserError, match="set CUDA_VISIBLE_DEVICES to GPU indices"):
        given_to_workers(monkeypatch, "GPU-8a2b,GPU-77c1", gpus_per_task=1)


def test_no_gpus_asked_for_hands_out_none(monkeypatch):
    assert set(given_to_workers(monkeypatch, "0,1", workers=3)) == {""}


@pytest.mark.parametrize(
    ("env", "gpus"),
    [("2,3", ["2", "3"]), (" 1 , 0 ", ["1", "0"]), ("", []), ("-1", []), ("0,-1,1", ["0"])],
)
def test_visible_gpus_read_as_cuda_reads_them(monkeypatch, env, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == gpus


def test_visible_gpus_without_the_variable_are_torchs(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_gpus() == ["0", "1", "2"]
    assert worker_gpus(4, 1, visible_gpus()) == [("0",), ("1",), ("2",), ("0",)]


@pytest.mark.slow
def test_each_local_worker_sees_its_fake_gpu(tmp_path, monkeypatch):
    """End to end: CUDA_VISIBLE_DEVICES=5,7 and two workers a GPU; four CPU runs, one per
    worker (unpacked runs are dealt out in advance); each run.log names the GPU its worker
    was given, as on a GPU machine."""
    from rhmscale.sweeps.dispatch import submit, wait
    from rhmscale.sweeps.spec import parse_spec

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    spec = parse_spec(
        {
            "name": "fake-gpus",
            "base": {
                "grammar": {"v": 4, "m": 2, "L": 2},
                "data": {"n_test": 8},
                "model": {"width": 8},
                "train": {"max_steps": 4, "batch_size": 8, "device": "cpu"},
                "eval": {"n_samples": 8, "n_evals": 1},
                "tracking": {"wandb": "disabled"},
            },
            "grid": {"data.P": [8, 12], "seed": [0, 1]},
            "executor": {"kind": "local", "gpus_per_task": 1, "tasks_per_gpu": 2},
        }
    )
    submission = submit(spec, tmp_path)
    assert len(submission.jobs) == 4
    assert not wait(submission)
    seen = []
    for log in (tmp_path / "fake-gpus" / "runs").glob("*/run.log"):
        seen += re.findall(r"CUDA_VISIBLE_DEVICES=(\S*)", log.read_text())
    assert Counter(seen) == {"5": 2, "7": 2}


def first_packs(monkeypatch, tmp_path, devices: str):
    """paper-lite locally on the given GPUs: each worker's GPU, the pack it starts with, and
    the size of every pack."""
    from rhmscale.sweeps.dispatch import prepare
    from rhmscale.sweeps.spec import load_spec

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices)
    prepared = prepare(load_spec("paper-lite"), tmp_path, query_queue=False)
    gpus = worker_gpus(len(prepared.tasks), 1, visible_gpus())
    pack_of = {item["run_id"]: item["pack"] for task in prepared.tasks for item in task}
    sizes = Counter(pack_of.values())
    return [g for (g,) in gpus], [task[0]["pack"] for task in prepared.tasks], sizes


def test_on_eight_gpus_every_worker_has_a_pack_and_the_longest_start_apart(monkeypatch, tmp_path):
    """paper-lite makes 7 packs of 27 for one GPU's 3 workers; on 8 GPUs (24 workers) those 7
    left GPU 7 without a pack and 17 workers idle. Packs now hold at most runs/workers, and
    worker i starts with pack i, so the 8 longest packs start on the 8 GPUs."""
    gpus, first, sizes = first_packs(monkeypatch, tmp_path, "0,1,2,3,4,5,6,7")
    assert len(gpus) == 24 and len(sizes) >= 24
    assert first == list(range(24))
    assert sorted(gpus[:8]) == [str(g) for g in range(8)]  # packs 0-7, one on each GPU
    assert Counter(gpus) == {str(g): 3 for g in range(8)}
    assert max(sizes.values()) <= 189 // 24


def test_on_one_gpu_the_packs_stay_as_measured(monkeypatch, tmp_path):
    """The one-GPU run that results/paper-lite and bench/results measured: 7 packs of 27."""
    gpus, first, sizes = first_packs(monkeypatch, tmp_path, "0")
    assert gpus == ["0"] * 3 and first == [0, 1, 2]
    assert sorted(sizes.values()) == [27] * 7
