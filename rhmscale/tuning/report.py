"""`rhmscale tune report`: per study its best parameters, its trials, and Optuna's figures
(optimisation history, parameter importances, parallel coordinates); report.md, trials.csv,
best.json (what `sweep submit --params-from` reads) and one W&B summary run.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from rhmscale.store.atomic import atomic_write_text
from rhmscale.tuning.dispatch import load_folder
from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import Cell, best_trial, level_key, read_studies, samples_cap
from rhmscale.tuning.worker import history_of

BEST_FILE = "best.json"


@dataclass
class StudyReport:
    name: str
    cell: dict[str, Any]  # the cell's grid values ({} for one shared study)
    trials: pd.DataFrame
    best: dict[str, Any] | None  # {"number", "value", "params", "run_id"}
    figures: list[Path]


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


def objective_words(spec: StudySpec) -> tuple[str, str]:
    """What a trial's value is: a short name for axes, and in full words for titles (Optuna's
    figures say 'Objective Value')."""
    from rhmscale.results.plot_kit import metric_words

    goal = spec.objective.samples_to_learn
    if goal is not None:
        level = int(goal["level"])
        words = metric_words(level_key(goal))
        return (
            f"samples to learn level {level}",
            f"samples seen until {words}, reaches {goal['threshold']:g}\n"
            "(a trial that never does: 1 to 2 times the samples cap)",
        )
    words = metric_words(str(spec.objective.metric))
    return words, f"{words}, {spec.objective.direction}d"


def name_the_objective(figure: Any, words: str) -> None:
    """Optuna's 'Objective Value' (axis labels, legends, colour bars) replaced by `words`."""
    for text in figure.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "set_text")):
        if "Objective Value" in text.get_text():
            text.set_text(text.get_text().replace("Objective Value", words))


def study_figures(
    study: optuna.Study, folder: Path, stem: str, words: tuple[str, str]
) -> list[Path]:
    """Optuna's matplotlib figures, their objective named (`words`: short, full); one that needs
    more trials than there are is left out, and so are importances of one parameter (1.0)."""
    from optuna.visualization import matplotlib as ov

    plots = {
        "history": ov.plot_optimization_history,
        "importances": ov.plot_param_importances,
        "parallel": ov.plot_parallel_coordinate,
    }
    params = {name for t in study.get_trials(deepcopy=False) for name in t.distributions}
    if len(params) < 2:
        del plots["importances"]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks these experimental
            try:
                axes = plot(study, target_name=words[0])
            except (ValueError, RuntimeError):  # e.g. importances of fewer than 2 trials
                continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        name_the_objective(figure, words[0])
        top = figure.axes[0]
        loc = next((at for at in ("center", "left", "right") if top.get_title(at)), "center")
        top.set_title(f"{top.get_title(loc)}\nvalue: {words[1]}", loc=loc, fontsize=10)
        if name == "parallel":  # one axis per parameter: room for their tick labels
            figure.set_size_inches(max(6.4, 1.5 * (len(params) + 1)), 5.2)
        path = folder / f"{stem}-{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
        written.append(path)
    return written


def curves_figure(
    study: optuna.Study, spec: StudySpec, runs: Path, path: Path, best: int | None
) -> Path | None:
    """Each trial's objective metric against the samples it saw (the best trial bold, enqueued
    ones, e.g. the recipe in use, dashed; with samples_to_learn the threshold): how the trials
    learned, not just where they ended. None when no trial has recorded an evaluation yet."""
    import matplotlib.pyplot as plt

    goal = spec.objective.samples_to_learn
    metric = level_key(goal) if goal is not None else spec.objective.metric
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = 0
    for t in study.get_trials(deepcopy=False):
        rows = pd.DataFrame(history_of(runs / str(t.user_attrs.get("run_id"))))
        if metric not in rows:
            continue
        # the spec's enqueued recipes (a pack's later trials are enqueued too, by shape only)
        enqueued = any(all(t.params.get(k) == v for k, v in e.items()) for e in spec.enqueue)
        top = t.number == best
        style = {"lw": 0.9, "alpha": 0.5, "color": "tab:blue", "label": None}
        if enqueued:
            style |= {"ls": "--", "alpha": 0.9, "label": f"enqueued: trial {t.number}"}
        if top:
            style |= {"lw": 2.4, "alpha": 1, "color": "tab:red", "label": f"best: trial {t.number}"}
        ax.plot(rows["samples_seen"], rows[metric], **style)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if goal is not None:
        ax.axhline(goal["threshold"], ls=":", color="black", lw=1, label="threshold")
    from rhmscale.results.plot_kit import metric_words

    ax.set(xscale="log", xlabel="samples seen (sequences)", ylabel=metric_words(metric),
           title=f"{study.study_name}: {drawn} trials")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


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
        figures = study_figures(study, out / "figures", f"study{i}", words) if best else []
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
            )  # fmt: skip
        )
    return reports


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
        if len(r.trials):
            lines += [markdown_table(r.trials), ""]
        lines += [f"![{f.stem}]({f.relative_to(out)})" for f in r.figures] + [""]
    lines += ["## Study spec", "", f"```yaml\n{spec_text.rstrip()}\n```", ""]
    return "\n".join(lines)


def write_tune_report(path: Path, out: Path, wandb_mode: str | None = None) -> Path:
    from rhmscale.results.report import log_summary_run

    out = Path(out)
    folder, spec = load_folder(path)
    reports = study_reports(path, out)
    spec_text = (folder.path / "study.yaml").read_text()
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
