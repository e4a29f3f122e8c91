"""The fit refuses what its cells cannot tell apart and warns about what it leaves out: a
science key that varies but enters no regressor, collinear regressors; --where selects cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rhmscale.errors import UserError
from rhmscale.results.cells import select_cells
from rhmscale.results.fit import FitOptions, fit
from tests.synthetic_sweep import synthetic_frame


def cells(*specs: tuple[int, int, int, int], seed: int = 0) -> pd.DataFrame:
    """Synthetic runs of cells (v, m, s, L), each on the known law P*_k = 3 v m^(k+1)."""
    rng = np.random.default_rng(seed)
    frames = []
    for v, m, s, L in specs:
        frame = synthetic_frame(rng, cells=[(v, m)], L=L)
        frame["grammar.s"] = s
        frame["run_id"] = frame["run_id"] + f"s{s}L{L}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def options(**fields) -> FitOptions:
    return FitOptions(n_boot=200, **fields)


def test_a_regressor_confounded_with_a_left_out_key_is_refused_naming_it():
    # The case: v and s (and L) change together between the two cells.
    frame = cells((16, 2, 2, 4), (24, 2, 3, 3))
    result = fit(frame, options(levels="2-"))
    error = result.stats["fit_error"]
    assert "'log v' cannot be told apart from s and L" in error
    assert "Add 'log s' to --regressors" in error and '--where "s=' in error
    # Adding log s does not help: the two cells still cannot separate log v from log s or L.
    with_s = fit(frame, options(levels="2-", regressors="log v, (k+1) log m, log s"))
    assert "cannot be told apart from L" in with_s.stats["fit_error"]


def test_collinear_regressors_are_named():
    frame = cells((16, 2, 2, 3), (32, 2, 3, 3))
    result = fit(frame, options(regressors="log v, (k+1) log m, log s"))
    error = result.stats["fit_error"]
    assert "regressors 'log v' and 'log s' are collinear" in error


def test_a_left_out_key_that_is_not_confounded_warns_and_the_fit_goes_on():
    frame = cells((16, 2, 2, 3), (32, 2, 2, 3), (24, 4, 3, 3), (8, 4, 2, 3))
    result = fit(frame, options())
    assert "fit_error" not in result.stats
    (warning,) = [w for w in result.stats["design_warnings"] if w.startswith("s varies")]
    assert "(2, 3)" in warning and "add 'log s' to --regressors" in warning
    from rhmscale.report.export import fit_summary

    assert "Warning: s varies across the fitted cells" in fit_summary(result)
    clean = fit(frame, options(where="s=2"))
    assert clean.stats["design_warnings"] == [] and "fit_error" not in clean.stats
    assert set(clean.crossings["grammar.s"]) == {2}
    assert clean.stats["where"] == "s=2"


def test_a_level_regressor_whose_letter_never_varies_is_named_as_the_slope_across_levels():
    """The demo's case: m = 2 in every cell, yet '(k+1) log m' gets an exponent (and a theory
    to compare with): it is how P*_k grows from level to level, not an effect of m."""
    one_m = fit(cells((8, 2, 2, 3), (16, 2, 2, 3), (32, 2, 2, 3)), options())
    (warning,) = [w for w in one_m.stats["design_warnings"] if "(k+1) log m" in w]
    assert "m=2 in every fitted cell" in warning and "not an effect of m" in warning
    assert not one_m.exponents.empty  # a warning: the slope is still a number worth having
    two_m = fit(cells((8, 2, 2, 3), (16, 2, 2, 3), (8, 3, 2, 3), (16, 3, 2, 3)), options())
    assert not [w for w in two_m.stats["design_warnings"] if "in every fitted cell" in w]
    # log v alone with one v is a constant: refused by the design's own check.
    one_v = fit(cells((8, 2, 2, 3), (8, 3, 2, 3)), options(regressors="log v, (k+1) log m"))
    assert "'log v' does not vary" in one_v.stats["fit_error"]


def test_nearly_collinear_regressors_warn():
    # v and m rise together but not in lockstep (log m is 94% explained by log v): the fit
    # runs, and says so.
    frame = cells((8, 2, 2, 3), (16, 4, 2, 3), (32, 8, 2, 3), (64, 8, 2, 3), (128, 16, 2, 3))
    result = fit(frame, options(regressors="log v, log m, k"))
    assert "fit_error" not in result.stats
    warnings = result.stats["design_warnings"]
    assert any(w.startswith("'log m' is 94% explained by the other") for w in warnings), warnings


def test_where_selects_cells_by_grammar_letter_or_config_key():
    frame = cells((16, 2, 2, 3), (32, 2, 3, 3), (32, 4, 3, 3))
    assert set(select_cells(frame, "s=3")["grammar.v"]) == {32}
    assert set(select_cells(frame, "v=16|32, m=2")["grammar.s"]) == {2, 3}
    assert len(select_cells(frame, "batch_size=64")) == len(frame)
    assert select_cells(frame, "") is frame
    with pytest.raises(UserError, match="selects no runs; s is 2, 3"):
        select_cells(frame, "s=4")
    with pytest.raises(UserError, match="unknown key 'q'"):
        select_cells(frame, "q=1")
    with pytest.raises(UserError, match="key=value"):
        select_cells(frame, "s")


def test_where_on_the_command_line_fits_the_selected_cells(tmp_path):
    from typer.testing import CliRunner

    from rhmscale.cli import app
    from tests.synthetic_sweep import write_run_dirs

    # Grammars large enough for the synthetic sizes (a run's config must be valid).
    frame = cells((32, 4, 2, 3), (64, 4, 2, 3), (128, 4, 2, 3), (32, 8, 2, 3))
    write_run_dirs(frame, tmp_path)
    out = CliRunner().invoke(
        app, ["fit", str(tmp_path), "--where", "m=4", "--n-boot", "100"], terminal_width=200
    )
    assert out.exit_code == 0, out.output
    assert "cells where m=4" in out.output and "m=8" not in out.output
