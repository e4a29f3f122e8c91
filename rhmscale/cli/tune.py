"""`rhmscale tune submit|status|retry|cancel|report|sync` (imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rhmscale.cli.console import make_console
from rhmscale.cli.failures import writing
from rhmscale.cli.options import RootOpt, WaitOpt, check_wandb_mode, executor_options
from rhmscale.cli.sync import DryRunOpt, UnfinishedOpt, sync_offline_runs

if TYPE_CHECKING:
    from rhmscale.tuning.dispatch import Submitted

tune_app = typer.Typer(
    help="Tune hyperparameters with Optuna: studies whose trials are runs.", no_args_is_help=True
)
StudySpecArg = Annotated[Path, typer.Argument(help="Study spec YAML file.")]
StudyPathArg = Annotated[Path, typer.Argument(help="The study folder: <root>/<study name>.")]


@tune_app.command("submit")
@executor_options
def tune_submit(
    spec: StudySpecArg,
    root: RootOpt = Path("runs"),
    *,
    overrides: dict[str, Any],
    wait: WaitOpt = None,
) -> None:
    """Validate a study spec whole, then submit its workers as one job array. Waiting, it exits
    1 when a worker failed or a study stopped before its budget (its failures in a row)."""
    from rhmscale.tuning.dispatch import submit
    from rhmscale.tuning.spec import load_study_spec

    study = load_study_spec(spec)
    with writing(root / study.name):
        follow(submit(study, root, executor=overrides), wait)


@tune_app.command("retry")
@executor_options
def tune_retry(path: StudyPathArg, *, overrides: dict[str, Any], wait: WaitOpt = None) -> None:
    """Resubmit the workers that are not queued or running; each goes on with its trial. Exits
    1 as tune submit does."""
    from rhmscale.tuning.dispatch import retry

    with writing(path):
        follow(retry(path, executor=overrides), wait)


def follow(submitted: Submitted, wait: bool | None) -> None:
    from rhmscale.cli.interrupt import stopping
    from rhmscale.sweeps.dispatch import wait_jobs
    from rhmscale.tuning.dispatch import cancel

    folder, jobs = submitted.folder.path, submitted.jobs
    console = make_console()
    if not jobs:
        console.print(f"study {folder.name}: every worker is queued or running already")
        print_status(folder)
        return
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
    console.print(f"study {folder.name}: submitted {len(jobs)} worker(s) (job {', '.join(ids)})")
    if wait is None:
        wait = submitted.kind != "slurm"
    if not wait:
        console.print(f"follow it with: rhmscale tune status {folder}")
        return
    console.print("waiting for the workers ...")
    with stopping(submitted.kind, jobs, lambda: cancel(folder), f"rhmscale tune status {folder}"):
        errors = wait_jobs(jobs)
    for err in errors:
        console.print(f"[red]{err}[/]")
    stopped = [s for s in print_status(folder).studies if s.stopped]
    if errors or stopped:  # a study stopped by its failures in a row failed, as a job would
        raise typer.Exit(1)


@tune_app.command("status")
def tune_status(
    path: StudyPathArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Each study's trials by state and its best; the workers queued or running (no sacct)."""
    print_status(path, json_out)


def print_status(path: Path, json_out: bool = False) -> Any:
    """Print the study folder's status (a table per study, or JSON); return it."""
    import json
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    from rhmscale.tuning.dispatch import status

    now = status(path)
    if json_out:
        print(json.dumps(asdict(now), default=str))
        return now
    console = make_console()
    for s in now.studies:
        table = Table(title=f"study {s.name}")
        for column in ("trial", "state", "value", "run", "params"):
            table.add_column(column)
        for t in s.trials:
            value = "" if t["value"] is None else f"{t['value']:.4g}"
            params = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in t["params"].items()
            )
            table.add_row(str(t["number"]), t["state"], value, t["run_id"] or "", params)
        console.print(table)
        counts = (
            ", ".join(f"{n} {state}" for state, n in sorted(s.counts.items())) or "no trials yet"
        )
        best = f"; best {s.best_value:.4g} with {s.best_params}" if s.best_value is not None else ""
        console.print(f"{s.name}: {counts}{best}")
        if s.stopped:
            console.print(f"[red]{escape(f'{s.name} stopped: {s.stopped}')}[/]")
    alive = ", ".join(f"{w} {state}" for w, state in sorted(now.workers.items())) or "none"
    console.print(f"workers queued or running: {alive}")
    for record in now.damaged:
        console.print(f"[yellow]{record} cannot be read (cut short?): ignored; the journal "
                      "knows which trials its worker held[/]")  # fmt: skip
    running = sum(s.counts.get("running", 0) for s in now.studies)
    if running and not now.workers:
        console.print(f"{running} trial(s) running with no worker: `rhmscale tune retry {path}` "
                      "resumes them")  # fmt: skip
    return now


@tune_app.command("cancel")
def tune_cancel(path: StudyPathArg) -> None:
    """Cancel the study's queued and running workers (their trials resume on retry)."""
    from rhmscale.tuning.dispatch import cancel

    cancelled, complaints = cancel(path)
    console = make_console()
    console.print(f"cancelled: {', '.join(cancelled) or 'nothing was queued or running'}")
    if complaints:
        console.print(f"[yellow]scancel: {complaints}[/]")


@tune_app.command("report")
def tune_report(
    path: StudyPathArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path(
        "tune-report"
    ),
    wandb: Annotated[
        str | None,
        typer.Option(
            help="W&B mode of the summary run (default: the spec's).", callback=check_wandb_mode
        ),
    ] = None,
    old_out: Annotated[Path | None, typer.Option("--out", hidden=True)] = None,
) -> None:
    """Best parameters per study, trials table and Optuna's figures; report.md, trials.csv,
    best.json and a W&B summary run."""
    from rhmscale.tuning.report import write_tune_report

    out = old_out or output  # --out: the name before --output, kept working
    with writing(out):
        report = write_tune_report(path, out, wandb)
    make_console().print(f"wrote {report}")


@tune_app.command("sync")
def tune_sync(path: StudyPathArg, dry_run: DryRunOpt = False, unfinished: UnfinishedOpt = False):
    """Upload the study's offline W&B runs (its trials; wandb sync), skipping those synced
    already: run it again after a break and it goes on."""
    sync_offline_runs(path, "study", dry_run, unfinished)
