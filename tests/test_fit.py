"""fit: sample complexities and exponents recovered from synthetic sweeps with a known law."""

import numpy as np
import pytest

from rhmscale.errors import UserError
from rhmscale.results.cells import with_cells
from rhmscale.results.collect import collect
from rhmscale.results.crossing import crossings
from rhmscale.results.fit import FitOptions, fit
from rhmscale.results.theory import Theory, parse_regressors
from tests.synthetic_sweep import synthetic_frame, true_p_star, write_run_dirs

FINAL = {"at": "final"}


def test_crossing_interpolates_and_censors():
    log_x = np.log([10.0, 100.0, 1000.0])
    value, code = crossings(
        log_x, np.array([[0.1, 0.5, 0.9], [0.6, 0.8, 0.9], [0.1, 0.2, 0.3], [0.2, 0.8, 0.4]]), 0.5
    )
    assert code.tolist() == [0, -1, 1, 0]
    assert value[0] == pytest.approx(np.log(100.0))
    # Symmetric in logit around the threshold: halfway in log x.
    assert value[3] == pytest.approx(np.log(np.sqrt(10 * 100)))


def test_along_p_the_last_crossing_from_below_counts():
    log_x = np.log([10.0, 100.0, 1000.0, 10_000.0])
    curves = np.array(
        [
            [0.9, 0.2, 0.1, 0.8],  # high at small P (copies), dips, learned: the last crossing
            [0.6, 0.8, 0.3, 0.9],  # above, dips, above again
            [0.9, 0.8, 0.7, 0.6],  # never below: censored below
            [0.1, 0.8, 0.9, 0.3],  # learned then lost at the largest P: not learned there
        ]
    )
    value, code = crossings(log_x, curves, 0.5, last=True)
    assert code.tolist() == [0, 0, -1, 1]
    assert np.log(1000.0) < value[0] < np.log(10_000.0)
    assert np.log(1000.0) < value[1] < np.log(10_000.0)
    first, first_code = crossings(log_x, curves, 0.5)
    assert first_code.tolist() == [-1, -1, -1, 0] and first[3] < np.log(100.0)


def test_cells_are_the_science_keys_of_the_config():
    """Runs that differ in bookkeeping (device, precision, W&B) or seeds share a cell; a
    science key that differs splits cells and names itself in their labels."""
    frame = synthetic_frame(np.random.default_rng(9), cells=[(8, 2)], seeds=2)
    odd = frame["seed"] == 1
    frame["train.precision"] = np.where(odd, "bf16", "32")
    frame["tracking.project"] = np.where(odd, "a", "b")
    frame["eval.batch_size"] = np.where(odd, 64, 128)
    assert set(with_cells(frame)["cell"]) == {"v=8 m=2 s=2 L=3"}
    frame["model.width"] = np.where(odd, 32, 64)
    assert set(with_cells(frame)["cell"]) == {
        "v=8 m=2 s=2 L=3 width=32",
        "v=8 m=2 s=2 L=3 width=64",
    }


def test_fit_recovers_the_law_of_a_quiet_sweep():
    frame = synthetic_frame(np.random.default_rng(0), noise=0.01)
    result = fit(frame, FitOptions(**FINAL, n_boot=300))
    est = result.exponents.set_index("term")
    assert est.loc["log v", "estimate"] == pytest.approx(1.0, abs=0.03)
    assert est.loc["(k+1) log m", "estimate"] == pytest.approx(1.0, abs=0.03)
    assert (est["lo"] < est["estimate"]).all() and (est["estimate"] < est["hi"]).all()
    assert np.allclose(est["theory"], 1.0) and result.stats["theory_exact"]
    assert result.stats["r2"] > 0.99
    assert result.stats["prefactor"] == pytest.approx(3.0, rel=0.25)
    assert result.stats["n_points"] == 18 and result.stats["n_censored"] == 0
    points = result.crossings
    truth = [true_p_star(v, m, k) for v, m, k in points[["grammar.v", "grammar.m", "k"]].values]
    assert np.allclose(points["P_star"], truth, rtol=0.1)
    assert (points["ratio"].between(2.5, 3.5)).all()  # P*/theory = the prefactor 3


@pytest.mark.slow
def test_exponent_intervals_cover_the_truth_about_95_percent():
    """Over 150 seeded synthetic sweeps (6 cells x 3 levels, 3 seeds, noise sd 0.04), the
    95% intervals of both exponents cover the true value 1. Binomial sd of the rate at 0.95
    with 150 trials is 0.018; the accepted band [0.89, 0.99] is about 3 sd below, 2 above."""
    hits, trials = np.zeros(2), 150
    for trial in range(trials):
        frame = synthetic_frame(np.random.default_rng(1000 + trial), noise=0.04)
        exps = fit(frame, FitOptions(**FINAL, n_boot=200, seed=trial)).exponents
        hits += ((exps["lo"] <= 1.0) & (exps["hi"] >= 1.0)).to_numpy()
    coverage = hits / trials
    assert ((coverage >= 0.89) & (coverage <= 0.99)).all(), coverage


def test_misfit_widens_the_intervals():
    """Cells off the law by random factors: the fit says so (chi^2 > 1) and widens."""
    rng = np.random.default_rng(5)
    frame = synthetic_frame(rng, noise=0.02)
    exact = fit(frame, FitOptions(**FINAL, n_boot=300))
    off = frame.copy()
    for v in off["grammar.v"].unique():  # shift every cell of this v by a random factor
        factor = np.exp(rng.normal(0, 0.5))
        off.loc[off["grammar.v"] == v, "data.P"] = (
            off.loc[off["grammar.v"] == v, "data.P"] * factor
        ).round()
    misfit = fit(off, FitOptions(**FINAL, n_boot=300))
    assert misfit.stats["chi2_red"] > 3 and "Birge" in misfit.stats["interval_method"]
    width = lambda r: (r.exponents["hi"] - r.exponents["lo"]).to_numpy()  # noqa: E731
    assert (width(misfit) > 2 * width(exact)).all()


def test_levels_choose_the_points_of_the_exponent_fit():
    """Level 1 off the law by a factor 2.5: fitted with every level the exponents are off and
    the intervals wide; with --levels 2- the law comes back, and the P*_k table keeps level 1."""
    frame = synthetic_frame(np.random.default_rng(6), noise=0.01, level1_factor=0.4)
    every = fit(frame, FitOptions(**FINAL, n_boot=300))
    upper = fit(frame, FitOptions(**FINAL, n_boot=300, levels="2-"))
    assert every.stats["chi2_red"] > 3
    est = upper.exponents.set_index("term")
    assert est.loc["log v", "estimate"] == pytest.approx(1.0, abs=0.05)
    assert est.loc["(k+1) log m", "estimate"] == pytest.approx(1.0, abs=0.05)
    assert upper.stats["n_points"] == 12 and sorted(upper.crossings["k"].unique()) == [1, 2, 3]
    width = lambda r: (r.exponents["hi"] - r.exponents["lo"]).to_numpy()  # noqa: E731
    assert (width(every) > 2 * width(upper)).all()
    alone = fit(frame, FitOptions(**FINAL, n_boot=100, levels="1", regressors="log v, log m"))
    assert alone.stats["n_points"] == 6


@pytest.mark.parametrize("levels", ["0-", "3-2", "two", "-2", "1-2-3"])
def test_bad_levels_are_user_errors(levels):
    frame = synthetic_frame(np.random.default_rng(3), cells=[(8, 2), (16, 4)])
    with pytest.raises(UserError, match="--levels"):
        fit(frame, FitOptions(**FINAL, levels=levels))


def test_censored_points_are_reported_not_dropped():
    frame = synthetic_frame(np.random.default_rng(1), noise=0.01)
    # Cell v=8 m=2 keeps only sizes far above its P*_1: level 1 is censored below.
    small = (frame["grammar.v"] == 8) & (frame["grammar.m"] == 2)
    frame = frame[~small | (frame["data.P"] > 3 * true_p_star(8, 2, 1))]
    # Cell v=32 m=4 keeps only sizes below its P*_3: level 3 is censored above.
    big = (frame["grammar.v"] == 32) & (frame["grammar.m"] == 4)
    frame = frame[~big | (frame["data.P"] < true_p_star(32, 4, 3) / 3)]
    result = fit(frame, FitOptions(**FINAL, n_boot=200))
    points = result.crossings.set_index(["cell", "k"])
    assert points.loc[("v=8 m=2 s=2 L=3", 1), "censored"] == "below"
    assert points.loc[("v=32 m=4 s=2 L=3", 3), "censored"] == "above"
    assert np.isnan(points.loc[("v=32 m=4 s=2 L=3", 3), "P_lo"])
    assert (
        result.stats["n_censored"] >= 2
        and result.stats["n_points"] == 18 - result.stats["n_censored"]
    )
    assert "v=32 m=4 s=2 L=3 level 3 (above the largest P)" in result.stats["censored"]


def test_too_few_points_names_the_censored_cells():
    frame = synthetic_frame(np.random.default_rng(2), cells=[(8, 2), (16, 4)], noise=0.01)
    frame = frame[frame["data.P"] > 2000]  # almost everything censored below
    result = fit(frame, FitOptions(**FINAL, n_boot=100))
    assert result.exponents.empty
    message = result.stats["fit_error"]
    assert "need at least 5" in message and "(below the smallest P)" in message


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": 1.2}, "above 0 and below 1"),
        ({"threshold": 0.0}, "above 0 and below 1"),
        ({"metric": "gen/accuracy_l{k}"}, "choose from: gen/acc_l{k}"),
        ({"metric": "gen/acc"}, "needs '{k}'"),
        ({"regressors": "log v, log q"}, "unknown regressor 'log q'; choose from: log v"),
        ({"at": "soon"}, "best, final or a training step"),
        ({"theory": "__import__('os')"}, "is not allowed"),
    ],
)
def test_bad_options_are_user_errors(options, match):
    frame = synthetic_frame(np.random.default_rng(3), cells=[(8, 2), (16, 4)])
    with pytest.raises(UserError, match=match.replace("(", r"\(").replace(")", r"\)")):
        fit(frame, FitOptions(**{**FINAL, **options}))


def test_a_regressor_that_does_not_vary_is_named():
    frame = synthetic_frame(np.random.default_rng(4), cells=[(8, 2), (8, 4)], noise=0.01)
    result = fit(frame, FitOptions(**FINAL, n_boot=100))
    assert "regressor 'log v' does not vary" in result.stats["fit_error"]
    ok = fit(frame, FitOptions(**FINAL, n_boot=100, regressors="(k+1) log m"))
    assert ok.exponents["estimate"].iloc[0] == pytest.approx(1.0, abs=0.05)


def test_theory_is_projected_on_the_chosen_regressors():
    x = {
        "v": np.array([8.0, 16, 8, 16]),
        "m": np.array([2.0, 2, 4, 4]),
        "s": np.full(4, 2.0),
        "L": np.full(4, 3.0),
        "k": np.array([1.0, 2, 3, 1]),
    }
    coef, exact = Theory("v * m^(k+1)").coefficients(parse_regressors("log v,log m, k log m"), x)
    assert np.allclose(coef, [1, 1, 1]) and exact
    coef, exact = Theory("v^2 * m^k").coefficients(parse_regressors("log v, k log m"), x)
    assert np.allclose(coef, [2, 1]) and exact
    _, exact = Theory().coefficients(parse_regressors("log v, k"), x)
    assert not exact  # k alone cannot carry (k+1) log m when m varies


def test_training_time_crossing_and_coherence():
    steps = tuple(int(s) for s in np.geomspace(10, 10_000, 14))
    frame = synthetic_frame(np.random.default_rng(6), cells=[(8, 2), (16, 4)], steps=steps)
    frame = frame.sample(frac=1, random_state=0)  # collect() gives runs in run-id order
    result = fit(frame, FitOptions(**FINAL, n_boot=100))
    times = result.time_crossings
    # Far above P*_1 the level is learned when the time logistic crosses 0.5.
    top = times[(times["k"] == 1) & (times["data.P"] == times["data.P"].max())]
    assert np.allclose(top["samples_star"], 2e4, rtol=0.25)
    assert set(times["censored"]) <= {"", "below", "above"}
    for _, cell in times.groupby("cell", sort=False):  # rows in order of P, then level
        assert list(cell["data.P"]) == sorted(cell["data.P"])
    coherence = result.coherence.set_index("cell")
    assert (coherence["exponent"] > 0).all() and (coherence["n_sizes"] >= 6).all()


def test_collect_then_fit_from_run_directories(tmp_path):
    frame = synthetic_frame(np.random.default_rng(7), cells=[(8, 2), (16, 2), (8, 4)], seeds=2, L=4)
    write_run_dirs(frame, tmp_path)
    (tmp_path / "runs" / "halfway").mkdir()  # a run that never wrote its config
    collected = collect(tmp_path)
    result = fit(collected.frame, FitOptions(**FINAL, n_boot=200))
    assert result.stats["n_runs"] == frame["run_id"].nunique()
    assert result.stats["n_points"] + result.stats["n_censored"] == 12
    assert not result.exponents.empty


def test_runs_missing_a_metric_leave_out_only_those_points():
    frame = synthetic_frame(np.random.default_rng(8), noise=0.01)
    older = frame["grammar.v"] == 32  # e.g. runs recorded before a metric existed
    frame.loc[older, "gen/novel_acc_l3"] = np.nan
    result = fit(frame, FitOptions(**FINAL, n_boot=100))
    points = result.crossings
    assert len(points) == 18 - 2  # the two v=32 cells have no level-3 point
    assert not ((points["grammar.v"] == 32) & (points["k"] == 3)).any()
    assert result.exponents["estimate"].between(0.9, 1.1).all()


def test_runs_recorded_without_samples_seen_fit_without_training_times():
    frame = synthetic_frame(np.random.default_rng(8), noise=0.01).drop(columns="samples_seen")
    result = fit(frame, FitOptions(**FINAL, n_boot=100))
    assert result.time_crossings.empty  # no x axis for the training time: none, not a KeyError
    assert result.exponents["estimate"].between(0.9, 1.1).all()
