"""`rhmscale sweep plan|submit|status|retry|cancel|sync` (imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rhmscale.cli.console import make_console
from rhmscale.cli.failures import writing
from rhmscale.cli.options import (
    RootOpt,
    SpecArg,
    SweepPathArg,
    WaitOpt,
    bounded,
    executor_options,
)
from rhmscale.cli.sync import DryRunOpt, UnfinishedOpt, sync_offline_runs

if TYPE_CHECKING:
    from rhmscale.sweeps.dispatch import Prepared, Submission

sweep_app = typer.Typer(help="Plan, submit and follow sweeps of runs.", no_args_is_help=True)


ParamsFromOpt = Annotated[
    Path | None,
    typer.Option(
        help="A study folder (rhmscale tune): train each run with its cell's best parameters."
    ),
]


SubmitWhereOpt = Annotated[
    str,
    typer.Option(
        help='Only the runs of these cells: "L=3", "s=2, v=16|32" (grammar letters or config '
        "keys); the others stay pending for a later submission into the same sweep.",
    ),
]


ParamsUnlikeOpt = Annotated[
    bool,
    typer.Option(
        help="With --params-from: also hand a recipe to runs whose grammar or model differ from "
        "every cell it was tuned on (with a warning each), instead of refusing."
    ),
]


def load_sweep(spec: str, params_from: Path | None, params_unlike: bool = False) -> Any:
    from rhmscale.sweeps.spec import load_spec

    sweep = load_spec(spec)
    if params_from is None:
        return sweep
    import warnings

    from rhmscale.tuning.handoff import UnlikeRecipe, with_params

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnlikeRecipe)
        tuned = with_params(sweep, params_from, allow_unlike=params_unlike)
    for warning in caught:
        make_console(stderr=True).print(f"[yellow]warning:[/] {warning.message}")
    return tuned


def cell_runs(sweep: Any, where: str) -> set[str] | None:
    """The run ids of the cells `where` selects (as fit's --where); None (every run) when empty.
    A condition that selects nothing is an error naming the values there are."""
    if not where.strip():
        return None
    import pandas as pd

    from rhmscale.config import flatten
    from rhmscale.results.cells import select_cells
    from rhmscale.sweeps.grid import expand_points

    points = expand_points(sweep).points
    frame = pd.DataFrame(
        [flatten(p.config.model_dump(mode="json")) | {"run_id": p.run_id} for p in points]
    )
    return set(select_cells(frame, where)["run_id"])


@sweep_app.command("plan")
@executor_options
def sweep_plan(
    spec: SpecArg,
    root: RootOpt = Path("runs"),
    *,
    overrides: dict[str, Any],
    params_from: ParamsFromOpt = None,
    params_unlike: ParamsUnlikeOpt = False,
    where: SubmitWhereOpt = "",
) -> None:
    """Expand and validate a sweep: its cells, runs, what is done and what would be submitted
    (on SLURM, with the #SBATCH lines of its job array)."""
    from rhmscale.sweeps.dispatch import prepare

    sweep = load_sweep(spec, params_from, params_unlike)
    print_plan(prepare(sweep, root, executor=overrides, runs=cell_runs(sweep, where)), root)


def print_plan(prepared: Prepared, root: Path) -> None:
    """The plan table: cells, runs, done, to submit; packs; on SLURM the sbatch options."""
    from rhmscale.cli.tables import packs_table, status_table
    from rhmscale.sweeps.grouping import pack_plan

    sweep = prepared.spec
    status, ex, to_submit = prepared.status, prepared.executor, prepared.run_ids
    console = make_console()
    title = f"sweep {sweep.name} -> {root / sweep.name}"
    console.print(status_table(status, title=title, to_submit=set(to_submit)))
    if ex.pack and to_submit:
        console.print(packs_table(pack_plan(prepared.tasks)))
    collapsed = status.n_grid_points - len(status.runs)
    console.print(
        f"{status.n_grid_points} grid points"
        + (f" ({collapsed} identical collapsed)" if collapsed else "")
        + f", {len(status.runs)} runs, {status.counts.get('done', 0)} done, "
        f"[bold]{len(to_submit)} to submit[/] as {len(prepared.tasks)} {ex.kind} task(s)"
    )
    if ex.kind == "slurm" and prepared.tasks:
        from rhmscale.sweeps.executors import sbatch_lines

        console.print("sbatch options of the submission:")
        for line in sbatch_lines(ex, prepared.sweep.submitit, sweep.name, len(prepared.tasks)):
            typer.echo(line)  # whole lines (the console would wrap long paths)


@sweep_app.command("submit")
@executor_options
def sweep_submit(
    spec: SpecArg,
    root: RootOpt = Path("runs"),
    *,
    overrides: dict[str, Any],
    wait: WaitOpt = None,
    params_from: ParamsFromOpt = None,
    params_unlike: ParamsUnlikeOpt = False,
    where: SubmitWhereOpt = "",
) -> None:
    """Submit every run that is not done (nor queued or running) as one job array."""
    from rhmscale.sweeps.dispatch import submit

    sweep = load_sweep(spec, params_from, params_unlike)
    with writing(root / sweep.name):
        submission = submit(sweep, root, executor=overrides, runs=cell_runs(sweep, where))
    follow(submission, wait)


@sweep_app.command("retry")
@executor_options
def sweep_retry(path: SweepPathArg, *, overrides: dict[str, Any], wait: WaitOpt = None) -> None:
    """Resubmit failed, corrupt (damaged files: set aside as *.damaged, the run trained again
    from its checkpoint), interrupted, cancelled and unrecorded runs (pending, though their job
    ended: it left no outcome); diverged runs are left (they would diverge again)."""
    from rhmscale.sweeps.dispatch import retry

    with writing(path):
        submission = retry(path, executor=overrides)
    follow(submission, wait)


def follow(submission: Submission, wait: bool | None) -> None:
    """Say what was submitted; wait for it (by default for local and debug jobs) and show the
    sweep's status, else say how to follow it."""
    from rhmscale.cli.interrupt import stopping
    from rhmscale.cli.progress import watching
    from rhmscale.sweeps.dispatch import cancel_jobs, wait_runs
    from rhmscale.sweeps.dispatch import wait as wait_for

    prepared = submission.prepared
    name, folder, kind = prepared.spec.name, prepared.sweep.path, prepared.executor.kind
    console = make_console()
    if submission.record is None:
        console.print(f"sweep {name}: nothing to submit ({prepared.n_runs} runs)")
        return
    adopted = submission.record.get("adopted")
    if adopted:
        workers = ", ".join(task["job_id"] for task in submission.record["tasks"])
        console.print(
            f"sweep {name}: {submission.n_submitted} of {prepared.n_runs} runs added to the "
            f"backlog of its living workers ({workers}); folder {folder}"
        )
    else:
        console.print(
            f"sweep {name}: submitted {submission.n_submitted} of {prepared.n_runs} runs as "
            f"{len(submission.jobs)} {kind} task(s) (job {', '.join(submission.array_ids)}); "
            f"folder {folder}"
        )
    if wait is None:
        wait = kind != "slurm"
    if not wait:
        console.print(f"follow it with: rhmscale sweep status {folder}")
        return
    console.print("waiting for the runs ..." if adopted else "waiting for the jobs ...")
    with (
        stopping(
            "slurm" if adopted else kind,  # another command's workers go on, as SLURM's do
            submission.jobs,
            lambda: cancel_jobs(prepared.sweep),
            f"rhmscale sweep status {folder}",
        ),
        watching(folder, prepared.spec, prepared.run_ids, console),
    ):
        if adopted:
            wait_runs(prepared.sweep, prepared.run_ids)
        errors = wait_for(submission)
    for err in errors:
        console.print(f"[red]{err}[/]")
    print_status(folder, json_out=False, failures=10)
    if errors:
        raise typer.Exit(1)


@sweep_app.command("status")
def sweep_status(
    path: SweepPathArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    failures: Annotated[int, bounded("--failures", "Failed runs to show with their error")] = 10,
    runs: Annotated[
        bool, typer.Option("--runs", help="Also a table of finished runs and final accuracies.")
    ] = False,
) -> None:
    """Counts of runs by state, per grammar cell; failed runs with their error."""
    print_status(path, json_out, failures, runs)


def print_status(path: Path, json_out: bool, failures: int, runs: bool = False) -> None:
    import json

    from rich.markup import escape

    from rhmscale.cli.tables import runs_table, status_table
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.status import sweep_status

    status = sweep_status(path)
    if json_out:
        typer.echo(json.dumps(status.to_json(), indent=2, default=str))
        return
    console = make_console()
    console.print(status_table(status))
    for note in status.notes:  # SLURM did not answer, a node lost or draining
        console.print(f"[yellow]note:[/] {escape(note)}")
    if runs:
        console.print(runs_table(status))
        for run in [r for r in status.runs if r.holder]:
            values = ", ".join(f"{k}={v}" for k, v in run.values.items())
            where = f" on {run.node}" if run.node else ""
            line = f"running {run.run_id}{where} ({values}): {held_for(run.holder)}"
            console.print(line, markup=False)
    failed = [r for r in status.runs if r.state in ("failed", "diverged", "corrupt") or r.message]
    for run in failed[:failures]:
        values = ", ".join(f"{k}={v}" for k, v in run.values.items())
        console.print(f"[red]{run.state}[/] {run.run_id} ({values}) job {run.job_id}:")
        console.print(f"  {run.message or '(no message)'}", markup=False)
        console.print(f"  log: {SweepDir(status.path).run_dir(run.run_id).log}", markup=False)
    if len(failed) > failures:
        console.print(f"... and {len(failed) - failures} more such runs (--json lists all)")


def held_for(line: str) -> str:
    """A lock holder's line, with how long it has held the run ("... since T (12 min)")."""
    import datetime as dt

    since = line.rsplit(" since ", 1)[-1]
    try:
        seconds = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(since)).total_seconds()
    except ValueError:
        return line
    return f"{line} ({seconds / 60:.0f} min)" if seconds >= 60 else f"{line} ({seconds:.0f} s)"


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


@sweep_app.command("sync")
def sweep_sync(path: SweepPathArg, dry_run: DryRunOpt = False, unfinished: UnfinishedOpt = False):
    """Upload the sweep's offline W&B runs (wandb sync), skipping those synced already: run it
    again after a break and it goes on."""
    sync_offline_runs(path, "sweep", dry_run, unfinished)
