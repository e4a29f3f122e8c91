"""plots: every figure is written, atomically, as a PNG that is not blank, also from sweeps
where a fit failed, a cell has one dataset size, there is one level or no training curve."""

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

import rhmscale.results
from rhmscale.report import plots
from rhmscale.report.plot_kit import (
    MAX_PANELS,
    declutter_ticks,
    metric_words,
    overlapping,
    prepare,
)
from rhmscale.report.plot_sample_complexity import accuracy_vs_p, p_star_vs_theory
from rhmscale.report.plots import write_figures
from rhmscale.results.fit import FitOptions, fit
from tests.synthetic_sweep import synthetic_frame

STEPS = tuple(np.geomspace(10, 10000, 8).astype(int))
NAMES = list(plots.FIGURES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def options(**kw) -> FitOptions:
    return FitOptions(at="final", n_boot=100, **kw)


@pytest.fixture(scope="module")
def sweep():
    frame = synthetic_frame(
        np.random.default_rng(0), cells=[(8, 2), (16, 2), (8, 4)], steps=STEPS, time_star=2e4
    )
    return frame, fit(frame, options())


def pixels(path: Path) -> np.ndarray:
    """RGB as 0..255 integers, one row per pixel."""
    image = imread(path)
    return np.round(image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)


def check_png(path: Path, *, coloured: bool) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path.name
    assert len(data) > 5_000, path.name
    rgb = pixels(path)
    ink = (rgb < 240).any(axis=1).mean()
    assert ink > 0.01, f"{path.name} is blank: {ink:.2%} non-white pixels"
    packed = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
    assert len(np.unique(packed)) > 30, f"{path.name} has almost no distinct colours"
    if coloured:  # data was drawn, not only axes and text
        saturated = (rgb.max(axis=1).astype(int) - rgb.min(axis=1)) > 60
        assert saturated.mean() > 0.0005, f"{path.name}: {saturated.mean():.3%} coloured pixels"


def check_folder(out: Path, paths: list[Path]) -> None:
    assert [p.name for p in paths] == NAMES
    assert all(p.parent == out for p in paths)
    # Atomic writes leave nothing but the finished files.
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)


@pytest.mark.slow
def test_every_figure_is_written_and_shows_data(sweep, tmp_path):
    frame, result = sweep
    assert not result.exponents.empty and not result.time_crossings.empty
    paths = write_figures(frame, result, tmp_path / "figures")
    check_folder(tmp_path / "figures", paths)
    for path in paths:
        check_png(path, coloured=True)


@pytest.mark.slow
def test_a_failed_exponent_fit_still_gives_every_figure(tmp_path):
    frame = synthetic_frame(np.random.default_rng(1), cells=[(8, 2), (16, 4)])
    # s is the same in every cell: the fit refuses the regressor and leaves no exponents.
    result = fit(frame, options(regressors="log v, (k+1) log m, log s"))
    assert result.exponents.empty and "log s" in result.stats["fit_error"]
    paths = write_figures(frame, result, tmp_path)
    check_folder(tmp_path, paths)
    for path in paths:
        check_png(path, coloured=True)


def test_one_cell_one_size_one_level_no_training_curve(tmp_path):
    frame = synthetic_frame(np.random.default_rng(2), cells=[(8, 2)], L=1, n_sizes=1)
    assert frame["data.P"].nunique() == 1 and frame["step"].nunique() == 1
    result = fit(frame, options())
    assert result.exponents.empty and (result.crossings["censored"] != "").all()
    result = dataclasses.replace(result, time_crossings=pd.DataFrame())
    paths = write_figures(frame, result, tmp_path)
    check_folder(tmp_path, paths)
    for path in paths:
        check_png(path, coloured=False)


def test_without_coherence_or_crossings(tmp_path):
    frame = synthetic_frame(np.random.default_rng(3), cells=[(16, 2)], steps=STEPS[-3:])
    frame = frame.drop(columns="gen/novel_coherence_length")
    result = fit(frame, options())
    assert result.coherence.empty
    result = dataclasses.replace(result, crossings=pd.DataFrame())
    paths = write_figures(frame, result, tmp_path)
    check_folder(tmp_path, paths)
    for path in paths:
        check_png(path, coloured=False)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(sweep, tmp_path, monkeypatch):
    frame, result = sweep
    old = tmp_path / NAMES[0]
    old.write_bytes(b"the previous figure")

    def broken(self, handle, **kw):
        handle.write(b"half a PNG")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_figures(frame, result, tmp_path)
    assert old.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == [old.name]


def test_panels_are_capped_and_the_title_says_so(sweep):
    frame, result = sweep
    many = pd.concat(
        [frame.assign(**{"grammar.v": frame["grammar.v"] + 100 * i}) for i in range(7)]
    )  # 21 cells
    data = prepare(many, result)
    assert data.n_cells == 21 and len(data.cells) == MAX_PANELS
    assert data.cells[:3] == ["v=8 m=2 s=2 L=3", "v=8 m=4 s=2 L=3", "v=16 m=2 s=2 L=3"]
    assert f"first {MAX_PANELS} of 21 cells" in data.title("Accuracy")


def test_plots_leave_pyplot_alone():
    code = "import sys, rhmscale.report.plots; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def imported_modules(path: Path) -> list[str]:
    """Absolute imports of a module, also those inside functions ("rhmscale.x" for `from
    rhmscale import x`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "rhmscale":
            names += [f"rhmscale.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def test_results_imports_flow_one_way():
    """results/ reads run folders and W&B logs: it never imports training, sweeps, the CLI,
    torch or Lightning, so it works wherever the runs' files are."""
    allowed = (
        "bounds",
        "config",
        "config_io",
        "errors",
        "formula",
        "labels",
        "sequences",
        "store",
        "results",
        "__version__",
    )
    folder = Path(rhmscale.results.__path__[0])
    modules = sorted(folder.glob("*.py"))
    assert len(modules) > 10
    for path in modules:
        for name in imported_modules(path):
            top, _, rest = name.partition(".")
            assert top not in ("torch", "lightning"), f"{path.name} imports {name}"
            if top == "rhmscale":
                assert rest.split(".")[0] in allowed, f"{path.name} imports {name}"


# --- what a reader reads off the figures ------------------------------------------------------


def texts(fig: Figure) -> list[str]:
    """Every title, axis label and annotation of a figure."""
    found = [fig.get_suptitle(), fig.get_supxlabel(), fig.get_supylabel()]
    for ax in fig.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        found += [t.get_text() for t in ax.texts]
    return [t for t in found if t]


def test_titles_and_labels_say_the_metric_in_words(sweep):
    frame, result = sweep
    data = prepare(frame, result)
    for name, draw in plots.FIGURES.items():
        for text in texts(draw(data)):
            assert "gen/" not in text, f"{name}: {text!r}"
    title = plots.FIGURES["accuracy_vs_P.png"](data).get_suptitle()
    assert title.startswith("Accuracy of novel samples, through level k")
    assert metric_words("gen/acc_l2") == "accuracy of samples (copies included), through level 2"
    assert metric_words("val/loss") == "val/loss"


def drawn(fig: Figure, gid: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]


def test_the_fitted_law_is_drawn_only_at_the_fitted_levels(sweep):
    frame, _ = sweep
    result = fit(frame, options(levels="2-"))
    fig = p_star_vs_theory(prepare(frame, result))
    (law,) = drawn(fig, "fitted law")
    points = result.crossings
    fitted = points[points["k"] >= 2]
    assert len(law.get_xdata()) == len(fitted) < len(points)
    assert sorted(law.get_xdata()) == sorted(fitted["P_theory"])
    assert "fitted law, levels 2-3" in [t.get_text() for t in fig.legends[0].texts]


def test_the_censored_count_in_the_text_is_the_count_drawn(sweep):
    frame, _ = sweep
    # A threshold the small sizes miss: level 3 is censored, and left out of the fit.
    result = fit(frame, options(levels="1-2", threshold=0.96))
    assert set(result.crossings.loc[result.crossings["censored"] != "", "k"]) == {3}
    n_censored = (result.crossings["censored"] != "").sum()
    assert n_censored > 0
    fig = p_star_vs_theory(prepare(frame, result))
    markers = sum(len(line.get_xdata()) for line in drawn(fig, "censored"))
    (table,) = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "exponent table"]
    said = sum(int(n) for n in re.findall(r"(\d+) censored", table))
    assert said == markers == n_censored
    measured = sum(int(n) for n in re.findall(r"(\d+) measured", table))
    assert measured == (result.crossings["censored"] == "").sum()  # as the fit counts points


def test_a_censored_crossing_sits_on_its_own_levels_curve(sweep):
    frame, _ = sweep
    result = fit(frame, options(threshold=0.96))
    fig = accuracy_vs_p(prepare(frame, result))
    markers = drawn(fig, "censored")
    assert markers
    for marker in markers:
        (x,), (y,) = marker.get_xdata(), marker.get_ydata()
        curves = [
            line
            for line in marker.axes.get_lines()
            if line.get_linestyle() == "-" and line.get_color() == marker.get_markeredgecolor()
        ]
        assert len(curves) == 1  # the curve of the marker's colour: its level
        cx, cy = (np.asarray(v, float) for v in curves[0].get_data())
        assert y == pytest.approx(np.interp(np.log(x), np.log(cx), cy))


def test_overlapping_tick_labels_are_left_out():
    fig = Figure(figsize=(1.2, 1.2), dpi=100)
    ax = fig.add_subplot()
    ax.set_xlim(1, 1e6)
    ax.set_xticks(np.geomspace(1, 1e6, 13))
    ax.set_xticklabels([f"{v:.0f}" for v in np.geomspace(1, 1e6, 13)])
    declutter_ticks(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert 1 < len(boxes) < 13
    assert not overlapping(boxes, vertical=False, pad=0)


def optuna_study(params: list[str]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: sum(t.suggest_float(p, 0, 1) ** 2 for p in params), n_trials=8)
    return study


@pytest.mark.parametrize("params", [["a"], ["a", "b"]])
def test_tuning_figures_name_the_objective_and_skip_a_lone_importance(
    params, tmp_path, monkeypatch
):
    from rhmscale.tuning.report import study_figures

    seen: list[str] = []
    original = Figure.savefig

    def recording(self, *args, **kw):
        seen.extend(t.get_text() for t in self.findobj(lambda a: hasattr(a, "get_text")))
        return original(self, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", recording)
    words = ("samples to learn level 3", "samples seen until ... reaches 0.5")
    paths = study_figures(optuna_study(params), tmp_path, "s", words)
    names = sorted(p.stem for p in paths)
    assert names == (["s-history", "s-parallel"] if len(params) == 1 else
                     ["s-history", "s-importances", "s-parallel"])  # fmt: skip
    assert not [t for t in seen if "Objective Value" in t]
    assert any(words[0] in t for t in seen) and any(words[1] in t for t in seen)
