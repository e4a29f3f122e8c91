"""`rhmscale sweep sync` and `tune sync`: a sweep's or a study's offline W&B runs uploaded with
wandb's own sync (store.wandb_sync), what is synced already skipped, a progress bar, and what is
left said at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rhmscale.cli.console import make_console

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be uploaded; upload nothing.")
]
UnfinishedOpt = Annotated[
    bool,
    typer.Option(
        help="Also upload runs that have not ended (interrupted, or training now: what they "
        "logged so far; a later sync adds the rest)."
    ),
]


def sync_offline_runs(path: Path, what: str, dry_run: bool, unfinished: bool) -> None:
    """Upload the offline W&B runs of the sweep or study folder `path` (`what`: "sweep" or
    "study"), in batches, with a progress bar."""
    from rich.markup import escape
    from rich.progress import Progress

    from rhmscale.errors import UserError
    from rhmscale.store.wandb_mirror import has_credentials
    from rhmscale.store.wandb_sync import batches, offline_runs, sync_batch

    if not (path / "runs").is_dir():
        raise UserError(f"{path} is not a {what} folder (no runs/ in it): give <root>/<{what}>")
    found = offline_runs(path)
    unsynced = [run for run in found if not run.synced]
    todo = [run for run in unsynced if run.ended or unfinished]
    waiting = [run for run in unsynced if not (run.ended or unfinished)]
    console = make_console()
    console.print(
        f"{what} {path.name}: {len(found)} runs with offline W&B logs: {len(found) - len(unsynced)}"
        f" synced already, {len(todo)} to upload ({sum(len(r.folders) for r in todo)} folders)"
        + (
            f", {len(waiting)} not ended (left for a later sync; --unfinished uploads "
            "what they logged so far)"
            if waiting
            else ""
        )  # fmt: skip
    )
    if dry_run or not todo:
        for run in todo if dry_run else []:
            folders = len(run.folders)
            console.print(f"  would upload {run.run_id} ({run.state}): {folders} folder(s)")
        return
    if not has_credentials():
        raise UserError(
            "uploading to W&B needs credentials: set WANDB_API_KEY or run `wandb login` "
            "(--dry-run says what would be uploaded without them)"
        )
    left: list[str] = []
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("uploading to W&B", total=len(todo))
        for batch in batches(todo):
            left += sync_batch(batch)
            progress.advance(bar, len(batch))
    console.print(f"uploaded {len(todo) - len(left)} of {len(todo)} runs")
    if left:
        for line in left[:10]:
            console.print(f"[red]not uploaded[/] {escape(line)}")
        if len(left) > 10:
            console.print(f"... and {len(left) - 10} more")
        console.print("run the command again to go on: what is synced is skipped")
        raise typer.Exit(1)
