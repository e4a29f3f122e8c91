"""`rhmscale sweep ...`: plan, submit and follow sweeps (typer; imports stay inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rhmscale.errors import UserError


def make_console(stderr: bool = False):
    """A rich console, imported on use so that `--help` stays fast."""
    from rich.console import Console

    return Console(stderr=stderr)


sweep_app = typer.Typer(help="Plan, submit and follow sweeps of runs.", no_args_is_help=True)

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
    from rhmscale.sweeps.dispatch import SUBMITTABLE, prepare
    from rhmscale.sweeps.spec import load_spec
    from rhmscale.sweeps.status import status_table, sweep_status

    sweep = load_spec(spec)
    status = sweep_status(root / sweep.name, sweep)
    prepared = prepare(sweep, root)
    to_submit = len(prepared.run_ids)
    ex = prepared.executor
    console = make_console()
    title = f"sweep {sweep.name} -> {root / sweep.name}"
    console.print(status_table(status, title=title, to_submit=SUBMITTABLE))
    if ex.pack and to_submit:
        console.print(packs_table(prepared.tasks))
    collapsed = status.n_grid_points - len(status.runs)
    console.print(
        f"{status.n_grid_points} grid points"
        + (f" ({collapsed} identical collapsed)" if collapsed else "")
        + f", {len(status.runs)} runs, {status.counts.get('done', 0)} done, "
        f"[bold]{to_submit} to submit[/] as {len(prepared.tasks)} {ex.kind} task(s)"
    )


def packs_table(tasks):
    """One row per pack: its shape (shared by members) and what its members vary in."""
    from rich.table import Table

    from rhmscale.config import flatten
    from rhmscale.sweeps.status import format_p

    table = Table(title="packs (members train together on one device)")
    for name in ("pack", "runs", "model", "L s v", "steps x batch", "m", "P", "seeds"):
        table.add_column(name, justify="right" if name in ("pack", "runs") else "left")
    packs: dict[int, list[dict]] = {}
    for task in tasks:
        for item in task:
            packs.setdefault(item["pack"], []).append(flatten(item["config"]))
    for number, members in sorted(packs.items()):
        first = members[0]

        def values(key, members=members):
            return ",".join(str(v) for v in sorted({m[key] for m in members}))

        table.add_row(
            str(number),
            str(len(members)),
            f"{first['model.arch']} w{first['model.width']} d{first['model.depth']}",
            f"{first['grammar.L']} {first['grammar.s']} {first['grammar.v']}",
            f"{first['train.max_steps']} x {first['train.batch_size']}",
            values("grammar.m"),
            format_p({m["data.P"] for m in members}),
            values("seed"),
        )
    return table


def _do_submit(sweep, root, overrides, states, wait, only=None) -> None:
    from rhmscale.sweeps.dispatch import submit
    from rhmscale.sweeps.dispatch import wait as wait_for

    console = make_console()
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
    console = make_console()
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
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.dispatch import RETRYABLE
    from rhmscale.sweeps.status import load_sweep_spec

    sweep = load_sweep_spec(SweepDir(path))
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
    console = make_console()
    if not ids:
        console.print("nothing queued or running")
        return
    console.print(f"cancelled {', '.join(ids)}")
    if complaints:
        console.print(complaints, markup=False)
