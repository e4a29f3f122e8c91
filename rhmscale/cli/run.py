"""`rhmscale run`, `grammar show`, `config show` and `config keys`: one run and its config."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from rhmscale.cli.console import make_console
from rhmscale.cli.failures import writing
from rhmscale.cli.options import (
    ConfigOpt,
    OldOverrideOpt,
    OverrideArgs,
    OverrideOpt,
    RootOpt,
    bounded,
    check_wandb_mode,
)
from rhmscale.errors import UserError

grammar_app = typer.Typer(help="Inspect Random Hierarchy Model grammars.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)


def load_run_config(
    config: Path | None,
    overrides: list[str] | None,
    set_values: list[str] | None = None,
    grammar_only: bool = False,
) -> Any:
    """The RunConfig (or only its grammar) from a YAML file and dotted overrides (the
    arguments, then --set)."""
    from rhmscale.config_io import build_config, build_grammar_config, load_yaml

    base = load_yaml(config) if config else {}
    build = build_grammar_config if grammar_only else build_config
    every = [*(overrides or []), *(set_values or [])]
    return build(base, every, where=str(config) if config else "config")


def run(
    config: ConfigOpt = None,
    overrides: OverrideArgs = None,
    set_values: OverrideOpt = None,
    old_overrides: OldOverrideOpt = None,
    root: RootOpt = Path("runs"),
    sweep: Annotated[
        str, typer.Option(help="Sweep folder under the root (a sweep name, not a path).")
    ] = "adhoc",
    run_dir: Annotated[
        Path | None, typer.Option(help="Exact run folder (default <root>/<sweep>/runs/<run_id>).")
    ] = None,
    wandb: Annotated[
        str | None,
        typer.Option(
            help="W&B mode: auto, online, offline or disabled.", callback=check_wandb_mode
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    compile: Annotated[
        str | None,
        typer.Option(
            help="torch.compile the training step (train.compile): auto (compiled with CUDA "
            "graphs on a GPU), off, graph (eager with CUDA graphs: no compilation), or a mode "
            "(default, reduce-overhead, max-autotune)."
        ),
    ] = None,
) -> None:
    """Train and evaluate one run; resumes from its checkpoint, skips it if already done."""
    check_sweep_option(sweep)
    shorthands = {"tracking.wandb": wandb, "train.compile": compile}
    overrides = [*(overrides or []), *(f"{k}={v}" for k, v in shorthands.items() if v is not None)]
    cfg = load_run_config(config, overrides, set_values)
    if cfg.tracking.group is None:
        cfg.tracking.group = sweep
    from rhmscale.store.folders import RunDir, SweepDir

    target = run_dir or SweepDir(root / sweep).run_dir(cfg.run_id()).path
    console = make_console()
    console.print(f"run [bold]{cfg.run_id()}[/] -> {target}")
    already_done = RunDir(target).state() == "done"
    if not already_done:  # a done run is only shown; the machine's answers before its folder
        from rhmscale.training.fabric import check_device

        check_device(cfg)
        check_tracking(cfg)
    from rhmscale.cli.tables import run_table
    from rhmscale.training import execute

    with writing(target), warnings_on_stderr(cfg.run_id()):
        (outcome,) = execute([cfg], [target], progress=progress)
    if outcome.state == "failed":
        console.print(failure_sentence(target, outcome.error), style="red", markup=False)
        console.print(f"details: {target / 'failed.json'}, {target / 'run.log'}", markup=False)
        raise typer.Exit(1)
    if outcome.state != "done":
        console.print(f"run stopped at a checkpoint in {target}; run again to resume")
        raise typer.Exit(3)
    if already_done:
        console.print(
            f"already done: {target} (result.json); nothing to do. Its result follows; to train "
            "it again, delete that folder",
            markup=False,
            soft_wrap=True,
        )
    console.print(run_table(outcome.result))


def failure_sentence(target: Path, error: str | None) -> str:
    """Why the run failed, as a sentence from its failed.json ("run diverged: train/loss not
    finite at step 12: ..."), not the exception's repr."""
    from rhmscale.store.folders import RunDir, read_json_object

    record = read_json_object(RunDir(target).failed) or {}
    message = record.get("message")
    if not message:
        return f"run failed: {error}"
    if record.get("reason") == "diverged":
        return f"run diverged: {message}"
    return f"run failed: {record.get('error', 'error')}: {message}"


def check_sweep_option(sweep: str) -> None:
    """--sweep names one folder under --root, by the rule of sweep names (no '..', no '/')."""
    from rhmscale.sweeps.spec import check_sweep_name

    try:
        check_sweep_name(sweep)
    except ValueError as exc:
        raise UserError(f"--sweep: {exc}") from None


def check_tracking(cfg: Any) -> None:
    """Settle the W&B mode before anything trains: `online` without credentials or without a
    server that answers is a UserError (`auto` then says once why it logs offline)."""
    from rhmscale.store.wandb_mirror import choose_mode

    choose_mode(cfg.tracking.wandb, cfg.tracking.connect_timeout)  # asked once per process


@contextlib.contextmanager
def warnings_on_stderr(run_id: str) -> Iterator[None]:
    """The run's warnings (W&B offline and why, ...) on stderr too, one line each; its errors
    are summed up by the command."""
    logger = logging.getLogger(f"rhmscale.run.{run_id}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: record.levelno == logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@grammar_app.command("show")
def grammar_show(
    config: ConfigOpt = None,
    overrides: OverrideArgs = None,
    set_values: OverrideOpt = None,
    old_overrides: OldOverrideOpt = None,
    samples: Annotated[int, bounded("--samples", "Sampled sequences to show")] = 5,
    max_rules: Annotated[int, bounded("--max-rules", "Symbols listed per level")] = 8,
) -> None:
    """Print a grammar's rules and a few sampled sequences with their parse depth."""
    import numpy as np

    from rhmscale.bounds import shown
    from rhmscale.cli.tables import rule_tables
    from rhmscale.rhm.grammar import Grammar
    from rhmscale.rhm.metrics import format_sequence

    cfg = load_run_config(config, overrides, set_values, grammar_only=True)
    grammar = Grammar.from_config(cfg)
    console = make_console()
    console.print(
        f"RHM v={cfg.v} m={cfg.m} s={cfg.s} L={cfg.L} seed={cfg.seed}: sequences of length "
        f"{cfg.seq_len}, {shown(grammar.n_sequences)} distinct"
    )
    for table in rule_tables(grammar, cfg, max_rules):
        console.print(table)
    seqs = grammar.sample(samples, np.random.default_rng(cfg.seed))
    depth = grammar.parse(seqs).depth
    for seq, d in zip(seqs, depth, strict=True):
        console.print(f"{format_sequence(seq, cfg.s)}   (depth {d})")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    overrides: OverrideArgs = None,
    set_values: OverrideOpt = None,
    old_overrides: OldOverrideOpt = None,
) -> None:
    """Print the resolved RunConfig as YAML, with its run id."""
    import yaml

    cfg = load_run_config(config, overrides, set_values)
    typer.echo(f"# run_id: {cfg.run_id()}")
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@config_app.command("keys")
def config_keys(
    json_out: Annotated[bool, typer.Option("--json", help="A JSON list of the keys.")] = False,
) -> None:
    """Every valid dotted key: its role (science, seed, size: a run's result depends on it;
    bookkeeping: not part of the run id), default and description; '*' after the role: may
    differ between the members of a pack."""
    import json

    from rhmscale.config_io import key_listing

    rows = key_listing()
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    cells = [
        (r["key"], r["role"] + ("*" if r["per_member"] else ""), json.dumps(r["default"]))
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [("key", "role", "default"), *cells]) for i in range(3)]
    for cell, row in zip([("key", "role", "default"), *cells], [None, *rows], strict=True):
        text = "  ".join(value.ljust(width) for value, width in zip(cell, widths, strict=True))
        typer.echo(f"{text}  {row['description'] if row else 'description'}".rstrip())


def register(app: typer.Typer) -> None:
    app.command()(run)
