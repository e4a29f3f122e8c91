"""`rhmscale tune report`: per study its best parameters, its trials, and Optuna's figures
(optimisation history, parameter importances, parallel coordinates); report.md, trials.csv,
best.json (what `sweep submit --params-from` reads) and one W&B summary run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from rhmscale.store.atomic import atomic_write_text
from rhmscale.store.reading import read_text
from rhmscale.tuning.dispatch import load_folder
from rhmscale.tuning.figures import curves_figure, objective_words, study_figures
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import Cell, best_trial, read_studies, samples_cap

BEST_FILE = "best.json"


@dataclass
class StudyReport:
    name: str
    cell: dict[str, Any]  # the cell's grid values ({} for one shared study)
    trials: pd.DataFrame
    best: dict[str, Any] | None  # {"number", "value", "params", "run_id"}
    figures: list[Path]
    reading: list[str]  # what its values and columns mean, for the report's reader


def trials_frame(study: optuna.Study, spec: StudySpec, cell: Cell) -> pd.DataFrame:
    """One row per trial; with samples_to_learn, whether it learned the level (its value is
    then samples seen, else a score above the most samples a trial can see)."""
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "evaluations": len(t.intermediate_values),
            "seconds": t.duration.total_seconds() if t.duration else None,
            "run_id": t.user_attrs.get("run_id"),
            **t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    frame = pd.DataFrame(rows)
    goal = spec.objective.samples_to_learn
    if goal is not None and len(frame):
        learned = frame["value"] <= samples_cap(spec, cell)
        frame.insert(3, f"learned l{int(goal['level'])}", learned.where(frame["value"].notna()))
    return frame


def study_reports(path: Path, out: Path) -> list[StudyReport]:
    folder, spec = load_folder(path)
    reports = []
    for i, (cell, study) in enumerate(read_studies(folder.path, spec)):
        if study is None:  # not created yet: no trials
            continue
        t, best = best_trial(study), None
        if t is not None:
            best = {"number": t.number, "value": t.value, "params": t.params,
                    "run_id": t.user_attrs.get("run_id")}  # fmt: skip
        words = objective_words(spec)
        cap = samples_cap(spec, cell) if spec.objective.samples_to_learn else None
        figures = study_figures(study, out / "figures", f"study{i}", words, cap) if best else []
        curves_path = out / "figures" / f"study{i}-curves.png"
        curves = curves_figure(study, spec, folder.path / "runs", curves_path, t and t.number)
        figures += [curves] if curves else []
        reports.append(
            StudyReport(
                cell.study_name,
                cell.point.values if spec.per_cell else {},
                trials_frame(study, spec, cell),
                best,
                figures,
                reading_notes(spec, cell, cap),
            )  # fmt: skip
        )
    return reports


def reading_notes(spec: StudySpec, cell: Cell, cap: float | None) -> list[str]:
    """What a reader of the trials table could take wrongly: a score read as samples, the
    evaluation grid read as precision, a pack's time read as one trial's."""
    notes = []
    goal = spec.objective.samples_to_learn
    if goal is not None:
        every = cell.point.config.eval.every
        when = f"every {every} steps" if every else "log-spaced"
        notes += [
            f"value: the samples seen at the first evaluation where level {int(goal['level'])} "
            f"reached {goal['threshold']:g} on novel samples; evaluations come "
            f"{when}, so values fall on that grid (steps x the trial's batch size) and two trials "
            "one evaluation apart may not differ.",
            f"A value above the samples cap, {cap:,.0f}, is not samples: the trial did not learn "
            "the level and scores cap x (2 - best accuracy / threshold).",
        ]
    if spec.executor.pack:
        notes.append("seconds: from a trial's start to its end; the trials of a pack train "
                     "together, so they share the pack's time.")  # fmt: skip
    return notes


def cell_text(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"  # NaN: empty
    return "" if value is None else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell_text(v) for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join([header, rule, *rows])


def markdown(title: str, reports: list[StudyReport], out: Path, spec_text: str) -> str:
    lines = [f"# Study {title}", ""]
    for r in reports:
        lines += [f"## {r.name}", ""]
        if r.best:
            params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                               for k, v in r.best["params"].items())  # fmt: skip
            lines += [f"Best: trial {r.best['number']}, value {r.best['value']:.4g} ({params}; "
                      f"run {r.best['run_id']}).", ""]  # fmt: skip
        else:
            lines += ["No trial has completed yet.", ""]
        counts = r.trials["state"].value_counts().to_dict() if len(r.trials) else {}
        lines += ["Trials: " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none"), ""]
        lines += [f"- {note}" for note in r.reading] + ([""] if r.reading else [])
        if len(r.trials):
            lines += [markdown_table(r.trials), ""]
        lines += [f"![{f.stem}]({f.relative_to(out)})" for f in r.figures] + [""]
    lines += ["## Study spec", "", f"```yaml\n{spec_text.rstrip()}\n```", ""]
    return "\n".join(lines)


def write_tune_report(path: Path, out: Path, wandb_mode: str | None = None) -> Path:
    from rhmscale.report.report import log_summary_run

    out = Path(out)
    folder, spec = load_folder(path)
    reports = study_reports(path, out)
    spec_text = read_text(folder.path / "study.yaml")  # read whole by load_folder
    best = {r.name: {"cell": r.cell, **(r.best or {})} for r in reports}
    atomic_write_text(out / BEST_FILE, json.dumps(best, indent=2, default=str) + "\n")
    trials = pd.concat([r.trials.assign(study=r.name) for r in reports], ignore_index=True)
    atomic_write_text(out / "trials.csv", trials.to_csv(index=False))
    report = out / "report.md"
    atomic_write_text(report, markdown(spec.name, reports, out, spec_text))
    tracking = spec.tracking
    log_summary_run(
        {"trials": trials.astype({c: str for c in trials.columns if trials[c].dtype == object})},
        [f for r in reports for f in r.figures],
        {f"best/{r.name}": r.best["value"] for r in reports if r.best},
        out,
        spec.name,
        {
            "mode": wandb_mode or tracking.get("wandb", "auto"),
            "project": tracking.get("project", "rhmscale"),
            "entity": tracking.get("entity"),
            "group": spec.name,
            "job_type": "tune-report",
            "config": {"study": spec.name},
        },
    )
    return report


def read_best(path: Path) -> dict[str, dict[str, Any]]:
    """Each study's cell and best parameters, straight from the journal (no report needed)."""
    folder, spec = load_folder(path)
    best = {}
    for cell, study in read_studies(folder.path, spec):
        trial = best_trial(study) if study else None
        if trial is not None:
            best[cell.study_name] = {
                "cell": cell.point.values if spec.per_cell else {},
                "params": trial.params,
            }
    return best
