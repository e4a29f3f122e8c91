"""The command line as a user runs it: exit codes, messages, nothing written on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RHMSCALE = [str(Path(sys.executable).with_name("rhmscale"))]


def cli(*args, cwd=None):
    return subprocess.run([*RHMSCALE, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "grammar.vv=3"], "did you mean 'grammar.v'"),
        (["-o", "grammar.v=4", "-o", "grammar.m=5"], "m=5 is larger than v**(s-1)=4"),
        (["-o", "grammar.v=2", "-o", "grammar.m=1", "-o", "grammar.L=2"], "distinct sequences"),
        (["-o", "data.P=-3"], "data.P"),
        (["-o", "model.arch=lstm"], "model.arch"),
        (["--config", "missing.yaml"], "cannot read missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, message):
    result = cli("run", "--root", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_gpu_asked_for_where_there_is_none_exits_2_and_writes_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny = ["-o", "grammar.v=8", "-o", "grammar.m=2", "-o", "grammar.L=2", "-o", "data.P=16"]
    tiny += ["-o", "data.n_test=8", "-o", "train.device=cuda"]
    result = cli("run", "--root", str(tmp_path / "runs"), *tiny, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no GPU is visible here; use train.device=auto" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_unreadable_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grammar: {v: [1, 2\n")
    result = cli("run", "--config", str(bad), "--root", str(tmp_path / "runs"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_help_and_grammar_show_do_not_import_torch():
    code = (
        "import sys; from rhmscale.cli import app; "
        "sys.argv=['rhmscale', 'grammar', 'show', '-o', 'grammar.v=8', '-o', 'grammar.m=2', "
        "'-o', 'grammar.L=2', '--samples', '2'];\n"
        "try: app()\nexcept SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout
    assert "level 2 -> level 1" in out.stdout and "(depth 2)" in out.stdout


def test_config_show_prints_the_run_id():
    result = cli("config", "show", "-o", "grammar.v=32")
    assert result.returncode == 0
    assert result.stdout.startswith("# run_id: ") and "v: 32" in result.stdout


@pytest.mark.slow
def test_run_command_end_to_end(tmp_path):
    args = [
        "-o",
        "grammar.v=4",
        "-o",
        "grammar.m=2",
        "-o",
        "grammar.L=2",
        "-o",
        "data.P=16",
        "-o",
        "data.n_test=8",
        "-o",
        "model.width=16",
        "-o",
        "model.depth=1",
        "-o",
        "train.max_steps=20",
        "-o",
        "eval.n_samples=32",
        "-o",
        "train.device=cpu",
    ]
    result = cli("run", "--root", str(tmp_path), "--wandb", "disabled", "--no-progress", *args)
    assert result.returncode == 0, result.stderr
    assert "gen/acc_l{k}" in result.stdout and "gen/memorized_frac" in result.stdout
    (result_json,) = tmp_path.glob("adhoc/runs/*/result.json")
    assert json.loads(result_json.read_text())["final"]["step"] == 20
    again = cli("run", "--root", str(tmp_path), "--wandb", "disabled", "--no-progress", *args)
    assert again.returncode == 0 and "at step 20" in again.stdout  # skipped, same table
    assert "already done" not in result.stdout
    said = " ".join(again.stdout.split())
    assert f"already done: {result_json.parent} (result.json); nothing to do" in said


def test_help_and_sweep_status_do_not_import_torch(tmp_path):
    from rhmscale.sweeps.dispatch import prepare, submit_prepared
    from rhmscale.sweeps.spec import parse_spec

    spec = parse_spec({"name": "s", "grid": {"seed": [0, 1]}, "tracking": {"wandb": "disabled"}})
    submit_prepared(prepare(spec, tmp_path, states=set()))  # writes sweep.yaml only
    for argv in (["--help"], ["sweep", "status", str(tmp_path / "s")]):
        code = (
            f"import sys; from rhmscale.cli import app; sys.argv = ['rhmscale', *{argv!r}]\n"
            "try: app()\nexcept SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith("NO-TORCH"), (argv, out.stdout)
    assert "pending" in out.stdout  # the status table was printed
