"""rhmscale fit / export / plot / report on run directories, and their bad-input errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rhmscale.results.collect_wandb import find_offline_logs, read_offline_log
from tests.synthetic_sweep import synthetic_frame, write_run_dirs

RHMSCALE = str(Path(sys.executable).with_name("rhmscale"))


def rhmscale(*args, cwd=None, env_columns=None):
    env = {**os.environ, "COLUMNS": str(env_columns)} if env_columns else None
    return subprocess.run(
        [RHMSCALE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    frame = synthetic_frame(np.random.default_rng(21), cells=[(8, 2), (16, 2), (8, 4)], L=4)
    write_run_dirs(frame, root)
    return root


def test_fit_prints_both_tables(sweep):
    out = rhmscale("fit", sweep, "--n-boot", 200)
    assert out.returncode == 0, out.stderr
    assert "P*_k" in out.stdout and "exponents of log P*_k" in out.stdout
    assert "log v" in out.stdout and "(k+1) log m" in out.stdout
    assert "72 runs" in out.stderr  # what was collected: 3 cells x 8 sizes x 3 seeds


@pytest.mark.slow
def test_several_folders_are_fitted_together_a_shared_run_once(sweep, tmp_path):
    """A sweep extended by a second one: split the 72 runs over two folders that share some;
    fitted together they give the one folder's table."""
    import shutil

    runs = sorted((sweep / "runs").iterdir())
    for name, part in (("a", runs[:48]), ("b", runs[30:])):  # 18 runs in both
        for run in part:
            shutil.copytree(run, tmp_path / name / "runs" / run.name)
    (tmp_path / "b" / "runs" / runs[40].name / "result.json").unlink()  # unfinished in b only
    whole = rhmscale("export", sweep, "--format", "json", "--n-boot", 100)
    split = rhmscale("export", tmp_path / "a", tmp_path / "b", "--format", "json", "--n-boot", 100)
    assert split.returncode == 0, split.stderr
    assert "72 runs" in split.stderr and "unfinished" not in split.stderr
    assert split.stdout == whole.stdout
    report = rhmscale(
        "report", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "r", "--n-boot", 100
    )
    assert report.returncode == 0, report.stderr
    assert "| done | 72 |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.slow
def test_a_collected_table_fits_as_its_run_folders(sweep, tmp_path, suffix):
    """A table from `collect -o` (runs shared without their folders) stands in for them, and
    joins folders without counting a run twice."""
    table = tmp_path / f"runs{suffix}"
    assert rhmscale("collect", sweep, "-o", table).returncode == 0
    whole = rhmscale("export", sweep, "--format", "json", "--n-boot", 100)
    from_table = rhmscale("export", table, "--format", "json", "--n-boot", 100)
    assert from_table.returncode == 0, from_table.stderr
    assert from_table.stdout == whole.stdout
    both = rhmscale("export", table, sweep, "--format", "json", "--n-boot", 100)
    assert both.stdout == whole.stdout and "72 runs" in both.stderr
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    wrong = rhmscale("fit", tmp_path / "other.csv")
    assert wrong.returncode == 2 and "not a table of `rhmscale collect -o`" in wrong.stderr


@pytest.mark.slow
def test_export_writes_each_format(sweep, tmp_path):
    for fmt in ("md", "tex", "json"):
        target = tmp_path / f"table.{fmt}"
        out = rhmscale("export", sweep, "--format", fmt, "-o", target, "--n-boot", 100)
        assert out.returncode == 0, out.stderr
        assert target.stat().st_size > 100
    out = rhmscale("export", sweep, "--format", "csv", "-o", tmp_path / "t.csv", "--n-boot", 100)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t-exponents.csv").exists() and (tmp_path / "t-p_star.csv").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "1.5"], "it must be above 0 and below 1"),
        (["--regressors", "log v, log q"], "unknown regressor 'log q'; choose from"),
        (["--metric", "gen/nope_l{k}"], "choose from: gen/acc_l{k}"),
        (["--at", "whenever"], "best, final or a training step"),
        (["--regressors", "log s"], "'log s' does not vary"),
        (["--where", "s=9"], "--where 's=9' selects no runs; s is 2"),
        (["--where", "q=1"], "--where: unknown key 'q'"),
    ],
)
def test_bad_input_exits_2_with_a_message(sweep, args, message):
    out = rhmscale("fit", sweep, *args, "--n-boot", 100)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_empty_folder_and_too_few_points(tmp_path):
    out = rhmscale("fit", tmp_path)
    assert out.returncode == 2 and "no runs in" in out.stderr
    frame = synthetic_frame(np.random.default_rng(22), cells=[(8, 2), (8, 4)], L=4)
    write_run_dirs(frame[frame["data.P"] > 1000], tmp_path)  # nearly everything censored
    out = rhmscale("fit", tmp_path, "--regressors", "(k+1) log m", "--n-boot", 100)
    assert out.returncode == 2
    assert "need at least 4" in out.stderr and "below the smallest P" in out.stderr
    assert "P*_k" in out.stdout  # the sample-complexity table is still shown


@pytest.mark.slow
def test_report_folder_and_wandb_summary_run(sweep, tmp_path):
    out = rhmscale(
        "report", sweep, "-o", tmp_path / "report", "--wandb", "offline", "--n-boot", 100
    )
    assert out.returncode == 0, out.stderr
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    for section in ("## Runs", "## Exponents", "## Sample complexity", "## Figures", "rhmscale"):
        assert section in text
    figures = sorted((report / "figures").glob("*.png"))
    assert figures and all(f"figures/{f.name}" in text for f in figures)
    assert {p.name for p in (report / "tables").iterdir()} >= {
        "exponents.csv", "p_star.csv", "fit.tex", "fit.json", "fit.md",
    }  # fmt: skip
    logs = find_offline_logs(report / "wandb")
    assert len(logs) == 1
    run = read_offline_log(logs[0])
    keys = set().union(*(row.keys() for row in run.history))
    assert "report/exponents" in keys and "report/p_star" in keys
    assert any(key.startswith("report/accuracy") for key in keys)
    assert run.summary["report/n_points"] > 0 and "report/exponent/log v" in run.summary
    # Two sweeps' report runs compare side by side: intervals and the code in the summary,
    # report.md itself among the run's files.
    lo, hi = run.summary["report/exponent/log v/lo"], run.summary["report/exponent/log v/hi"]
    assert lo <= run.summary["report/exponent/log v"] <= hi
    assert run.summary["report/code_version"].startswith("rhmscale ")
    (files,) = list((report / "wandb").glob("offline-run-*/files"))
    assert (files / "report.md").read_text() == text


def test_the_shared_fit_options_default_to_the_fits_own():
    from rhmscale.cli.options import FIT_OPTIONS
    from rhmscale.results.fit import FitOptions

    defaults = FitOptions()
    assert {name: default for name, (_, default) in FIT_OPTIONS.items()} == {
        name: getattr(defaults, name) for name in FIT_OPTIONS
    }


@pytest.mark.parametrize("command", ["fit", "export", "plot", "report"])
def test_every_command_that_fits_lists_the_fit_options(command):
    out = rhmscale(command, "--help", env_columns=200)
    assert out.returncode == 0, out.stderr
    for option, text in [
        ("--threshold", "Accuracy at which a level counts as learned"),
        ("--at", "Evaluation used per run"),
        ("--metric", "Per-level metric"),
        ("--regressors", "Comma-separated regressors"),
        ("--theory", "Predicted P_k"),
        ("--n-boot", "Bootstrap replicates"),
    ]:
        assert option in out.stdout and text in out.stdout, (option, out.stdout)
