"""The robustness table: exponents refitted with one choice changed, on synthetic sweeps whose
law is known (P*_k = 3 v m^(k+1): both exponents 1), through the library, `fit --robustness`
and `report`."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rhmscale.cli import app
from rhmscale.results.cells import with_cells
from rhmscale.results.fit import FitOptions, fit
from rhmscale.results.robustness import robustness
from tests.synthetic_sweep import sigmoid, synthetic_frame, write_run_dirs

LEVELS = 3
WIDE = {"COLUMNS": "250"}  # rich wraps at the terminal's width; long variant names stay whole


def with_metric(frame, metric, rng, m_exponent=1.0):
    """Set a per-level metric from the law P*_k = 3 v m^(m_exponent (k+1)), fresh noise."""
    frame = frame.copy()
    log_p = np.log(frame["data.P"].to_numpy(dtype=float))
    v, m = frame["grammar.v"].to_numpy(dtype=float), frame["grammar.m"].to_numpy(dtype=float)
    for k in range(1, frame["grammar.L"].max() + 1):
        log_p_star = np.log(3 * v) + m_exponent * (k + 1) * np.log(m)
        accuracy = sigmoid((log_p - log_p_star) / 0.6) + rng.normal(0, 0.02, len(frame))
        frame[metric.format(k=k)] = np.clip(accuracy, 0, 1)
    return frame


def full_sweep(seed=0, acc_m_exponent=1.0, **shape):
    """Two evaluations per run (best = the earlier one), every metric recorded; the all-samples
    accuracy follows m^(acc_m_exponent (k+1)), as copies of training data would. shape: cells,
    L (default: synthetic_frame's six cells, L=3)."""
    rng = np.random.default_rng(seed)
    frame = synthetic_frame(rng, noise=0.02, steps=(6000, 10_000), **{"L": LEVELS, **shape})
    frame["val/loss"] = np.where(frame["step"] == 6000, 0.9, 1.0)
    for metric in ("gen/novel_tuple_acc_l{k}", "gen/tuple_acc_l{k}"):
        frame = with_metric(frame, metric, rng)
    return with_metric(frame, "gen/acc_l{k}", rng, acc_m_exponent)


def fitted(table):
    return table[table["term"] != ""]


@pytest.fixture(scope="module")
def on_the_law():
    frame = full_sweep()
    return frame, robustness(frame, FitOptions(n_boot=200))


def test_every_variant_finds_the_true_exponents_and_none_moved_far(on_the_law):
    """30 intervals (15 variants x 2 terms), most of them on independent noise (each metric and
    evaluation draws its own here), so some 95% intervals miss the truth by chance: over 40
    seeds, all 30 covered it in 13, at least 22 in every one, and no estimate lay more than 1.7
    of its own half-widths from it; chance moves from the baseline reached 2.3 half-widths
    (so `moved`, at 1, fires by chance on such variants: the module's docstring says why)."""
    frame, table = on_the_law
    cells = sorted(set(with_cells(frame)["cell"]))
    # baseline, 4 other thresholds, 1 other evaluation, 3 other metrics, 6 cells left out
    assert table["variant"].nunique() == 1 + 4 + 1 + 3 + len(cells) == 15
    assert table["variant"].iloc[0] == "baseline" and (table["note"] == "").all()
    rows = fitted(table)
    assert len(rows) == 2 * 15 and set(rows["term"]) == {"log v", "(k+1) log m"}
    covered = (rows["lo"] <= 1.0) & (rows["hi"] >= 1.0)
    assert covered.mean() >= 2 / 3, rows[~covered]
    above = rows["estimate"] > 1.0  # the half of each interval on the truth's side
    half_width = np.where(above, rows["estimate"] - rows["lo"], rows["hi"] - rows["estimate"])
    assert ((rows["estimate"] - 1.0).abs() <= 2 * half_width).all(), rows
    assert (rows["moved_by"] < 3).all(), rows[rows["moved_by"] >= 3]
    assert (table.loc[table["variant"] == "baseline", "shift"] == 0).all()


def test_each_cell_is_left_out_once_and_only_it(on_the_law):
    frame, table = on_the_law
    cells = set(with_cells(frame)["cell"])
    left_out = {v.removeprefix("without cell ") for v in table["variant"] if "without" in v}
    assert left_out == cells
    cell = "v=16 m=4 s=2 L=3"
    labels = with_cells(frame)["cell"]
    alone = fit(frame[labels != cell], FitOptions(n_boot=200)).exponents.set_index("term")
    row = table[table["variant"] == f"without cell {cell}"].set_index("term")
    assert np.allclose(row["estimate"], alone.loc[row.index, "estimate"])
    baseline = table[table["variant"] == "baseline"].set_index("term")
    assert not np.allclose(row["estimate"], baseline.loc[row.index, "estimate"])


def test_only_the_selected_cells_are_left_out():
    frame = synthetic_frame(np.random.default_rng(8), steps=(10_000,))
    table = robustness(frame, FitOptions(at="final", where="m=2", n_boot=100))
    left_out = [v for v in table["variant"].unique() if v.startswith("without cell")]
    assert left_out == [f"without cell v={v} m=2 s=2 L=3" for v in (8, 16, 32)]


def test_a_metric_off_the_law_moves_far_and_the_others_do_not():
    """Accuracy over all samples grows as m^(0.7 (k+1)): its variant moves the m exponent to
    0.7 (inside its own interval), by far more half-widths than any chance move."""
    table = robustness(full_sweep(seed=1, acc_m_exponent=0.7), FitOptions(n_boot=200))
    off = table["variant"] == "metric gen/acc_l{k}"
    m_row = table[off].set_index("term").loc["(k+1) log m"]
    assert m_row["moved"] and m_row["moved_by"] > 10 and m_row["shift"] < -0.2
    assert m_row["lo"] <= 0.7 <= m_row["hi"]
    assert (table.loc[~off, "moved_by"] < 3).all(), table[~off]


def test_variants_that_cannot_be_fitted_become_rows_with_the_reason():
    """Runs without val/loss (no --at best), with one tuple metric on half the runs and the
    other never recorded, in three cells of which one alone makes v vary."""
    frame = synthetic_frame(np.random.default_rng(3), cells=[(8, 2), (16, 2), (8, 4)])
    frame = frame.drop(columns="val/loss")
    frame = with_metric(frame, "gen/novel_tuple_acc_l{k}", np.random.default_rng(4))
    older = frame["seed"] == 0
    for k in range(1, LEVELS + 1):
        frame.loc[older, f"gen/novel_tuple_acc_l{k}"] = np.nan
    table = robustness(frame, FitOptions(at="final", n_boot=100)).set_index("variant")
    notes = table["note"].groupby(level=0).first()
    assert "needs val/loss" in notes["at best"]
    assert notes["metric gen/tuple_acc_l{k}"] == "not recorded by these runs"
    assert "does not vary" in notes["without cell v=16 m=2 s=2 L=3"]
    for variant in ("at best", "metric gen/tuple_acc_l{k}", "without cell v=16 m=2 s=2 L=3"):
        assert table.loc[[variant], "estimate"].isna().all() and not table.loc[variant, "moved"]
    runs = frame["run_id"].nunique()
    partly = table.loc[["metric gen/novel_tuple_acc_l{k}"]]
    assert (partly["note"] == f"recorded by {runs * 2 // 3} of {runs} runs").all()
    assert partly["estimate"].notna().all()  # fitted on the runs that have it


@pytest.fixture(scope="module")
def off_law_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    # Grammars large enough for every P of the grid (run configs are validated).
    shape = {"cells": [(8, 2), (16, 2), (8, 4)], "L": 4}
    write_run_dirs(full_sweep(seed=2, acc_m_exponent=0.7, **shape), root)
    return root


@pytest.mark.slow
def test_fit_prints_the_robustness_table_on_request(off_law_runs):
    runner = CliRunner()
    plain = runner.invoke(app, ["fit", str(off_law_runs), "--n-boot", "100"], env=WIDE)
    assert plain.exit_code == 0, plain.output
    assert "robustness" not in plain.output
    out = runner.invoke(
        app, ["fit", str(off_law_runs), "--n-boot", "100", "--robustness"], env=WIDE
    )
    assert out.exit_code == 0, out.output
    table = out.output[out.output.index("robustness: the exponents refitted") :]
    for variant in ("threshold 0.3", "at final", "without cell v=8 m=4 s=2 L=4"):
        assert variant in table
    rows = [[cell.strip() for cell in line.split("│")] for line in table.splitlines()]
    flagged = {(row[1], row[2]) for row in rows if len(row) == 10 and row[7] == "moved"}
    assert ("metric gen/acc_l{k}", "(k+1) log m") in flagged
    assert ("baseline", "(k+1) log m") not in flagged
    assert "metric gen/acc_l{k} (" in " ".join(table.split()).partition("log m moved with:")[2]


@pytest.mark.slow
def test_the_report_holds_the_robustness_table(off_law_runs, tmp_path):
    out = CliRunner().invoke(
        app, ["report", str(off_law_runs), "-o", str(tmp_path), "--n-boot", "100"], env=WIDE
    )
    assert out.exit_code == 0, out.output
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Robustness of the exponents") : text.index("## Sample")]
    marked = [line for line in section.splitlines() if "**moved**" in line]
    assert any(line.startswith("| metric gen/acc_l{k} | (k+1) log m |") for line in marked)
    assert not any(line.startswith("| baseline |") for line in marked)
    assert "| without cell v=8 m=2 s=2 L=4 | log v |" in section
    saved = pd.read_csv(tmp_path / "tables" / "robustness.csv")
    moved = saved.loc[saved["moved"], ["variant", "term"]].values.tolist()
    assert ["metric gen/acc_l{k}", "(k+1) log m"] in moved
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    assert len(rows) == len(saved)
