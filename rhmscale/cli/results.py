"""Commands from finished runs to results: fit, export, plot, report.

All of them collect the runs of a sweep folder, fit, and then print, write or draw. Library
modules are imported inside the commands so that `rhmscale --help` does not import pandas.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rhmscale.cli.sweep import make_console
from rhmscale.errors import UserError

if TYPE_CHECKING:
    from rhmscale.results.collect import Collection
    from rhmscale.results.fit import FitResult

SweepArg = Annotated[
    Path, typer.Argument(help="A sweep folder <root>/<sweep> or a folder of runs.")
]
Threshold = Annotated[
    float, typer.Option(help="Accuracy at which a level counts as learned (0 < t < 1).")
]
At = Annotated[
    str,
    typer.Option(
        help="Evaluation used per run: best (lowest val/loss, before memorisation), final, "
        "or a training step."
    ),
]
Metric = Annotated[str, typer.Option(help="Per-level metric; {k} is the level.")]
Regressors = Annotated[
    str,
    typer.Option(
        help="Comma-separated regressors of log P*_k: log v, log m, k, k log m, "
        "(k+1) log m, log s, L."
    ),
]
Theory = Annotated[str, typer.Option(help="Predicted P_k, a formula in v, m, s, L, k.")]
Boot = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates.", min=50)]


def fit_sweep(
    path, threshold, at, metric, regressors, theory, n_boot
) -> tuple[Collection, FitResult]:
    """Collect, say what was skipped, fit."""
    from rhmscale.results.collect import collect
    from rhmscale.results.fit import FitOptions, fit

    collection = collect(path)
    console = make_console(stderr=True)
    console.print(f"[dim]{path}: {collection.summary()}[/]")
    if collection.frame.empty:
        raise UserError(f"no finished runs in {path} ({collection.summary()})")
    options = FitOptions(
        threshold=threshold,
        at=at,
        metric=metric,
        regressors=regressors,
        theory=theory,
        n_boot=n_boot,
    )
    return collection, fit(collection.frame, options)


def require_exponents(result: FitResult) -> None:
    if "fit_error" in result.stats:
        raise UserError(result.stats["fit_error"])


def fit_command(
    path: SweepArg,
    threshold: Threshold = 0.5,
    at: At = "best",
    metric: Metric = "gen/acc_l{k}",
    regressors: Regressors = "log v, (k+1) log m",
    theory: Theory = "v * m^(k+1)",
    n_boot: Boot = 1000,
) -> None:
    """Sample complexity P*_k per grammar cell and level, and the fitted exponents."""
    _, result = fit_sweep(path, threshold, at, metric, regressors, theory, n_boot)
    console = make_console()
    console.print(p_star_table(result))
    require_exponents(result)
    console.print(exponent_table(result))
    from rhmscale.results.export import fit_summary

    console.print(fit_summary(result))


def export_command(
    path: SweepArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md, csv, tex or json.")] = "md",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: print).")
    ] = None,
    table: Annotated[
        list[str] | None, typer.Option(help="exponents and/or p_star (default both).")
    ] = None,
    threshold: Threshold = 0.5,
    at: At = "best",
    metric: Metric = "gen/acc_l{k}",
    regressors: Regressors = "log v, (k+1) log m",
    theory: Theory = "v * m^(k+1)",
    n_boot: Boot = 1000,
) -> None:
    """The P*_k and exponent tables as Markdown, CSV, LaTeX (booktabs) or JSON."""
    from rhmscale.results.export import TABLES, check_format, render

    tables = tuple(table or TABLES)
    check_format(fmt, tables)
    _, result = fit_sweep(path, threshold, at, metric, regressors, theory, n_boot)
    if "exponents" in tables:
        require_exponents(result)
    texts = render(result, fmt, tables)
    if output is None:
        for name, text in texts.items():
            typer.echo((f"# {name}\n" if name else "") + text)
        return
    from rhmscale.store.atomic import atomic_write_text

    for name, text in texts.items():
        target = output.with_name(f"{output.stem}-{name}{output.suffix}") if name else output
        atomic_write_text(target, text)
        make_console().print(f"wrote {target}")


def plot_command(
    path: SweepArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the PNGs.")] = Path(
        "figures"
    ),
    threshold: Threshold = 0.5,
    at: At = "best",
    metric: Metric = "gen/acc_l{k}",
    regressors: Regressors = "log v, (k+1) log m",
    theory: Theory = "v * m^(k+1)",
    n_boot: Boot = 1000,
) -> None:
    """PNG figures: accuracy per level against P, the collapse, P*_k against theory, coherence."""
    from rhmscale.results.plots import write_figures

    collection, result = fit_sweep(path, threshold, at, metric, regressors, theory, n_boot)
    for figure in write_figures(collection.frame, result, output):
        make_console().print(f"wrote {figure}")


def report_command(
    path: SweepArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("report"),
    wandb: Annotated[
        str | None,
        typer.Option(help="Log the report as a W&B summary run: auto, online, offline, disabled."),
    ] = None,
    threshold: Threshold = 0.5,
    at: At = "best",
    metric: Metric = "gen/acc_l{k}",
    regressors: Regressors = "log v, (k+1) log m",
    theory: Theory = "v * m^(k+1)",
    n_boot: Boot = 1000,
) -> None:
    """One folder: report.md with tables, figures, the sweep spec, code version, run counts."""
    from rhmscale.results.report import write_report

    collection, result = fit_sweep(path, threshold, at, metric, regressors, theory, n_boot)
    title, counts, spec_text, tracking = sweep_context(path, collection)
    mode = wandb or tracking.get("wandb", "disabled")
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


def sweep_context(path: Path, collection) -> tuple[str, dict[str, int], str | None, dict]:
    """Title, run counts by state, spec text and tracking settings of a sweep folder; for a
    plain folder of runs, the counts come from the collection."""
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.spec import base_tree
    from rhmscale.sweeps.status import load_sweep_spec, sweep_status

    sweep = SweepDir(path)
    if not sweep.spec_file.exists():
        counts = {"done": int(collection.frame["run_id"].nunique())}
        counts.update({state: len(ids) for state, ids in collection.skipped.items()})
        return path.name, counts, None, {}
    spec = load_sweep_spec(sweep)
    status = sweep_status(path, spec)
    tracking = base_tree(spec)["tracking"]
    return f"Sweep {spec.name}", dict(status.counts), sweep.spec_file.read_text(), tracking


# --- rich tables ------------------------------------------------------------------------------


def p_star_table(result: FitResult):
    from rich.table import Table

    from rhmscale.results.export import number, p_star_frame, p_star_text, size

    table = Table(
        title=f"P*_k: {result.options.metric} crosses {result.options.threshold} "
        f"(evaluation: {result.options.at})"
    )
    for name in ("cell", "k", "P*_k", f"{result.options.ci:.0%} interval", "theory P_k", "ratio"):
        table.add_column(name, justify="left" if name == "cell" else "right")
    for _, row in p_star_frame(result).iterrows():
        value, interval = p_star_text(row)
        style = "yellow" if row["censored"] else None
        table.add_row(
            row["cell"], str(row["k"]), value, interval, size(row["P_theory"]),
            number(row["ratio"], 2), style=style,
        )  # fmt: skip
    return table


def exponent_table(result: FitResult):
    from rich.table import Table

    from rhmscale.results.export import exponent_frame, number

    table = Table(title="exponents of log P*_k")
    for name in ("term", "estimate", f"{result.options.ci:.0%} interval", "theory", "off by"):
        table.add_column(name, justify="left" if name == "term" else "right")
    for row in exponent_frame(result).itertuples():
        inside = row.off_by <= 1
        table.add_row(
            row.term,
            number(row.estimate),
            f"[{number(row.lo)}, {number(row.hi)}]",
            number(row.theory),
            f"[{'green' if inside else 'red'}]{number(row.off_by, 1)}[/]",
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_command)
    app.command("export")(export_command)
    app.command("plot")(plot_command)
    app.command("report")(report_command)
