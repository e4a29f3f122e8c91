"""What a reader reads off the figures, checked on their artists (not pixels): no label is cut
off, a legend names only what is drawn, cells are told apart, censored points cannot pass for
measured ones, and a fit through a saturating curve says so."""

import matplotlib.style
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rhmscale.report import plots
from rhmscale.report.plot_coherence import coherence_vs_p
from rhmscale.report.plot_kit import declutter_ticks, prepare
from rhmscale.report.plot_sample_complexity import p_star_vs_theory
from rhmscale.report.plot_training_time import time_to_learn
from rhmscale.results.cells import SIZE
from rhmscale.results.fit import FitOptions, fit
from tests.synthetic_sweep import CELLS, synthetic_frame

STEPS = tuple(np.geomspace(10, 10000, 8).astype(int))
NINE = [*CELLS, (8, 8), (16, 8), (32, 8)]


def sweep(n_cells: int, **options):
    frame = synthetic_frame(
        np.random.default_rng(0), cells=NINE[:n_cells], steps=STEPS, time_star=2e4
    )
    return frame, fit(frame, FitOptions(at="final", n_boot=30, **options))


@pytest.fixture(scope="module")
def plain():
    """Nothing censored in P (every level crosses 0.9 inside the sizes)."""
    return sweep(3)


@pytest.fixture(scope="module")
def censored():
    """Level 3 of a cell is not learned up to the largest P; many runs never learn in time."""
    return sweep(3, levels="1-2", threshold=0.96)


def outside(fig: Figure) -> list[str]:
    """The texts drawn (titles, axis labels, the tick labels in view, legends) that reach past
    the figure's edges."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [fig._suptitle, fig._supxlabel, fig._supylabel]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if lo * (1 - 1e-9) <= tick.get_loc() <= hi * (1 + 1e-9):
                    texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    found = [t for t in texts if t is not None and t.get_visible() and t.get_text()]
    found += legends(fig)
    box = fig.bbox.padded(0.5)
    return [
        getattr(t, "get_text", lambda: "legend")()
        for t in found
        if not box.contains(*t.get_window_extent(renderer).p0)
        or not box.contains(*t.get_window_extent(renderer).p1)
    ]


# 2 and 9 panels take 10 and 33 s on 2 cores: slow (make test-fast keeps the 1-panel case).
@pytest.mark.parametrize(
    "n_cells", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(9, marks=pytest.mark.slow)]
)
def test_no_label_reaches_past_the_figure(n_cells):
    data = prepare(*sweep(n_cells))
    # ggplot: the style Optuna's figures leave behind in a process that drew them (larger text)
    for style in ("default", "ggplot"):
        with matplotlib.style.context(style):
            for name, draw in plots.FIGURES.items():
                fig = draw(data)
                declutter_ticks(fig)
                assert not outside(fig), f"{name}, {n_cells} panels, {style}: {outside(fig)}"


def legends(fig: Figure) -> list:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def grey(color) -> bool:
    r, g, b = to_rgb(color)
    return r == g == b


def hollow(line: Line2D) -> bool:
    face = line.get_markerfacecolor()
    return isinstance(face, str) and face.lower() == "none"


def has_marker(line: Line2D) -> bool:
    return line.get_marker() not in (None, "", " ", "None", "none")


def shown_by(handle, fig: Figure) -> bool:
    """Whether an artist with data on the axes looks like the legend entry: its colour (unless
    grey, the colour of 'any'), its marker and hollowness, or without a marker its line style."""
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
    if isinstance(handle, Collection):  # an errorbar's entry: its bars, of the points' colour
        color = to_rgb(handle.get_color()[0])
        return any(color == to_rgb(li.get_color()) and has_marker(li) for li in lines)
    if isinstance(handle, Patch):
        color = to_rgb(handle.get_facecolor())
        if grey(color):  # a band of no colour in particular: some filled area
            return any(isinstance(c, Collection) for ax in fig.axes for c in ax.collections)
        return any(color in (to_rgb(li.get_color()), to_rgb(li.get_mec())) for li in lines)
    for line in lines:
        if not grey(handle.get_color()) and to_rgb(handle.get_color()) not in (
            to_rgb(line.get_color()),
            to_rgb(line.get_mec()),
        ):
            continue
        if has_marker(handle):
            if grey(handle.get_color()) and line.get_marker() != handle.get_marker():
                continue
            if hollow(handle) != hollow(line) and grey(handle.get_color()):
                continue
        elif line.get_linestyle() != handle.get_linestyle():
            continue
        return True
    return False


def check_legends(fig: Figure, name: str) -> list[str]:
    labels = []
    for legend in legends(fig):
        for handle, text in zip(legend.legend_handles, legend.texts, strict=True):
            assert shown_by(handle, fig), f"{name}: {text.get_text()!r} is not drawn"
            labels.append(text.get_text())
    return labels


def test_legends_name_only_what_is_drawn(plain, censored):
    for frame, result in (plain, censored):
        data = prepare(frame, result)
        for name, draw in plots.FIGURES.items():
            check_legends(draw(data), name)
    frame, result = plain
    assert (result.crossings["censored"] == "").all()
    data = prepare(frame, result)
    for draw in (plots.FIGURES["accuracy_vs_P.png"], p_star_vs_theory):
        labels = " ".join(check_legends(draw(data), "plain"))
        assert "censored" not in labels and "P_max" not in labels and "P_min" not in labels


def point_artists(fig: Figure, gid: str) -> list[Line2D]:
    return [line for line in fig.axes[0].get_lines() if line.get_gid() == gid]


def test_p_star_gives_each_cell_a_colour_and_draws_censored_points_hollow_beyond_the_bound(
    censored,
):
    frame, result = censored
    data = prepare(frame, result)
    fig = p_star_vs_theory(data)
    cells = {h.get_label(): to_rgb(h.get_facecolor()) for h in fig.legends[0].legend_handles
             if isinstance(h, Patch)}  # fmt: skip
    assert sorted(cells) == sorted(data.cells)
    assert len(set(cells.values())) == len(cells)  # a colour each
    points = result.crossings
    measured = point_artists(fig, "measured")
    for row in points[points["censored"] == ""].itertuples():
        (line,) = [
            li for li in measured
            if np.isclose(li.get_xdata(), row.P_theory).any()
            and np.isclose(li.get_ydata(), row.P_star).any()
            and to_rgb(li.get_color()) == cells[row.cell]
        ]  # fmt: skip
        assert not hollow(line)
    marks = point_artists(fig, "censored")
    drawn = [
        (x, y, li) for li in marks for x, y in zip(li.get_xdata(), li.get_ydata(), strict=True)
    ]
    bounds = points[points["censored"] != ""]
    assert len(drawn) == len(bounds) > 0
    for row in bounds.itertuples():
        (x, y, line), = [d for d in drawn if np.isclose(d[0], row.P_theory)
                         and to_rgb(d[2].get_mec()) == cells[row.cell]]  # fmt: skip
        assert hollow(line)
        # beyond its bound, the way the truth lies: never on the bound (nor on the theory)
        assert (y > 1.2 * row.P_star) if row.censored == "above" else (y < row.P_star / 1.2)
        assert line.get_marker() == ("^" if row.censored == "above" else "v")
    labels = [t.get_text() for t in fig.legends[0].texts]
    assert any(t.startswith("> P_max: not learned up to the largest P") for t in labels)
    assert not any(t.startswith("≤ P_min") for t in labels)  # none is censored below


def test_time_to_learn_names_runs_never_learned_and_draws_them_hollow_above_their_bound(
    censored,
):
    frame, result = censored
    data = prepare(frame, result)
    fig = time_to_learn(data)
    times = result.time_crossings
    never = times[times["censored"] == "above"]
    assert len(never) > 0
    marks = [(li, x, y) for ax in fig.axes for li in ax.get_lines() if li.get_gid() == "censored"
             for x, y in zip(li.get_xdata(), li.get_ydata(), strict=True)]  # fmt: skip
    assert len(marks) == (times["censored"] != "").sum()
    for _, row in never.iterrows():
        ax = fig.axes[data.cells.index(row["cell"])]
        found = [(li, y) for li, x, y in marks if li.axes is ax and np.isclose(x, row[SIZE])]
        assert found and all(hollow(li) and li.get_marker() == "^" for li, _ in found)
        assert any(y > row["samples_star"] for _, y in found)
    labels = check_legends(fig, "time_to_learn")
    assert any(t.startswith("not learned within training") for t in labels)
    every = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert not any("bar:" in t or "stacked" in t for t in every)


def test_the_coherence_fit_says_it_runs_through_a_saturating_curve(plain):
    frame, result = plain
    data = prepare(frame, result)
    fig = coherence_vs_p(data)
    title = fig.legends[0].get_title().get_text()
    assert "saturates at s^L" in title and "rise only" in title
    ceilings = [li for li in fig.axes[0].get_lines() if li.get_gid() == "saturation"]
    assert len(ceilings) == len(data.cells)
    for line in ceilings:
        assert set(line.get_ydata()) == {2.0**3}  # s^L of s=2, L=3
    check_legends(fig, "coherence_vs_P")
