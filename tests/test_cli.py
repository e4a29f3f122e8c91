"""The command line as a user runs it: exit codes, messages, nothing written on bad input."""

import json
import re
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
        (["grammar.vv=3"], "did you mean 'grammar.v'"),
        (["grammar.v=4", "grammar.m=5"], "m=5 is larger than v**(s-1)=4"),
        (["grammar.v=2", "grammar.m=1", "grammar.L=2"], "distinct sequences"),
        (["data.P=-3"], "data.P"),
        (["model.arch=lstm"], "model.arch"),
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
    tiny = ["grammar.v=8", "grammar.m=2", "grammar.L=2", "data.P=16"]
    tiny += ["data.n_test=8", "train.device=cuda"]
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
        "sys.argv=['rhmscale', 'grammar', 'show', 'grammar.v=8', 'grammar.m=2', "
        "'grammar.L=2', '--samples', '2'];\n"
        "try: app()\nexcept SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout
    assert "level 2 -> level 1" in out.stdout and "(depth 2)" in out.stdout


def test_config_show_prints_the_run_id():
    result = cli("config", "show", "grammar.v=32")
    assert result.returncode == 0
    assert result.stdout.startswith("# run_id: ") and "v: 32" in result.stdout


@pytest.mark.slow
def test_run_command_end_to_end(tmp_path):
    args = [
        "grammar.v=4",
        "grammar.m=2",
        "grammar.L=2",
        "data.P=16",
        "data.n_test=8",
        "model.width=16",
        "model.depth=1",
        "train.max_steps=20",
        "eval.n_samples=32",
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


def test_overrides_are_arguments_or_set_and_the_old_o_says_what_to_type(tmp_path):
    both = cli("config", "show", "grammar.v=32", "--set", "grammar.m=3")
    assert both.returncode == 0 and "v: 32" in both.stdout and "m: 3" in both.stdout
    old = cli("config", "show", "-o", "grammar.v=32")
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", old.stderr).split())  # out of click's box
    assert old.returncode == 2 and "-o is an output path in every command now" in said
    assert "give overrides as arguments (grammar.v=32) or with --set" in said
    run = cli("run", "--root", str(tmp_path / "runs"), "-o", "grammar.v=8")
    assert run.returncode == 2 and "--set" in run.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "name: t\nexector: {kind: local}\nbase: {}\ngrid: {seed: [0]}\n",
            "did you mean 'executor'",
        ),
        ("name: t\nexecutor: {knd: local}\nbase: {}\ngrid: {seed: [0]}\n", "did you mean 'kind'"),
    ],
)
def test_a_misspelt_spec_key_is_named_with_the_nearest_one(tmp_path, spec, message):
    (tmp_path / "s.yaml").write_text(spec)
    result = cli("sweep", "plan", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "runs"))
    assert result.returncode == 2 and message in result.stderr and "not a key here" in result.stderr
    assert "Extra inputs" not in result.stderr


def test_a_misspelt_preset_and_a_root_of_sweeps_get_suggestions(tmp_path):
    preset = cli("sweep", "plan", "quik", "--root", str(tmp_path / "runs"), cwd=tmp_path)
    assert preset.returncode == 2 and "did you mean 'quick'?" in preset.stderr
    for name in ("quick", "other"):
        (tmp_path / "root" / name / "runs").mkdir(parents=True)
    root = cli("fit", str(tmp_path / "root"))
    assert root.returncode == 2 and "it is a root of sweeps (other, quick)" in root.stderr
    assert f"e.g. {tmp_path / 'root' / 'other'}" in root.stderr


@pytest.mark.parametrize("read_first", [True, False])
def test_a_reader_that_stops_reading_ends_the_command_quietly(read_first):
    """`| head -1` (a line read, then the pipe closed) and a reader that closes before the
    command writes at all (the write itself fails): exit 0, nothing on stderr."""
    for args in (["config", "keys"], ["grammar", "show", "grammar.v=8", "grammar.m=2"]):
        process = subprocess.Popen(
            [*RHMSCALE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if read_first:
            process.stdout.readline()
        process.stdout.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()
        assert process.stderr.read() == b""
