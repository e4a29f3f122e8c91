"""Command line: thin typer app. Parses, calls the library, prints with rich.

Library modules are imported inside the commands so that `rhmscale --help` stays fast (no torch).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rhmscale.cli.results import register as register_results
from rhmscale.cli.sweep import make_console as _console
from rhmscale.cli.sweep import sweep_app
from rhmscale.errors import UserError

app = typer.Typer(
    name="rhmscale",
    help="Sample complexity of masked diffusion models on the Random Hierarchy Model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
grammar_app = typer.Typer(help="Inspect Random Hierarchy Model grammars.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)
app.add_typer(grammar_app, name="grammar")
app.add_typer(config_app, name="config")
app.add_typer(sweep_app, name="sweep")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML RunConfig file (partial is fine).")
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-o", help="Dotted override, e.g. -o grammar.v=32 (repeatable)."),
]


def load_run_config(config: Path | None, overrides: list[str] | None, grammar_only: bool = False):
    from rhmscale.config_io import build_config, build_grammar_config, load_yaml

    base = load_yaml(config) if config else {}
    build = build_grammar_config if grammar_only else build_config
    return build(base, overrides, where=str(config) if config else "config")


@app.command()
def run(
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    root: Annotated[Path, typer.Option(help="Runs root folder.")] = Path("runs"),
    sweep: Annotated[str, typer.Option(help="Sweep folder under the root.")] = "adhoc",
    run_dir: Annotated[
        Path | None, typer.Option(help="Exact run folder (default <root>/<sweep>/runs/<run_id>).")
    ] = None,
    wandb: Annotated[
        str | None, typer.Option(help="W&B mode: auto, online, offline or disabled.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    compile: Annotated[
        str | None,
        typer.Option(
            help="torch.compile the training step (train.compile): auto (compiled with CUDA "
            "graphs on a GPU), off, or a mode (default, reduce-overhead, max-autotune)."
        ),
    ] = None,
) -> None:
    """Train and evaluate one run; resumes from its checkpoint, skips it if already done."""
    if wandb is not None:
        overrides = [*(overrides or []), f"tracking.wandb={wandb}"]
    if compile is not None:
        overrides = [*(overrides or []), f"train.compile={compile}"]
    cfg = load_run_config(config, overrides)
    if cfg.tracking.group is None:
        cfg.tracking.group = sweep
    target = run_dir or root / sweep / "runs" / cfg.run_id()
    console = _console()
    console.print(f"run [bold]{cfg.run_id()}[/] -> {target}")
    from rhmscale.training import execute

    (outcome,) = execute([cfg], [target], progress=progress)
    if outcome.state == "failed":
        console.print(f"[red]run failed[/]: {outcome.error}")
        console.print(f"details: {target / 'failed.json'}, {target / 'run.log'}", markup=False)
        raise typer.Exit(1)
    if outcome.state != "done":
        console.print(f"run stopped at a checkpoint in {target}; run again to resume")
        raise typer.Exit(3)
    console.print(results_table(outcome.result))


def results_table(result: dict[str, Any]):
    """Per level k: accuracy and tuple accuracy; then depth, novelty, memorisation, loss."""
    from rich.table import Table

    final = result["final"]
    L = result["config"]["grammar"]["L"]
    table = Table(title=f"run {result['run_id']} at step {final['step']}")
    table.add_column("level k", justify="right")
    table.add_column("gen/acc_l{k}", justify="right")
    table.add_column("gen/tuple_acc_l{k}", justify="right")
    for k in range(1, L + 1):
        table.add_row(
            str(k), f"{final[f'gen/acc_l{k}']:.3f}", f"{final[f'gen/tuple_acc_l{k}']:.3f}"
        )
    table.add_section()
    for name in (
        "gen/coherence_depth",
        "gen/coherence_length",
        "gen/novel_frac",
        "gen/memorized_frac",
        "val/loss",
        "train/loss",
    ):
        table.add_row(name, f"{final[name]:.3f}", "")
    return table


@app.command()
def collect(
    path: Annotated[
        Path | None, typer.Argument(help="A sweep folder <root>/<sweep> or a folder of runs.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write .parquet or .csv (atomically).")
    ] = None,
    from_wandb_offline: Annotated[
        Path | None,
        typer.Option(
            help="Read offline W&B runs (offline-run-*/run-<id>.wandb) under this folder."
        ),
    ] = None,
    from_wandb: Annotated[
        str | None, typer.Option(help="Read runs through the W&B API: entity/project.")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="With --from-wandb: only this group (the sweep name).")
    ] = None,
) -> None:
    """Collect finished runs into one table: a row per run and evaluation point."""
    sources = [s for s in (path, from_wandb_offline, from_wandb) if s is not None]
    if len(sources) != 1:
        raise UserError("give one of: PATH, --from-wandb-offline DIR, --from-wandb entity/project")
    if from_wandb_offline is not None:
        from rhmscale.results.collect_wandb import collect_wandb_offline

        collection = collect_wandb_offline(from_wandb_offline)
    elif from_wandb is not None:
        from rhmscale.results.collect_wandb import collect_wandb_api

        collection = collect_wandb_api(from_wandb, group=group)
    else:
        from rhmscale.results.collect import collect as collect_runs

        collection = collect_runs(path)
    console = _console()
    console.print(collection.summary())
    for reason, ids in sorted(collection.skipped.items()):
        console.print(f"  {reason}: {', '.join(ids[:10])}{' …' if len(ids) > 10 else ''}")
    if output is None:
        return
    from rhmscale.store.atomic import atomic_write

    frame = collection.frame
    if output.suffix == ".csv":
        atomic_write(output, lambda handle: handle.write(frame.to_csv(index=False).encode()))
    elif output.suffix == ".parquet":
        atomic_write(output, lambda handle: frame.to_parquet(handle, index=False))
    else:
        raise UserError(f"--output {output}: use a .parquet or .csv file name")
    console.print(f"wrote {output}")


@grammar_app.command("show")
def grammar_show(
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    samples: Annotated[int, typer.Option(help="Sampled sequences to show.")] = 5,
    max_rules: Annotated[int, typer.Option(help="Symbols listed per level.")] = 8,
) -> None:
    """Print a grammar's rules and a few sampled sequences with their parse depth."""
    import numpy as np
    from rich.table import Table

    from rhmscale.rhm.grammar import Grammar
    from rhmscale.rhm.metrics import format_sequence

    cfg = load_run_config(config, overrides, grammar_only=True)
    grammar = Grammar.from_config(cfg)
    console = _console()
    console.print(
        f"RHM v={cfg.v} m={cfg.m} s={cfg.s} L={cfg.L} seed={cfg.seed}: sequences of length "
        f"{cfg.seq_len}, {grammar.n_sequences:,} distinct"
    )
    for k in range(cfg.L, 0, -1):
        table = Table(title=f"level {k} -> level {k - 1} ({'tokens' if k == 1 else 'symbols'})")
        table.add_column("symbol", justify="right")
        table.add_column("productions")
        for a in range(min(cfg.v, max_rules)):
            table.add_row(
                str(a), "   ".join(" ".join(map(str, t)) for t in grammar.rules[k - 1][a])
            )
        if cfg.v > max_rules:
            table.add_row("…", f"{cfg.v - max_rules} more symbols")
        console.print(table)
    rng = np.random.default_rng(cfg.seed)
    seqs = grammar.sample(samples, rng)
    depth = grammar.parse(seqs).depth
    for seq, d in zip(seqs, depth, strict=True):
        console.print(f"{format_sequence(seq, cfg.s)}   (depth {d})")


@config_app.command("show")
def config_show(config: ConfigOpt = None, overrides: OverrideOpt = None) -> None:
    """Print the resolved RunConfig as YAML, with its run id."""
    import yaml

    cfg = load_run_config(config, overrides)
    typer.echo(f"# run_id: {cfg.run_id()}")
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@config_app.command("keys")
def config_keys() -> None:
    """List every valid dotted key."""
    from rhmscale.config import valid_keys

    typer.echo("\n".join(valid_keys()))


# --- sweeps ---------------------------------------------------------------------------------


register_results(app)  # after `run` and `collect`, so --help lists them in workflow order


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
