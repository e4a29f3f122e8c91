"""W&B runs read back (offline logs, API) give the same table as collect() on the run store."""

import math
import shutil
import struct
import zlib

import pandas as pd
import pytest

from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.results.collect import collect
from rhmscale.results.collect_wandb import (
    SkipRun,
    collect_wandb_api,
    collect_wandb_offline,
    frame_from_wandb_run,
    merge_logs,
)
from rhmscale.results.wandb_log import (
    BLOCK,
    CorruptLog,
    OfflineLog,
    find_offline_logs,
    log_records,
    read_offline_log,
)
from rhmscale.training import execute

# v=4, m=2, s=2, L=2: 32 distinct sequences of length 4; a run takes about a second.
TINY = [
    "grammar.v=4",
    "grammar.m=2",
    "grammar.L=2",
    "model.width=16",
    "model.depth=1",
    "train.batch_size=16",
    "train.warmup_steps=2",
    "train.device=cpu",
    "eval.n_samples=16",
    "data.n_test=8",
    "tracking.wandb=offline",
    "tracking.group=wbtest",
]


def tiny(*overrides):
    return build_config({}, [*TINY, *overrides])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder with a finished run, a run interrupted then resumed (two W&B offline
    folders, one W&B run) and a run left interrupted."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-home")))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        done = tiny("data.P=16", "train.max_steps=6", "eval.n_evals=3")
        resumed = tiny(
            "data.P=20", "train.max_steps=12", "eval.n_evals=5", "train.checkpoint_every=4"
        )
        stopped = tiny("data.P=8", "train.max_steps=8", "eval.n_evals=3")

        def state(cfg, **kw) -> str:
            (outcome,) = execute([cfg], [root / "runs" / cfg.run_id()], **kw)
            return outcome.state

        assert state(done) == "done"
        assert state(resumed, stop_at_step=4) == "interrupted"
        assert state(resumed) == "done"
        assert state(stopped, stop_at_step=5) == "interrupted"
    ids = {"done": done.run_id(), "resumed": resumed.run_id(), "stopped": stopped.run_id()}
    return root, ids


def assert_same_table(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same runs, steps, metric values (to float tolerance) and config columns."""
    assert set(got.columns) == set(expected.columns)
    key = ["run_id", "step"]
    got = got.sort_values(key).reset_index(drop=True)[list(expected.columns)]
    expected = expected.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9)


@pytest.mark.slow
def test_offline_logs_give_the_same_table_as_the_run_store(sweep):
    root, ids = sweep
    store = collect(root)
    offline = collect_wandb_offline(root)
    assert sorted(offline.frame["run_id"].unique()) == sorted([ids["done"], ids["resumed"]])
    assert_same_table(offline.frame, store.frame)
    assert offline.frame["final"].sum() == 2
    assert (offline.frame["tracking.group"] == "wbtest").all()
    # The run left interrupted evaluated but did not reach train.max_steps.
    assert store.skipped == {"interrupted": [ids["stopped"]]}
    assert offline.skipped == {"unfinished": [ids["stopped"]]}


@pytest.mark.slow
def test_a_resumed_run_is_one_run_from_several_offline_folders(sweep):
    root, ids = sweep
    run_folder = root / "runs" / ids["resumed"]
    logs = find_offline_logs(run_folder)
    assert len(logs) == 2 and all(p.name == f"run-{ids['resumed']}.wandb" for p in logs)
    one = collect_wandb_offline(run_folder)
    steps = list(one.frame["step"])
    assert steps == sorted(steps) and steps[-1] == 12 and min(steps) < 4 < max(steps)
    # Each folder alone: the first stopped at step 4 (unfinished), the second has the rest.
    first, second = sorted(logs, key=lambda p: read_offline_log(p).start_time)
    assert collect_wandb_offline(first.parent).skipped == {"unfinished": [ids["resumed"]]}
    assert min(collect_wandb_offline(second.parent).frame["step"]) > 4


@pytest.mark.slow
def test_corrupt_and_truncated_logs_are_reported_not_fatal(sweep, tmp_path):
    root, ids = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(root, copy, symlinks=True)
    # A flipped byte inside a record: checksum mismatch -> corrupt.
    (damaged,) = find_offline_logs(copy / "runs" / ids["stopped"])
    data = bytearray(damaged.read_bytes())
    data[data.index(b"gen/acc_l1")] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match="checksum"):
        list(log_records(damaged.read_bytes()))
    # Not a W&B log at all -> corrupt.
    bogus = copy / "runs" / "bogus" / "wandb" / "offline-run-20250101_000000-bogus"
    bogus.mkdir(parents=True)
    (bogus / "run-bogus.wandb").write_bytes(b"this is not a transaction log")
    # The resumed run's second log cut short, as a killed writer leaves it: what was written
    # is read, and the run did not reach its last step -> unfinished.
    later = max(
        find_offline_logs(copy / "runs" / ids["resumed"]),
        key=lambda p: read_offline_log(p).start_time,
    )
    later.write_bytes(later.read_bytes()[: later.stat().st_size // 3])
    result = collect_wandb_offline(copy)
    assert result.skipped == {
        "corrupt": sorted(["bogus", ids["stopped"]]),
        "unfinished": [ids["resumed"]],
    }
    assert result.frame["run_id"].unique().tolist() == [ids["done"]]


def test_an_offline_folder_without_logs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no offline W&B runs"):
        collect_wandb_offline(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        collect_wandb_offline(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# The conversion itself, on hand-made history


def row(step, **metrics):
    return {"_step": step * 10, "_runtime": 1.0, "trainer/global_step": step, **metrics}


def test_conversion_keeps_evaluations_and_drops_wandb_and_lightning_keys():
    config = {
        "_wandb": {"value": {"cli_version": "0.31"}},
        "run_id": {"value": "abc"},
        "grammar": {"v": {"value": 8, "desc": None}},  # nested and wrapped, as the API may give
        "data.P": {"value": 64, "desc": None},
        "tracking.tags": ["a", "b"],
        "train.max_steps": 20,
    }
    history = [
        row(10, epoch=1.5, **{"train/loss": 0.5, "gen/acc_l1": 0.25, "val/loss": "NaN"}),
        # Lightning's own row at the same step: a per-step loss and its epoch counter.
        row(10, epoch=0, **{"train/loss": 9.0}),
        # A table-only row (media are dicts).
        row(10, **{"gen/samples": {"_type": "table-file", "ncols": 5}}),
        row(20, epoch=3.0, samples_seen=40, **{"train/loss": 0.2, "gen/acc_l1": 0.75}),
    ]
    frame = frame_from_wandb_run("abc", config, history)
    assert list(frame["step"]) == [10, 20]
    assert list(frame["epoch"]) == [1.5, 3.0] and list(frame["train/loss"]) == [0.5, 0.2]
    assert math.isnan(frame["val/loss"][0])
    assert frame["grammar.v"].tolist() == [8, 8] and frame["data.P"].tolist() == [64, 64]
    assert frame["tracking.tags"][0] == "a,b"
    assert frame["final"].tolist() == [False, True]
    assert not {c for c in frame.columns if c.startswith("_") or "trainer" in c or "samples." in c}
    assert "run_id" in frame.columns and "gen/samples" not in frame.columns


def test_conversion_skips_runs_without_evaluations_or_short_of_max_steps():
    with pytest.raises(SkipRun) as skip:
        frame_from_wandb_run("a", {"train.max_steps": 20}, [row(5, **{"train/loss": 1.0})])
    assert skip.value.reason == "unfinished"
    short = [row(5, **{"gen/acc_l1": 0.1})]
    with pytest.raises(SkipRun):
        frame_from_wandb_run("a", {"train.max_steps": 20}, short)
    # A summary with final/* (written when the run finished) overrides the step check.
    frame = frame_from_wandb_run("a", {"train.max_steps": 20}, short, {"final/step": 5})
    assert frame["final"].tolist() == [True]


def test_resumed_logs_merge_with_later_rows_winning(tmp_path):
    early = OfflineLog(
        tmp_path / "offline-run-20250101_000000-x" / "run-x.wandb",
        "x",
        config={"train.max_steps": 30},
        history=[row(10, **{"gen/acc_l1": 0.1}), row(20, **{"gen/acc_l1": 0.2})],
        start_time=100.0,
    )
    late = OfflineLog(
        tmp_path / "offline-run-20250101_010000-x" / "run-x.wandb",
        "x",
        config={"train.max_steps": 30},
        history=[row(20, **{"gen/acc_l1": 0.25}), row(30, **{"gen/acc_l1": 0.3})],
        start_time=200.0,
    )
    config, history, _ = merge_logs([late, early])
    frame = frame_from_wandb_run("x", config, history)
    assert frame["step"].tolist() == [10, 20, 30]
    assert frame["gen/acc_l1"].tolist() == [0.1, 0.25, 0.3]


def write_log(records: list[bytes]) -> bytes:
    """A .wandb log in the LevelDB framing wandb writes (header, 32 KiB blocks, chunk types)."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            room = BLOCK - len(out) % BLOCK
            if room < 7:
                out += bytes(room)
                continue
            chunk, data = data[: room - 7], data[room - 7 :]
            last = not data
            kind = 1 if first and last else 2 if first else 4 if last else 3
            crc = zlib.crc32(chunk, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(chunk), kind) + chunk
            first = False
            if last:
                break
    return bytes(out)


def test_log_records_reassemble_records_across_blocks():
    records = [b"a" * 10, bytes(range(256)) * 300, b"", b"b" * (BLOCK - 30), b"c" * 5]
    data = write_log(records)
    assert len(data) > 3 * BLOCK
    assert list(log_records(data)) == records
    # Cut inside the last record: the complete ones are still read.
    assert list(log_records(data[:-2])) == records[:-1]
    with pytest.raises(CorruptLog, match="not a W&B"):
        list(log_records(b"PK\x03\x04 a zip file"))


# ---------------------------------------------------------------------------------------------
# The API path, with a stand-in for wandb.Api (the conversion is the real one)


class FakeRun:
    def __init__(self, run_id, config, history, summary=None):
        self.id = run_id
        self.config = config
        self._history = history
        self.summary = summary or {}

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    def __init__(self, runs=(), error=None):
        self._runs = list(runs)
        self.error = error
        self.calls = []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        if self.error:
            raise self.error
        return iter(self._runs)


@pytest.mark.slow
def test_api_runs_give_the_same_table_as_the_run_store(sweep):
    root, ids = sweep
    runs = []
    for run_id in ids.values():
        logs = [read_offline_log(p) for p in find_offline_logs(root / "runs" / run_id)]
        # The server's shape: each config value wrapped as {"value": ..., "desc": ...}.
        config, history, summary = merge_logs(logs)
        wrapped = {k: {"value": v, "desc": None} for k, v in config.items()}
        runs.append(FakeRun(run_id, wrapped, history, summary))
    api = FakeApi(runs)
    result = collect_wandb_api("me/rhmscale", group="wbtest", api=api)
    assert api.calls == [("me/rhmscale", {"group": "wbtest"})]
    assert_same_table(result.frame, collect(root).frame)
    assert result.skipped == {"unfinished": [ids["stopped"]]}


def test_api_errors_say_what_to_do(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(UserError, match="wandb login.*WANDB_API_KEY"):
        collect_wandb_api("me/rhmscale")
    missing = FakeApi(error=ValueError("Could not find project rhmscale"))
    with pytest.raises(UserError, match="not found"):
        collect_wandb_api("me/rhmscale", api=missing)
    denied = FakeApi(error=RuntimeError("401 Client Error: Unauthorized"))
    with pytest.raises(UserError, match="wandb login"):
        collect_wandb_api("me/rhmscale", api=denied)
    with pytest.raises(UserError, match="entity/project"):
        collect_wandb_api("rhmscale", api=FakeApi())
    with pytest.raises(UserError, match="no W&B runs"):
        collect_wandb_api("me/rhmscale", group="nothing", api=FakeApi())


def test_a_run_whose_history_cannot_be_read_is_corrupt_not_fatal():
    class Broken(FakeRun):
        def scan_history(self):
            raise ConnectionError("reset by peer")

    good = FakeRun("good", {"train.max_steps": 5}, [row(5, **{"gen/acc_l1": 1.0})])
    result = collect_wandb_api("me/p", api=FakeApi([good, Broken("bad", {}, [])]))
    assert result.frame["run_id"].tolist() == ["good"]
    assert result.skipped == {"corrupt": ["bad"]}
