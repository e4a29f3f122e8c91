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
