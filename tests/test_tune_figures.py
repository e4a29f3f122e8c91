"""A study's figures say what their values are: confounded shape keys get one importance bar,
keys that did not vary are named, the history shows the samples cap, pruned curves are grey."""

import optuna
import pytest
from matplotlib.figure import Figure

from rhmscale.tuning.figures import varied_together


def pack_trials() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    shapes = [(128, 2), (256, 4), (128, 2), (512, 6)]
    for pack, (width, depth) in enumerate(shapes):
        for member in range(4):
            study.enqueue_trial({"model.width": width, "model.depth": depth, "model.heads": 4})
            trial = study.ask()
            trial.suggest_categorical("model.width", [128, 256, 512])
            trial.suggest_categorical("model.depth", [2, 4, 6])
            trial.suggest_categorical("model.heads", [4, 8])
            lr = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
            study.tell(trial, width / 128 + lr * 100 + member / 10 + pack / 100)
    return study


def test_keys_fixed_per_pack_are_grouped_and_a_constant_key_is_named():
    groups, constant = varied_together(pack_trials())
    assert sorted(map(sorted, groups)) == [["model.depth", "model.width"], ["train.lr"]]
    assert constant == ["model.heads"]


def test_pruned_trials_are_not_what_importances_are_computed_from():
    study = pack_trials()
    trial = study.ask(
        {
            "model.width": optuna.distributions.CategoricalDistribution([128, 256, 512]),
            "model.depth": optuna.distributions.CategoricalDistribution([2, 4, 6]),
            "model.heads": optuna.distributions.CategoricalDistribution([4, 8]),
            "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        }
    )
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    groups, constant = varied_together(study)  # the pruned trial's heads may be 8: not counted
    assert constant == ["model.heads"] and len(groups) == 2


@pytest.fixture
def texts(monkeypatch):
    seen: dict[str, list[str]] = {}
    original = Figure.savefig

    def recording(self, path, *args, **kw):
        seen[str(path)] = [t.get_text() for t in self.findobj(lambda a: hasattr(a, "get_text"))]
        return original(self, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", recording)
    return seen


def test_importances_give_keys_varied_together_one_bar_and_history_shows_the_cap(tmp_path, texts):
    from rhmscale.tuning.figures import study_figures

    words = ("samples to learn level 3", "samples seen until ... reaches 0.5")
    paths = study_figures(pack_trials(), tmp_path, "s", words, cap=4_096_000)
    importances = texts[str(tmp_path / "s-importances.png")]
    assert "model.width + model.depth (varied together)" in importances
    assert not [t for t in importances if t in ("model.width", "model.depth", "model.heads")]
    assert any("one value in all of them: model.heads" in t for t in importances)
    assert any("from the 16 complete trials" in t for t in importances)
    history = texts[str(tmp_path / "s-history.png")]
    assert any("samples cap 4,096,000" in t for t in history)
    assert len(paths) == 3


@pytest.fixture
def figures(monkeypatch):
    """The figures study_figures saves, by file name, drawn as saved (tight bounding box)."""
    seen: dict[str, Figure] = {}
    original = Figure.savefig

    def recording(self, path, *args, **kw):
        seen[path.name] = self
        return original(self, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", recording)
    return seen


def test_the_history_legend_leaves_the_axes_most_of_the_width(tmp_path, figures):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from rhmscale.tuning.figures import study_figures

    long = "accuracy of novel samples (copies included), through level 3, at the last evaluation"
    words = (long, "samples seen until ... reaches 0.5")
    study_figures(pack_trials(), tmp_path, "s", words, cap=4_096_000)
    fig = figures["s-history.png"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    saved = fig.get_tightbbox(renderer)  # inches: what bbox_inches="tight" keeps
    (ax,) = fig.axes
    width = ax.get_window_extent(renderer).width / fig.dpi
    assert width >= 0.6 * saved.width
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0  # below the axes, not beside them


@pytest.mark.parametrize("kind", ["float", "categorical"])
def test_one_parameter_gets_its_trials_values_against_it_not_parallel_lines(
    kind, tmp_path, figures
):
    from rhmscale.tuning.figures import study_figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        if kind == "float":
            return trial.suggest_float("train.lr", 1e-4, 1e-2, log=True) * 1e7
        return {"a": 3e5, "b": 2e5}[trial.suggest_categorical("model.kind", ["a", "b"])]

    study.optimize(objective, n_trials=6)
    paths = study_figures(study, tmp_path, "s", ("samples to learn", "samples seen until ..."))
    assert sorted(p.name for p in paths) == ["s-history.png", "s-parallel.png"]
    (ax,) = figures["s-parallel.png"].axes
    (points,) = ax.collections
    xy = points.get_offsets()
    trials = study.get_trials()
    assert sorted(xy[:, 1]) == sorted(t.value for t in trials)  # a point per trial, visible
    assert points.get_alpha() > 0.5 and points.get_sizes()[0] >= 20
    name = "train.lr" if kind == "float" else "model.kind"
    assert ax.get_xlabel() == name and "One parameter" in ax.get_title(loc="center")
    if kind == "float":
        assert ax.get_xscale() == "log"
        assert sorted(xy[:, 0]) == pytest.approx(sorted(t.params[name] for t in trials))
    else:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["a", "b"]
        assert all(ticks[int(x)] == t.params[name] for (x, _), t in zip(xy, trials, strict=True))
