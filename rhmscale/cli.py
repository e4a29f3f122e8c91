"""Command line: thin typer app. Parses, calls the library, prints with rich.

Library modules are imported inside the commands so that `rhmscale --help` stays fast (no torch).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

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

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML RunConfig file (partial is fine).")
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-o", help="Dotted override, e.g. -o grammar.v=32 (repeatable)."),
]


def _console():
    from rich.console import Console

    return Console()


def load_run_config(config: Path | None, overrides: list[str] | None, grammar_only: bool = False):
    from rhmscale.config import build_config, build_grammar_config, load_yaml

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
) -> None:
    """Train and evaluate one run; resumes from its checkpoint, skips it if already done."""
    if wandb is not None:
        overrides = [*(overrides or []), f"tracking.wandb={wandb}"]
    cfg = load_run_config(config, overrides)
    if cfg.tracking.group is None:
        cfg.tracking.group = sweep
    target = run_dir or root / sweep / "runs" / cfg.run_id()
    console = _console()
    console.print(f"run [bold]{cfg.run_id()}[/] -> {target}")
    from rhmscale.pipeline.run import execute

    outcome = execute(cfg, target, progress=progress)
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

    from rhmscale.pipeline.evaluate import format_sequence
    from rhmscale.pipeline.grammar import Grammar

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

sweep_app = typer.Typer(help="Plan, submit and follow sweeps of runs.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

SpecArg = Annotated[
    str, typer.Argument(help="Sweep spec YAML file, or a preset name (quick, paper).")
]
SweepPathArg = Annotated[Path, typer.Argument(help="The sweep folder: <root>/<sweep name>.")]
RootOpt = Annotated[Path, typer.Option(help="Runs root folder.")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option("--executor", "-e", help="local, slurm or debug (default: the spec's)."),
]
PartitionOpt = Annotated[str | None, typer.Option(help="SLURM partition.")]
RunsPerTaskOpt = Annotated[int | None, typer.Option(help="Runs one array task runs in sequence.")]
ParallelOpt = Annotated[int | None, typer.Option(help="Array tasks running at once.")]
TimeoutOpt = Annotated[int | None, typer.Option(help="Time limit of a task, minutes.")]
CpusOpt = Annotated[int | None, typer.Option(help="CPUs of a task.")]
GpusOpt = Annotated[int | None, typer.Option(help="GPUs of a task.")]
WaitOpt = Annotated[
    bool | None,
    typer.Option(help="Wait for the jobs (default: yes for local/debug, no for slurm)."),
]


def _executor_overrides(executor, partition, runs_per_task, parallel, timeout, cpus, gpus):
    return {
        "kind": executor,
        "partition": partition,
        "runs_per_task": runs_per_task,
        "array_parallelism": parallel,
        "timeout_min": timeout,
        "cpus_per_task": cpus,
        "gpus_per_task": gpus,
    }


@sweep_app.command("plan")
def sweep_plan(spec: SpecArg, root: RootOpt = Path("runs")) -> None:
    """Expand and validate a sweep: its cells, runs, what is done and what would be submitted."""
    from rhmscale.sweeps.dispatch import SUBMITTABLE, group_tasks
    from rhmscale.sweeps.spec import load_spec
    from rhmscale.sweeps.status import status_table, sweep_status

    sweep = load_spec(spec)
    status = sweep_status(root / sweep.name, sweep)
    to_submit = sum(status.counts.get(s, 0) for s in SUBMITTABLE)
    ex = sweep.executor
    n_tasks = len(group_tasks([{}] * to_submit, ex))
    console = _console()
    title = f"sweep {sweep.name} -> {root / sweep.name}"
    console.print(status_table(status, title=title, to_submit=SUBMITTABLE))
    collapsed = status.n_grid_points - len(status.runs)
    console.print(
        f"{status.n_grid_points} grid points"
        + (f" ({collapsed} identical collapsed)" if collapsed else "")
        + f", {len(status.runs)} runs, {status.counts.get('done', 0)} done, "
        f"[bold]{to_submit} to submit[/] as {n_tasks} {ex.kind} task(s)"
    )


def _do_submit(sweep, root, overrides, states, wait, only=None) -> None:
    from rhmscale.sweeps.dispatch import submit
    from rhmscale.sweeps.dispatch import wait as wait_for

    console = _console()
    submission = submit(sweep, root, executor=overrides, states=states, only=only)
    prepared = submission.prepared
    if submission.record is None:
        console.print(f"sweep {sweep.name}: nothing to submit ({prepared.n_runs} runs)")
        return
    kind = prepared.executor.kind
    ids = sorted({str(t["job_id"]).split("_")[0] for t in submission.record["tasks"]})
    console.print(
        f"sweep {sweep.name}: submitted {submission.n_submitted} of {prepared.n_runs} runs as "
        f"{len(submission.jobs)} {kind} task(s) (job {', '.join(ids)}); "
        f"folder {prepared.sweep.path}"
    )
    if wait is None:
        wait = kind != "slurm"
    if wait:
        console.print("waiting for the jobs ...")
        errors = wait_for(submission)
        for err in errors:
            console.print(f"[red]{err}[/]")
        _print_status(prepared.sweep.path, json_out=False, failures=10)
        if errors:
            raise typer.Exit(1)
    else:
        console.print(f"follow it with: rhmscale sweep status {prepared.sweep.path}")


@sweep_app.command("submit")
def sweep_submit(
    spec: SpecArg,
    root: RootOpt = Path("runs"),
    executor: ExecutorOpt = None,
    partition: PartitionOpt = None,
    runs_per_task: RunsPerTaskOpt = None,
    array_parallelism: ParallelOpt = None,
    timeout_min: TimeoutOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = None,
    wait: WaitOpt = None,
) -> None:
    """Submit every run that is not done (nor queued or running) as one job array."""
    from rhmscale.sweeps.dispatch import SUBMITTABLE
    from rhmscale.sweeps.spec import load_spec

    overrides = _executor_overrides(
        executor,
        partition,
        runs_per_task,
        array_parallelism,
        timeout_min,
        cpus_per_task,
        gpus_per_task,
    )
    _do_submit(load_spec(spec), root, overrides, SUBMITTABLE, wait)


def _print_status(path: Path, json_out: bool, failures: int, runs: bool = False) -> None:
    import json

    from rhmscale.sweeps.status import runs_table, status_table, sweep_status

    status = sweep_status(path)
    if json_out:
        typer.echo(json.dumps(status.to_json(), indent=2, default=str))
        return
    console = _console()
    console.print(status_table(status))
    if runs:
        console.print(runs_table(status))
    failed = [r for r in status.runs if r.state == "failed"]
    for run in failed[:failures]:
        values = ", ".join(f"{k}={v}" for k, v in run.values.items())
        console.print(f"[red]failed[/] {run.run_id} ({values}) job {run.job_id}:")
        console.print(f"  {run.message or '(no message)'}", markup=False)
        console.print(f"  log: {status.path / 'runs' / run.run_id / 'run.log'}", markup=False)
    if len(failed) > failures:
        console.print(f"... and {len(failed) - failures} more failed runs (--json lists all)")


@sweep_app.command("status")
def sweep_status_cmd(
    path: SweepPathArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    failures: Annotated[int, typer.Option(help="Failed runs to show with their error.")] = 10,
    runs: Annotated[
        bool, typer.Option("--runs", help="Also a table of finished runs and final accuracies.")
    ] = False,
) -> None:
    """Counts of runs by state, per grammar cell; failed runs with their error."""
    _print_status(path, json_out, failures, runs)


@sweep_app.command("retry")
def sweep_retry(
    path: SweepPathArg,
    executor: ExecutorOpt = None,
    partition: PartitionOpt = None,
    runs_per_task: RunsPerTaskOpt = None,
    array_parallelism: ParallelOpt = None,
    timeout_min: TimeoutOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = None,
    wait: WaitOpt = None,
) -> None:
    """Resubmit failed, interrupted and cancelled runs only."""
    from rhmscale.sweeps.dispatch import RETRYABLE
    from rhmscale.sweeps.status import SweepDir

    sweep = SweepDir(path).load_spec()
    if path.resolve().name != sweep.name:
        raise UserError(f"{path} holds sweep '{sweep.name}': its folder must be named so")
    overrides = _executor_overrides(
        executor,
        partition,
        runs_per_task,
        array_parallelism,
        timeout_min,
        cpus_per_task,
        gpus_per_task,
    )
    _do_submit(sweep, path.resolve().parent, overrides, RETRYABLE, wait)


@sweep_app.command("cancel")
def sweep_cancel(path: SweepPathArg) -> None:
    """Cancel the sweep's queued and running tasks."""
    from rhmscale.sweeps.dispatch import cancel

    ids, complaints = cancel(path)
    console = _console()
    if not ids:
        console.print("nothing queued or running")
        return
    console.print(f"cancelled {', '.join(ids)}")
    if complaints:
        console.print(complaints, markup=False)


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
