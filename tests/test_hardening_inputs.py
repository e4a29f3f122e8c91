"""Nothing lost, nothing stuck, round 3 (issue 31, rules 2 and 4): every number a user types is
bounded where it is typed, and no input, however wrong, ends in a traceback: each is refused
with exit code 2, naming the file, key, option or line and what to change, before anything is
written.

Commands run in this process through `rhmscale.cli.main` (the error boundary itself), in a
fresh working folder: what a refused command wrote there would show.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml

from rhmscale.cli import app, main
from rhmscale.config_io import build_grammar_config
from rhmscale.errors import UserError
from rhmscale.store.folders import SweepDir
from tests.synthetic_sweep import synthetic_frame
from tests.test_refine import coarse, make_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "grammar": {"v": 4, "m": 2, "L": 2},
    "data": {"P": 8, "n_test": 4},
    "model": {"width": 16},
    "train": {"max_steps": 5, "device": "cpu"},
    "eval": {"n_samples": 16, "n_evals": 1},
}
STUDY = {
    "name": "tiny",
    "base": TINY,
    "search": {"train.lr": {"float": [1.0e-4, 3.0e-3], "log": True}},
    "objective": {"metric": "gen/novel_acc_l2", "direction": "maximize"},
    "budget": {"trials": 1},
    "workers": 1,
    "tracking": {"wandb": "disabled"},
}


@pytest.fixture
def rhmscale(monkeypatch, capsys, tmp_path):
    """Run `rhmscale ARGS` in a fresh working folder: (exit code, stdout, stderr)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "250")  # typer's error box: one line, not wrapped

    def call(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["rhmscale", *map(str, args)])
        saved = sys.stdout
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.stdout = saved  # main() wraps it
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def refused(result: tuple[int, str, str], *words: str) -> str:
    """The refusal's stderr, after checking it: exit 2, no traceback, every word named."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


def written(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "work").rglob("*"))


# --- rule 2: every number typed on the command line is bounded, in one place ------------------


def numeric_options() -> list[tuple[list[str], str]]:
    """(command words, flag) of every option of every command whose value is a number."""
    found = []

    def walk(command, words):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])
        for param in getattr(command, "params", []):
            kinds = typing.get_args(param.type_descriptor.annotation) or (
                param.type_descriptor.annotation,
            )
            if param.param_type_name == "option" and {int, float} & set(kinds):
                found.append((words, max(param.opts, key=len)))

    walk(typer.main.get_command(app), [])
    return found


NUMERIC = numeric_options()


@pytest.mark.parametrize(("words", "flag"), NUMERIC, ids=[f"{' '.join(w)} {f}" for w, f in NUMERIC])
def test_every_numeric_option_states_its_bounds_and_refuses_a_value_beyond(
    words, flag, rhmscale, tmp_path
):
    from rhmscale.bounds import OPTIONS

    assert len(NUMERIC) > 40  # the walk finds them: the executor's and the fit's on every command
    bound = OPTIONS[flag]  # one place: bounds.OPTIONS
    code, out, _ = rhmscale(*words, "--help")
    assert code == 0 and bound.text in " ".join(out.replace("│", " ").split()), out
    assert f"| `{flag}` | {bound.text} |" in (ROOT / "docs" / "reference.md").read_text()
    for beyond in (bound.hi * 10 + 1, bound.lo - 1):
        refused(rhmscale(*words, flag, beyond), flag, f"it must be {bound.text}")
    assert written(tmp_path) == []


def test_a_number_of_thousands_of_digits_is_refused_not_a_traceback(tmp_path, rhmscale):
    huge = "9" * 5000  # Python reads no integer of more than 4,300 digits
    refused(rhmscale("config", "show", f"data.P={huge}"), "override 'data.P=999", "digits")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\ngrid: {{data.P: {{logspace: [16, {huge}, 3]}}}}\n")
    refused(rhmscale("sweep", "plan", spec, "--root", "runs"), f"{spec} holds a number of")
    assert written(tmp_path) == []


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A table as `rhmscale collect -o` writes it: a synthetic sweep of six cells."""
    path = tmp_path_factory.mktemp("table") / "runs.csv"
    frame = synthetic_frame(np.random.default_rng(0), seeds=1, n_sizes=5)
    frame.assign(**{"model.time_cond": False}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("command", ["fit", "report"])
def test_n_boot_beyond_its_bound_is_refused_not_a_numpy_traceback(command, table, rhmscale):
    refused(rhmscale(command, table, "--n-boot", 2**31), "--n-boot", "from 50 to 100,000")
    refused(rhmscale(command, table, "--n-boot", 10**8), "--n-boot")  # was 60 s at 12 GB


def test_refine_seeds_beyond_its_bound_are_refused(tmp_path, rhmscale):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(8), cells=[(8, 3)]))
    recorded = SweepDir(folder).spec_file.read_text()
    args = ("sweep", "refine", folder, "--seeds", 100_000, "--max-runs", 10, "--submit")
    refused(rhmscale(*args), "--seeds", "from 1 to 100")
    assert SweepDir(folder).spec_file.read_text() == recorded


def test_the_refine_budget_bounds_the_work_before_seeds_are_expanded(tmp_path, monkeypatch):
    from rhmscale.results.collect import collect
    from rhmscale.results.fit import FitOptions
    from rhmscale.results.refinement import refinement
    from rhmscale.sweeps import refine
    from rhmscale.sweeps.grid import expand_points
    from rhmscale.sweeps.status import load_sweep_spec

    folder = make_sweep(tmp_path, coarse(np.random.default_rng(8), cells=[(8, 3)]))
    spec = load_sweep_spec(SweepDir(folder))
    held = len(expand_points(spec).points)
    found = refinement(collect(folder).frame, FitOptions(n_boot=100), 1.25, seeds=2)
    proposals = found.proposals.to_dict("records")
    many = {**proposals[0], "seeds": list(range(1000, 101_000))}  # 100,000 seeds
    expanded = []
    block_for = refine.block_for

    def counted(template, size, seeds):
        expanded.append(len(seeds))
        if len(seeds) > 10:
            raise AssertionError(f"{len(seeds)} seeds expanded for a budget of 10 runs")
        return block_for(template, size, seeds)

    monkeypatch.setattr(refine, "block_for", counted)
    growth = refine.grow(spec, [many, *proposals[1:]], max_runs=held + 10)
    assert (many, f"over the budget of {held + 10} runs") in growth.left
    assert growth.n_added <= 10 and max(expanded, default=0) <= 10


# --- rule 2: the grammar's size as a whole --------------------------------------------------


def test_a_grammar_too_large_to_print_is_shown_with_its_power_of_ten(rhmscale):
    args = ("grammar.v=1024", "grammar.m=1024", "grammar.L=12", "--samples", 1, "--max-rules", 1)
    code, out, err = rhmscale("grammar", "show", *args)
    assert code == 0, err
    assert "sequences of length 4096, 1.54 x 10^12330 distinct" in " ".join(out.split())


def test_a_grammar_whose_rules_cannot_be_held_is_refused_naming_its_keys():
    with pytest.raises(UserError, match=r"L x v x m x s = 1 x 1,024 x 1,024 x 40") as error:
        build_grammar_config(
            {}, ["grammar.v=1024", "grammar.m=1024", "grammar.L=1", "grammar.s=40"]
        )
    assert "lower grammar.v, grammar.m or grammar.L" in str(error.value)


# --- rule 4: no traceback for any input -------------------------------------------------------


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("formula", ["1/0", "log(0)", "sqrt(-1)", "9^9^9^9"])
@pytest.mark.parametrize("formula_is", ["lo", "hi"])
def test_a_logspace_bound_that_is_no_size_is_refused(formula, formula_is, tmp_path, rhmscale):
    # "1e3": YAML 1.1 reads it as text; beside a formula it took another path than the formula.
    bounds = [formula, "1e3"] if formula_is == "lo" else ["1e1", formula]
    spec = {"name": "t", "base": TINY, "grid": {"data.P": {"logspace": [*bounds, 3]}}}
    path = write_yaml(tmp_path / "spec.yaml", spec)
    refused(rhmscale("sweep", "plan", path, "--root", "runs"), "'data.P'", "logspace needs")
    assert written(tmp_path) == []


@pytest.mark.parametrize("n", [".inf", ".nan"])
def test_a_logspace_count_that_is_no_number_is_refused(n, tmp_path, rhmscale):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\ngrid: {{data.P: {{logspace: [16, 64, {n}]}}}}\n")
    refused(rhmscale("sweep", "plan", spec, "--root", "runs"), "'data.P'", "logspace needs")
    assert written(tmp_path) == []


@pytest.mark.parametrize("command", ["sweep plan", "tune submit", "config show --config"])
def test_a_file_that_is_not_utf8_is_refused_naming_its_line(command, tmp_path, rhmscale):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: t\nbase: {grammar: {v: 8}}\n# caf\xe9 in Latin-1\n")
    refused(
        rhmscale(*command.split(), path),
        f"{path} is not UTF-8 text (line 3,",
        "save the file as UTF-8",
    )
    assert written(tmp_path) == []


@pytest.mark.parametrize(
    ("search", "words"),
    [
        ({"int": [1, 1.0e18]}, ["within ±2**53"]),  # was an IndexError
        ({"int": [1, 10**20]}, ["within ±2**53"]),  # was an OverflowError
        ({"int": [1, 5], "step": 0.5}, ["step 0.5 must be a whole number"]),  # range step 0
    ],
)
def test_an_int_search_range_is_checked_not_a_traceback(search, words, tmp_path, rhmscale):
    study = STUDY | {"search": {"train.warmup_steps": search}}
    path = write_yaml(tmp_path / "study.yaml", study)
    refused(rhmscale("tune", "submit", path, "--root", "runs"), "train.warmup_steps", *words)
    assert written(tmp_path) == []


@pytest.mark.parametrize("seed", [2**70, -1])
def test_a_sampler_seed_optuna_refuses_is_refused_before_anything_is_written(
    seed, tmp_path, rhmscale
):
    path = write_yaml(tmp_path / "study.yaml", STUDY | {"sampler": {"kind": "tpe", "seed": seed}})
    refused(
        rhmscale("tune", "submit", path, "--root", "runs", "--executor", "debug"), "sampler.seed"
    )
    assert written(tmp_path) == []  # was: study.yaml and journal.log, then a ValueError


def test_a_boolean_where_a_number_is_asked_and_a_number_where_a_boolean_is(tmp_path, rhmscale):
    spec = {"name": "t", "base": {**TINY, "data": {"P": True, "n_test": 4}}, "grid": {"seed": [0]}}
    path = write_yaml(tmp_path / "spec.yaml", spec)
    refused(rhmscale("sweep", "plan", path, "--root", "runs"), "data.P", "give a number")
    refused(rhmscale("config", "show", "model.time_cond=1"), "model.time_cond", "true or false")
    refused(rhmscale("config", "show", "--set", "data.P=true"), "data.P", "give a number")
    executor = {**spec, "base": TINY, "executor": {"kind": "debug", "pack": 1}}
    refused(rhmscale("sweep", "plan", write_yaml(path, executor)), "pack", "true or false")
    assert written(tmp_path) == []


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ("text in an accuracy", ["line 6", "column 'gen/acc_l2' holds 'high', not a number"]),
        ("text in grammar.v", ["line 9", "column 'grammar.v' holds 'eight', not a number"]),
        ("a number in model.time_cond", ["line 4", "'model.time_cond' holds '7'"]),
        ("no data.P column", ["no column data.P"]),
    ],
)
@pytest.mark.parametrize("command", ["fit", "plot"])
def test_a_collect_table_edited_by_hand_is_refused_naming_line_and_column(
    edit, words, command, table, tmp_path, rhmscale
):
    import pandas as pd

    frame = pd.read_csv(table)
    if edit == "no data.P column":
        frame = frame.drop(columns=["data.P"])
    else:
        column, row, value = {
            "text in an accuracy": ("gen/acc_l2", 4, "high"),
            "text in grammar.v": ("grammar.v", 7, "eight"),
            "a number in model.time_cond": ("model.time_cond", 2, 7),
        }[edit]
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    edited = tmp_path / "edited.csv"
    frame.to_csv(edited, index=False)
    output = ["-o", "figures"] if command == "plot" else []
    refused(rhmscale(command, edited, "--n-boot", 50, *output), str(edited), *words)
    assert written(tmp_path) == []


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study of one finished trial."""
    from rhmscale.tuning.dispatch import submit
    from rhmscale.tuning.spec import parse_study_spec

    root = tmp_path_factory.mktemp("study")
    spec = parse_study_spec(STUDY | {"executor": {"kind": "debug"}})
    for job in submit(spec, root).jobs:
        job.result()
    return root / spec.name


@pytest.mark.parametrize("target", ["/proc/out", "/proc/self/out"])
def test_an_output_path_that_cannot_be_written_is_one_line_naming_it(
    target, table, study, tmp_path, rhmscale
):
    folder = make_sweep(tmp_path, coarse(np.random.default_rng(8), cells=[(8, 3)]))
    recorded = SweepDir(folder).spec_file.read_text()
    commands = [
        ("collect", folder, "-o", f"{target}.csv"),
        ("report", table, "--n-boot", 50, "-o", target),
        ("tune", "report", study, "-o", target, "--wandb", "disabled"),
        ("sweep", "refine", folder, "--n-boot", 100, "-o", f"{target}.yaml"),
    ]
    for args in commands:
        output = str(args[-1] if args[0] != "tune" else target)
        refused(rhmscale(*args), f"cannot write {output}:", "takes no new files")
    assert SweepDir(folder).spec_file.read_text() == recorded
    assert written(tmp_path) == []


# --- the boundary: an input mistake is a UserError at its source, anything else a bug ----------


def test_an_unexpected_exception_keeps_its_traceback_and_is_named_a_bug(monkeypatch, rhmscale):
    def broken():
        raise KeyError("a bug")

    monkeypatch.setattr("rhmscale.config_io.key_listing", broken)
    code, _, err = rhmscale("config", "keys")
    assert code == 1 and "Traceback (most recent call last)" in err and "in broken" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: unexpected KeyError at ") and __file__ in last, last
    assert "a bug in rhmscale" in last
