"""One folder that tells a sweep's result: report.md with its tables and figures, the tables as
CSV/LaTeX/JSON, the sweep spec, the code version and how many runs are in which state; and the
same tables and figures as one W&B summary run in the sweep's group.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rhmscale import __version__
from rhmscale.report.export import fit_summary, markdown, number, render, robustness_markdown, size
from rhmscale.results.cells import SIZE
from rhmscale.results.collect import Collection
from rhmscale.results.fit import FitResult
from rhmscale.results.robustness import robustness
from rhmscale.store.atomic import atomic_write_text


@dataclass
class Written:
    markdown: Path
    figures: list[Path]
    wandb_run: str | None  # the summary run's folder (offline) or URL (online)


def code_version() -> str:
    """rhmscale's version and, from a git checkout, its commit (+dirty)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"rhmscale {__version__}" + (f" (git {commit})" if commit else "")


def counts_table(counts: dict[str, int]) -> str:
    lines = ["| state | runs |", "|---|---:|"]
    lines += [f"| {state} | {n} |" for state, n in counts.items() if n]
    return "\n".join(lines)


def coherence_markdown(result: FitResult) -> str:
    if result.coherence.empty:
        return "No coherence length recorded."
    lines = ["| cell | sizes | exponent | prefactor | R² |", "|---|---:|---:|---:|---:|"]
    for row in result.coherence.itertuples():
        lines.append(
            f"| {row.cell} | {row.n_sizes} | {number(row.exponent)} | {number(row.prefactor, 2)} "
            f"| {number(row.r2)} |"
        )
    return "\n".join(lines)


def time_markdown(result: FitResult) -> str:
    times = result.time_crossings
    if times.empty:
        return "No training-time crossings (runs need several evaluations)."
    lines = ["| cell | P | k | samples seen at crossing |", "|---|---:|---:|---:|"]
    for _, row in times.iterrows():
        bound = {"below": "≤ ", "above": "> "}.get(row["censored"], "")
        shown = bound + size(row["samples_star"])
        lines.append(f"| {row['cell']} | {row[SIZE]} | {row['k']} | {shown} |")
    return "\n".join(lines)


def report_markdown(
    title: str,
    collection: Collection,
    result: FitResult,
    figures: list[Path],
    counts: dict[str, int],
    spec_text: str | None,
    variants: pd.DataFrame | None = None,
) -> str:
    """variants: robustness()'s table, None when the baseline has no exponents to vary."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    options = "\n".join(f"- {k}: `{v}`" for k, v in vars(result.options).items() if v != "")
    sections = [
        f"# {title}",
        f"Generated {when} by {code_version()}.",
        "## Runs",
        counts_table(counts),
        f"Collected: {collection.summary()}.",
        "## Exponents of the sample complexity",
        markdown(result, ("exponents",)) if result.exponents.size else fit_summary(result),
        "## Robustness of the exponents",
        "No exponents to refit."
        if variants is None
        else robustness_markdown(variants, result.options).rstrip(),
        "## Sample complexity P*_k per cell and level",
        markdown(result, ("p_star",)),
        "## Figures",
        *[f"![{f.stem}](figures/{f.name})" for f in figures],
        "## Coherence length against P (power law per cell)",
        coherence_markdown(result),
        "## Training time to learn each level",
        time_markdown(result),
        "## Fit options",
        options,
    ]
    if spec_text:
        sections += ["## Sweep spec", f"```yaml\n{spec_text.rstrip()}\n```"]
    return "\n\n".join(sections) + "\n"


def write_report(
    collection: Collection,
    result: FitResult,
    folder: Path,
    *,
    title: str,
    counts: dict[str, int],
    spec_text: str | None = None,
    wandb: dict[str, Any] | None = None,
) -> Written:
    """wandb: None for no W&B run, else {"mode", "project", "entity", "group"}."""
    from rhmscale.report.plots import write_figures

    folder = Path(folder)
    figures = write_figures(collection.frame, result, folder / "figures")
    tables = folder / "tables"
    for fmt, suffix in (("csv", "csv"), ("tex", "tex"), ("json", "json"), ("md", "md")):
        wanted = (
            ("p_star",) if result.exponents.empty and fmt != "json" else ("exponents", "p_star")
        )
        for name, text in render(result, fmt, wanted).items():
            atomic_write_text(tables / f"{name or 'fit'}.{suffix}", text)
    variants = None
    if not result.exponents.empty:
        variants = robustness(collection.frame, result.options, baseline=result)
        atomic_write_text(tables / "robustness.csv", variants.to_csv(index=False))
    if spec_text:
        atomic_write_text(folder / "sweep.yaml", spec_text)
    report = folder / "report.md"
    atomic_write_text(
        report, report_markdown(title, collection, result, figures, counts, spec_text, variants)
    )
    files = [report] + ([folder / "sweep.yaml"] if spec_text else [])
    run = log_to_wandb(result, figures, folder, title, wandb, variants, files) if wandb else None
    return Written(report, figures, run)


def log_to_wandb(
    result: FitResult,
    figures: list[Path],
    folder: Path,
    title: str,
    settings: dict[str, Any],
    variants: pd.DataFrame | None = None,
    files: list[Path] | None = None,
) -> str | None:
    """The tables and figures as one W&B run (job_type "report") in the sweep's group, with
    report.md, the spec and the code version: the exponents and their intervals are summary
    keys (report/exponent/<term>, .../lo, .../hi), columns of the project's runs table in which
    two sweeps' report runs stand side by side."""
    stats = result.to_dict()["stats"]
    summary = {f"report/{k}": v for k, v in stats.items() if v is not None}
    for r in result.exponents.itertuples():
        term = f"report/exponent/{r.term}"
        summary |= {term: r.estimate, f"{term}/lo": r.lo, f"{term}/hi": r.hi}
    summary["report/code_version"] = code_version()
    return log_summary_run(
        {
            "exponents": result.exponents,
            "p_star": result.crossings,
            "robustness": pd.DataFrame() if variants is None else variants,
        },
        figures,
        summary,
        folder,
        title,
        settings | {"job_type": "report", "config": vars(result.options)},
        files,
    )


def log_summary_run(
    tables: dict[str, pd.DataFrame],
    figures: list[Path],
    summary: dict[str, Any],
    folder: Path,
    title: str,
    settings: dict[str, Any],
    files: list[Path] | None = None,
) -> str | None:
    """One W&B run holding tables, figures, a summary and `files` (a report's, a study's);
    settings: mode, project, entity, group, job_type, config. Where it went (URL or folder),
    or None."""
    from rhmscale.store.wandb_mirror import resolve_mode

    mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled":
        return None
    import wandb

    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.get("project", "rhmscale"),
        entity=settings.get("entity"),
        group=settings.get("group"),
        job_type=settings.get("job_type", "report"),
        name=f"{title} ({settings.get('job_type', 'report')})",
        dir=str(folder),
        mode=mode,
        config=settings.get("config", {}),
        settings=wandb.Settings(silent=True, console="off"),
        reinit="create_new",
    )
    try:
        for name, frame in tables.items():
            if not frame.empty:
                run.log({f"report/{name}": wandb.Table(dataframe=pd.DataFrame(frame))})
        run.log({f"report/{f.stem}": wandb.Image(str(f)) for f in figures})
        run.summary.update(summary)
        for path in files or []:  # the run's folder is uploaded whole at its end
            shutil.copyfile(path, Path(run.dir) / path.name)
        location = run.url if mode == "online" else str(Path(run.dir).parent)
    finally:
        run.finish()
    return location
