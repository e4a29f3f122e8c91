"""A study's figures for `tune report`: Optuna's (optimisation history, parameter importances,
parallel coordinates) with the objective named and what they cannot show said, and each trial's
learning curve.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from rhmscale.tuning.spec import StudySpec
from rhmscale.tuning.study import level_key
from rhmscale.tuning.worker import history_of

State = optuna.trial.TrialState


def objective_words(spec: StudySpec) -> tuple[str, str]:
    """What a trial's value is: a short name for axes, and in full words for titles (Optuna's
    figures say 'Objective Value')."""
    from rhmscale.report.plot_kit import metric_words

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


def varied_together(study: optuna.Study) -> tuple[list[list[str]], list[str]]:
    """The parameters of the complete trials in groups that no trial tells apart: each value of
    one goes with one value of the others (a pack's shape keys, one pack per shape), so an
    importance cannot be shared out among them. Only parameters whose values repeat are grouped
    (all-distinct values, e.g. a learning rate, separate by their values). Also returns those
    with one value in every complete trial: nothing to measure."""
    trials = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
    frame = pd.DataFrame([t.params for t in trials]).astype(str)
    constant = [name for name in frame.columns if frame[name].nunique() == 1]
    groups: list[list[str]] = []
    for name in frame.columns.drop(constant):
        distinct = frame[name].nunique()
        for group in groups:
            pairs = len(frame[[group[0], name]].drop_duplicates())
            if distinct < len(frame) and pairs == frame[group[0]].nunique() == distinct:
                group.append(name)
                break
        else:
            groups.append([name])
    return groups, constant


def plot_importances(study: optuna.Study, target_name: str) -> Any:
    """Optuna's importances over the complete trials (pruned and failed ones are not used),
    one bar for each group of parameters that varied together; those that did not vary are
    named under the axis."""
    from optuna.visualization import matplotlib as ov

    groups, constant = varied_together(study)
    if len(groups) < 2:
        raise ValueError("one group of parameters: nothing to compare")
    label = {g[0]: " + ".join(g) + " (varied together)" for g in groups if len(g) > 1}
    axes = ov.plot_param_importances(study, params=[g[0] for g in groups], target_name=target_name)
    axes.set_yticklabels([label.get(t.get_text(), t.get_text()) for t in axes.get_yticklabels()])
    n = len(study.get_trials(deepcopy=False, states=(State.COMPLETE,)))
    note = f"\none value in all of them: {', '.join(constant)}" if constant else ""
    axes.set_xlabel(f"{axes.get_xlabel()} (from the {n} complete trials){note}")
    return axes


def plot_one_parameter(study: optuna.Study, target_name: str) -> Any:
    """In place of parallel coordinates for a study of one parameter (Optuna's draws two axes
    joined by lines, the best or worst one in its colour map's white, and flat where the value
    did not vary): each complete trial's value against the parameter, a point each."""
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
    if not trials:
        raise ValueError("no complete trial")
    (name,) = {n for t in trials for n in t.params}
    values = [t.params[name] for t in trials]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if numeric:
        x = [float(v) for v in values]
        if getattr(trials[0].distributions[name], "log", False):
            ax.set_xscale("log")
    else:  # categories at 0, 1, ...: a strip each
        names = sorted({str(v) for v in values})
        x = [names.index(str(v)) for v in values]
        ax.set_xticks(range(len(names)), names)
    ax.scatter(x, [t.value for t in trials], s=30, color="tab:blue", alpha=0.8, zorder=3,
               label=f"{len(trials)} complete trials")  # fmt: skip
    title = "One parameter: each trial's value against it (no parallel coordinates)"
    ax.set(xlabel=name, ylabel=target_name, title=title)
    ax.grid(True, alpha=0.3)
    return ax


def study_figures(
    study: optuna.Study,
    folder: Path,
    stem: str,
    words: tuple[str, str],
    cap: float | None = None,
) -> list[Path]:
    """Optuna's matplotlib figures, their objective named (`words`: short, full); one that needs
    more trials than there are is left out, and so are importances of one parameter (1.0).
    `cap`: the samples cap of samples_to_learn, drawn in the history (above it: not learned)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    plots = {
        "history": ov.plot_optimization_history,
        "importances": plot_importances,
        "parallel": ov.plot_parallel_coordinate,
    }
    params = {name for t in study.get_trials(deepcopy=False) for name in t.distributions}
    if len(params) < 2:
        del plots["importances"]
        plots["parallel"] = plot_one_parameter
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
        if name == "history" and cap is not None:
            # Values above the cap are scores of trials that did not learn, not samples.
            top.axhline(cap, ls=":", color="black", lw=1,
                        label=f"samples cap {cap:,.0f}:\nabove it, not learned")  # fmt: skip
            # Below the axes, in columns: beside them it took a third of the figure's width.
            # A long objective name is wrapped: the legend and y label stay within the axes.
            handles, labels = top.get_legend_handles_labels()
            labels = [textwrap.fill(" ".join(t.split()), 36) for t in labels]
            top.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                       ncol=3, fontsize=9)  # fmt: skip
            top.set_ylabel(textwrap.fill(top.get_ylabel(), 40))
            figure.set_size_inches(9, 5.4)
        if name == "parallel":  # one axis per parameter: room for their tick labels
            figure.set_size_inches(max(6.4, 1.5 * (len(params) + 1)), 5.2)
        path = folder / f"{stem}-{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def curves_figure(
    study: optuna.Study, spec: StudySpec, runs: Path, path: Path, best: int | None
) -> Path | None:
    """Each trial's objective metric against the samples it saw (the best trial bold, enqueued
    ones, e.g. the recipe in use, dashed, pruned ones grey: they end where they were stopped,
    not where they learned; with samples_to_learn the threshold): how the trials learned, not
    just where they ended. None when no trial has recorded an evaluation yet."""
    import matplotlib.pyplot as plt

    from rhmscale.report.plot_kit import metric_words

    goal = spec.objective.samples_to_learn
    metric = level_key(goal) if goal is not None else spec.objective.metric
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn, pruned = 0, None
    for t in study.get_trials(deepcopy=False):
        rows = pd.DataFrame(history_of(runs / str(t.user_attrs.get("run_id"))))
        if metric not in rows:
            continue
        # the spec's enqueued recipes (a pack's later trials are enqueued too, by shape only)
        enqueued = any(all(t.params.get(k) == v for k, v in e.items()) for e in spec.enqueue)
        style = {"lw": 0.9, "alpha": 0.5, "color": "tab:blue", "label": None, "zorder": 2}
        if t.state == State.PRUNED:
            style |= {"color": "0.55", "label": None if pruned else "pruned", "zorder": 1}
            pruned = True
        if enqueued:
            style |= {"ls": "--", "alpha": 0.9, "label": f"enqueued: trial {t.number}"}
        if t.number == best:
            style |= {"lw": 2.4, "alpha": 1, "color": "tab:red", "label": f"best: trial {t.number}",
                      "zorder": 3}  # fmt: skip
        ax.plot(rows["samples_seen"], rows[metric], **style)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if goal is not None:
        ax.axhline(goal["threshold"], ls=":", color="black", lw=1, label="threshold")
    ax.set(xscale="log", xlabel="samples seen (sequences)", ylabel=metric_words(metric),
           title=f"{study.study_name}: {drawn} trials")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
