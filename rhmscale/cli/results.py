"""From finished runs to results: collect, fit, export, plot, report.

fit, export, plot and report collect the runs of a folder, fit with the shared fit options
(options.fit_options), then print, write or draw. Library modules are imported inside the
commands so that `rhmscale --help` does not import pandas.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rhmscale.cli.console import make_console
from rhmscale.cli.failures import check_output_file, writing
from rhmscale.cli.options import RunsArg, check_wandb_mode, fit_options
from rhmscale.errors import UserError

if TYPE_CHECKING:
    from rhmscale.results.collect import Collection
    from rhmscale.results.fit import FitOptions, FitResult


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
    if output is not None:
        check_output_file(output)
    if from_wandb_offline is not None:
        from rhmscale.results.collect_wandb import collect_wandb_offline

        collection = collect_wandb_offline(from_wandb_offline)
    elif from_wandb is not None:
        from rhmscale.results.collect_wandb import collect_wandb_api

        collection = collect_wandb_api(from_wandb, group=group)
    else:
        from rhmscale.results.collect import collect as collect_runs

        collection = collect_runs(path)
    console = make_console()
    console.print(collection.summary())
    say_skipped(console, collection, by_state=True)
    if output is None:
        from rhmscale.cli.tables import frame_head

        if not collection.frame.empty:
            console.print(frame_head(collection.frame))
        console.print("write the whole table with -o runs.parquet (or -o runs.csv)")
        return
    with writing(output):
        collection.write(output)
    console.print(f"wrote {output}")


def fit_runs(paths: list[Path], options: FitOptions) -> tuple[Collection, FitResult]:
    """Collect (saying on stderr what was collected and skipped), then fit."""
    from dataclasses import replace

    from rhmscale.results.cells import select_cells
    from rhmscale.results.collect import collect
    from rhmscale.results.fit import fit

    collection = collect(paths)
    where = " + ".join(map(str, paths))
    console = make_console(stderr=True)
    console.print(f"[dim]{where}: {collection.summary()}[/]")
    say_skipped(console, collection)
    if collection.frame.empty:
        raise UserError(f"no finished runs in {where} ({collection.summary()})")
    if options.where:  # the figures and the report show the selected cells only, as the fit
        collection = replace(collection, frame=select_cells(collection.frame, options.where))
    return collection, fit(collection.frame, options)


def say_skipped(console: Any, collection: Collection, by_state: bool = False) -> None:
    """Each corrupt run with what is damaged (a retry repairs it); by_state: also the other
    runs left out, by state."""
    for reason, skipped in sorted(collection.skipped.items()) if by_state else []:
        ids = [run_id for run_id in skipped if run_id not in collection.damage]
        if ids:
            console.print(f"  {reason}: {', '.join(ids[:10])}{' …' if len(ids) > 10 else ''}")
    damaged = list(collection.damage.items())
    for run_id, why in damaged[:10]:
        console.print(f"  corrupt {run_id}: {why}", markup=False)
    if len(damaged) > 10:
        console.print(f"  corrupt, too: {', '.join(run_id for run_id, _ in damaged[10:])}")


def require_exponents(result: FitResult) -> None:
    if "fit_error" in result.stats:
        raise UserError(result.stats["fit_error"])


@fit_options
def fit_command(
    path: RunsArg,
    show_robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Also refit the exponents with each other threshold, evaluation and metric, "
            "and without each cell, and show how far they move.",
        ),
    ] = False,
    *,
    fit: FitOptions,
) -> None:
    """Sample complexity P*_k per grammar cell and level, and the fitted exponents."""
    from rhmscale.cli.tables import exponent_table, p_star_table
    from rhmscale.report.export import fit_summary

    collection, result = fit_runs(path, fit)
    console = make_console()
    console.print(p_star_table(result))
    require_exponents(result)
    console.print(exponent_table(result))
    console.print(fit_summary(result))
    if show_robustness:
        from rhmscale.cli.tables import robustness_table
        from rhmscale.report.export import robustness_summary
        from rhmscale.results.robustness import robustness

        table = robustness(collection.frame, fit, baseline=result)
        console.print(robustness_table(table, fit))
        console.print(robustness_summary(table, fit))


@fit_options
def export_command(
    path: RunsArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md, csv, tex or json.")] = "md",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: print). A CSV file holds one table: CSV of both "
            "tables writes two files beside it, table.csv -> table-exponents.csv and "
            "table-p_star.csv (--table p_star writes table.csv itself).",
        ),
    ] = None,
    table: Annotated[
        list[str] | None, typer.Option(help="exponents and/or p_star (default both).")
    ] = None,
    *,
    fit: FitOptions,
) -> None:
    """The P*_k and exponent tables as Markdown, CSV, LaTeX (booktabs) or JSON."""
    from rhmscale.report.export import TABLES, check_format, render

    tables = tuple(table or TABLES)
    check_format(fmt, tables)
    if output is not None:
        check_output_file(output)
    _, result = fit_runs(path, fit)
    if "exponents" in tables:
        require_exponents(result)
    texts = render(result, fmt, tables)
    if output is None:
        for name, text in texts.items():
            typer.echo((f"# {name}\n" if name else "") + text)
        return
    from rhmscale.store.atomic import atomic_write_text

    written = []
    for name, text in texts.items():
        target = output.with_name(f"{output.stem}-{name}{output.suffix}") if name else output
        with writing(target):
            atomic_write_text(target, text)
        written.append(str(target))
    if len(written) == 1:
        make_console().print(f"wrote {written[0]}")
    else:  # not the file asked for: say so
        make_console().print(
            f"wrote {' and '.join(written)}, one file per table (a CSV file holds one table); "
            f"not {output}: give --table exponents or --table p_star for one file"
        )


@fit_options
def plot_command(
    path: RunsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the PNGs.")] = Path(
        "figures"
    ),
    *,
    fit: FitOptions,
) -> None:
    """PNG figures: accuracy per level against P, the collapse, P*_k against theory, coherence."""
    from rhmscale.report.plots import write_figures

    collection, result = fit_runs(path, fit)
    with writing(output):
        for figure in write_figures(collection.frame, result, output):
            make_console().print(f"wrote {figure}")


@fit_options
def report_command(
    path: RunsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("report"),
    wandb: Annotated[
        str | None,
        typer.Option(
            help="Log the report as a W&B summary run: auto, online, offline, disabled.",
            callback=check_wandb_mode,
        ),
    ] = None,
    *,
    fit: FitOptions,
) -> None:
    """One folder: report.md with tables, figures, the sweep spec, code version, run counts."""
    from rhmscale.report.report import write_report
    from rhmscale.sweeps.status import sweep_context

    collection, result = fit_runs(path, fit)
    context = sweep_context(path)
    if context is None:  # a plain folder of runs: what the collection found
        title = " + ".join(p.name for p in path)
        counts, spec_text, tracking = collection.counts(), None, {}
    else:
        title, counts = context.title, context.counts
        spec_text, tracking = context.spec_text, context.tracking
    mode = wandb or tracking.get("wandb", "disabled")
    with writing(output):
        written = write_report(
            collection,
            result,
            output,
            title=title,
            counts=counts,
            spec_text=spec_text,
            wandb=None if mode == "disabled" else {**tracking, "mode": mode},
        )
    make_console().print(f"wrote {written.markdown} and {len(written.figures)} figures")
    if written.wandb_run:
        make_console().print(f"W&B summary run: {written.wandb_run}")


def register(app: typer.Typer) -> None:
    app.command("collect")(collect)
    app.command("fit")(fit_command)
    app.command("export")(export_command)
    app.command("plot")(plot_command)
    app.command("report")(report_command)
