"""The quick preset's real runs (shrunk to 6 short ones) -> collect -> fit -> export -> report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rhmscale.results.collect import collect
from rhmscale.results.collect_wandb import collect_wandb_offline
from rhmscale.results.fit import FitOptions, fit
from rhmscale.sweeps.dispatch import submit, wait
from rhmscale.sweeps.spec import load_spec, parse_spec

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))


@pytest.mark.slow
def test_quick_sweep_runs_to_tables_and_report(tmp_path):
    tree = load_spec("quick").model_dump(mode="json")
    tree["base"]["train"].update(max_steps=150, checkpoint_every=150)
    tree["grid"] = {"grammar.v": [4, 8], "data.P": [8, 32, 128], "seed": [0]}
    spec = parse_spec(tree)
    assert not wait(submit(spec, tmp_path))
    sweep = tmp_path / "quick"

    collection = collect(sweep)
    assert collection.frame["run_id"].nunique() == 6 and not collection.skipped
    from_wandb = collect_wandb_offline(sweep)
    assert sorted(from_wandb.frame["run_id"].unique()) == sorted(
        collection.frame["run_id"].unique()
    )

    out = subprocess.run(
        [RHMSCALE, "collect", "--from-wandb-offline", str(sweep), "-o", str(tmp_path / "w.csv")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "6 runs" in out.stdout and (tmp_path / "w.csv").stat().st_size > 0
    both = subprocess.run(
        [RHMSCALE, "collect", str(sweep), "--from-wandb-offline", str(sweep)],
        capture_output=True,
        text=True,
    )
    assert both.returncode == 2 and "give one of" in both.stderr

    result = fit(collection.frame, FitOptions(n_boot=200))
    assert len(result.crossings) == 6  # 2 cells x 3 levels, measured or censored
    assert set(result.crossings["censored"]) <= {"", "below", "above"}
    assert result.exponents.empty == ("fit_error" in result.stats)

    out = subprocess.run(
        [RHMSCALE, "export", str(sweep), "--table", "p_star", "-f", "json", "--n-boot", "200"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["crossings"]) == 6
    out = subprocess.run(
        [RHMSCALE, "report", str(sweep), "-o", str(tmp_path / "report"), "--n-boot", "200"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| done | 6 |" in text and "name: quick" in text
