"""Issue 20 (points 3 and 6): one message per mistake, one option name per meaning."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RHMSCALE = [str(Path(sys.executable).with_name("rhmscale"))]


def cli(*args, cwd=None, env=None):
    return subprocess.run(
        [*RHMSCALE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs sbatch on PATH")
@pytest.mark.parametrize("conf", ["missing", None])
def test_slurm_without_a_configuration_says_what_is_missing(tmp_path, conf):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    if conf:
        env["SLURM_CONF"] = str(tmp_path / "missing" / "slurm.conf")
    elif Path("/etc/slurm/slurm.conf").is_file():
        pytest.skip("this machine has /etc/slurm/slurm.conf")
    root = tmp_path / "runs"
    result = cli("sweep", "submit", "quick", "--root", str(root), "-e", "slurm", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no reachable SLURM"), result.stderr
    assert "SLURM_CONF" in lines[0] and "dev-cluster.sh env" in lines[0]
    assert not root.exists() or not any(root.rglob("config.yaml"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import numpy as np

    from tests.synthetic_sweep import synthetic_frame, write_run_dirs

    root = tmp_path_factory.mktemp("sweep")
    frame = synthetic_frame(np.random.default_rng(21), cells=[(8, 2), (16, 2), (8, 4)], L=4)
    write_run_dirs(frame, root)
    return root


def all_commands():
    import typer.main

    from rhmscale.cli import app

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), [])


def test_one_option_name_per_meaning():
    """An output file or folder is --output/-o everywhere (tune report's --out stays, hidden)."""
    for name, command in all_commands():
        for param in command.params:
            if "--out" in param.opts:
                assert param.hidden, f"{name}: --out is shown; the name is --output"
            if "--output" in param.opts:
                assert "-o" in param.opts, f"{name}: --output without -o"
    report = dict(all_commands())["tune report"]
    assert any(p.opts == ["--output", "-o"] for p in report.params)


@pytest.mark.parametrize("command", [["report", "SWEEP"], ["run"], ["tune", "report", "SWEEP"]])
def test_a_bad_wandb_mode_is_blamed_on_the_option(tmp_path, sweep, command):
    args = [str(sweep) if a == "SWEEP" else a for a in command]
    result = cli(*args, "--wandb", "bogus", "--root" if args == ["run"] else "-o", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "'--wandb'" in result.stderr and "bogus" in result.stderr
    assert "tracking.wandb" not in result.stderr and "config" not in result.stderr


@pytest.mark.parametrize("levels", ["5", "2-5"])
def test_levels_beyond_the_grammar_say_no_such_level(sweep, levels):
    result = cli("fit", str(sweep), "--levels", levels, "--n-boot", "50")
    assert result.returncode == 2, result.stderr
    assert f"--levels {levels}: no such level" in result.stderr and "L = 4" in result.stderr
    assert "data.P" not in result.stderr


def test_status_runs_is_readable_at_80_columns(tmp_path):
    """Short metric headers (l1 .. l3, novel, memo) and a caption naming them, not novel_…."""
    from typer.testing import CliRunner

    from rhmscale.cli import app
    from rhmscale.store.atomic import atomic_write_json, atomic_write_text
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.grid import expand_points
    from rhmscale.sweeps.spec import parse_spec, spec_to_yaml

    base = {
        "grammar": {"v": 4, "m": 2, "L": 3},
        "data": {"P": 32, "n_test": 16},
        "model": {"width": 16},
        "tracking": {"wandb": "disabled"},
    }
    spec = parse_spec({"name": "t", "base": base, "grid": {"data.P": [8, 16], "seed": [0, 1]}})
    sweep = SweepDir(tmp_path / "t")
    sweep.path.mkdir(parents=True)
    atomic_write_text(sweep.spec_file, spec_to_yaml(spec))
    final = {"step": 1, "gen/novel_frac": 0.9, "gen/memorized_frac": 0.1}
    final |= {f"gen/novel_acc_l{k}": 0.5 for k in (1, 2, 3)}
    for point in expand_points(spec).points:
        store = sweep.run_dir(point.run_id)
        store.write_metrics([{"step": 1}])
        atomic_write_json(store.result, {"run_id": point.run_id, "final": final})
    out = CliRunner().invoke(app, ["sweep", "status", str(sweep.path), "--runs"], terminal_width=80)
    assert out.exit_code == 0, out.output
    assert "…" not in out.output, out.output
    said = " ".join(out.output.split())
    assert "l1 .. l3: gen/novel_acc_l1 .. gen/novel_acc_l3 at the last evaluation" in said
    # Which evaluation, said where fit's best-evaluation numbers could be mistaken for these.
    assert "accuracies at their LAST evaluation (fit uses each run's best by default" in said
    assert "0.50" in out.output and "memo" in out.output


@pytest.mark.slow
def test_export_csv_of_both_tables_says_which_files_it_wrote(sweep, tmp_path):
    out = cli("export", str(sweep), "-f", "csv", "-o", "table.csv", "--n-boot", "50", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table-exponents.csv", "table-p_star.csv"]
    said = " ".join(out.stdout.split())
    assert "wrote table-exponents.csv and table-p_star.csv" in said and "not table.csv" in said
    one = cli("export", str(sweep), "-f", "csv", "-o", "p.csv", "--table", "p_star", cwd=tmp_path)
    assert one.returncode == 0 and (tmp_path / "p.csv").exists(), one.stderr
    help_text = " ".join(cli("export", "--help").stdout.replace("│", " ").split())
    assert "table-exponents.csv and table-p_star.csv" in help_text


def test_collect_without_output_shows_the_head_and_how_to_write_it(sweep, tmp_path):
    out = cli("collect", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "first 5 of 72 rows" in out.stdout and "run_id" in out.stdout
    assert "gen/novel_acc_l1" in out.stdout and "-o runs.parquet" in out.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_diverged_run_is_told_in_a_sentence_not_a_repr(tmp_path):
    tiny = ["grammar.L=2", "grammar.v=4", "grammar.m=2", "data.P=8", "data.n_test=4"]
    tiny += ["train.max_steps=10", "model.arch=tree_unet", "model.width=16", "eval.n_samples=16"]
    tiny += ["train.device=cpu", "train.lr=1e30", "train.warmup_steps=0"]
    sets = [arg for item in tiny for arg in ("--set", item)]
    out = cli("run", "--root", str(tmp_path), "--wandb", "disabled", "--no-progress", *sets)
    assert out.returncode == 1, out.stderr
    said = " ".join(out.stdout.split())
    assert "run diverged: " in said and "not finite at step" in said, said
    assert "Diverged(" not in said


def test_make_test_says_the_dev_cluster_runs_and_bench_writes_an_untracked_file():
    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(
        ["make", "-n", "test", "bench-grammar"], capture_output=True, text=True, cwd=root
    )
    assert dry.returncode == 0, dry.stderr
    assert "slurm/dev-cluster.sh stop" in dry.stdout
    (bench,) = [line for line in dry.stdout.splitlines() if "bench_grammar.py" in line]
    assert bench.endswith("--out bench/results/grammar_cpu.new.json")
    assert "mv bench/results/grammar_cpu.new.json bench/results/grammar_cpu.json" in dry.stdout


def test_config_keys_lists_role_default_and_description_from_the_models():
    from rhmscale.config import ROLES, RunConfig, config_flat, key_roles

    listed = json.loads(cli("config", "keys", "--json").stdout)
    roles = key_roles()
    assert [row["key"] for row in listed] == list(roles)
    defaults = config_flat(RunConfig())
    for row in listed:
        assert row["role"] == roles[row["key"]].role and row["role"] in ROLES
        assert row["per_member"] == roles[row["key"]].per_member
        assert row["default"] == json.loads(json.dumps(defaults[row["key"]], default=str))
    by_key = {row["key"]: row for row in listed}
    assert by_key["data.P"]["description"].startswith("distinct training sequences")
    assert by_key["model.arch"]["description"].startswith("one of: ")
    assert [row["key"] for row in listed if not row["description"]] == []  # every key says what
    text = cli("config", "keys").stdout.splitlines()
    assert text[0].split() == ["key", "role", "default", "description"]
    (line,) = [line for line in text if line.startswith("data.P ")]
    assert line.split()[:3] == ["data.P", "size*", "4096"] and "distinct training" in line


def test_retry_help_names_every_state_it_resubmits():
    from rhmscale.sweeps.dispatch import RETRYABLE

    help_text = " ".join(cli("sweep", "retry", "--help").stdout.replace("│", " ").split())
    assert all(state in help_text for state in RETRYABLE), help_text
    assert "diverged runs are left" in help_text
