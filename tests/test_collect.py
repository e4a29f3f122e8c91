"""collect: finished runs become rows; unfinished, failed and corrupt runs are named, not fatal."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rhmscale.config_io import build_config
from rhmscale.errors import UserError
from rhmscale.results.collect import collect
from rhmscale.store.atomic import atomic_write_json
from rhmscale.store.folders import RunDir


def fake_run(root: Path, P: int, *, state: str = "done") -> str:
    """A run directory as execute() leaves it, with made-up metrics (no training)."""
    config = build_config({}, [f"data.P={P}"])
    store = RunDir(root / "runs" / config.run_id())
    atomic_write_json(
        store.config, {"run_id": config.run_id(), "config": config.model_dump(mode="json")}
    )
    rows = [{"step": s, "gen/acc_l1": s / 100, "val/loss": 1.0} for s in (10, 100)]
    store.write_metrics(rows)
    if state == "done":
        atomic_write_json(store.result, {"final": rows[-1]})
    elif state == "failed":
        atomic_write_json(store.failed, {"error": "RuntimeError"})
    elif state == "corrupt":
        store.metrics.write_bytes(b"not parquet")
        atomic_write_json(store.result, {"final": rows[-1]})
    return config.run_id()


def test_collect_rows_and_skipped_runs(tmp_path):
    done = [fake_run(tmp_path, P) for P in (64, 128)]
    failed = fake_run(tmp_path, 256, state="failed")
    corrupt = fake_run(tmp_path, 512, state="corrupt")
    pending = fake_run(tmp_path, 1024, state="pending")
    result = collect(tmp_path)
    frame = result.frame
    assert sorted(frame["run_id"].unique()) == sorted(done)
    assert len(frame) == 4 and frame["final"].sum() == 2
    assert sorted(frame["data.P"].unique()) == [64, 128]
    assert {"grammar.v", "seed", "gen/acc_l1", "step"} <= set(frame.columns)
    assert result.skipped == {"failed": [failed], "corrupt": [corrupt], "pending": [pending]}
    assert "2 runs, 4 evaluation rows" in result.summary()


def test_collect_errors_on_a_folder_without_runs(tmp_path):
    with pytest.raises(UserError, match="no runs"):
        collect(tmp_path)


def test_collect_cli_writes_parquet_and_csv(tmp_path):
    fake_run(tmp_path, 64)
    rhmscale = str(Path(sys.executable).with_name("rhmscale"))
    for name in ("out.parquet", "out.csv"):
        out = subprocess.run(
            [rhmscale, "collect", str(tmp_path), "-o", str(tmp_path / name)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 2
    assert len(pd.read_csv(tmp_path / "out.csv")) == 2
    bad = subprocess.run(
        [rhmscale, "collect", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a folder" in bad.stderr


def test_atomic_writes_follow_the_umask(tmp_path):
    """Results are shared on clusters: files get the umask's permissions, not mkstemp's 0600."""
    import os
    import stat

    from rhmscale.store import atomic as store

    path = tmp_path / "shared.json"
    atomic_write_json(path, {"a": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~store._UMASK
    assert not list(tmp_path.glob(".*.tmp"))
