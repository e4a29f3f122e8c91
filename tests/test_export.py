"""export: the fit's tables parse back (CSV, JSON), LaTeX is well formed, Markdown is complete."""

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from rhmscale.errors import UserError
from rhmscale.report.export import render
from rhmscale.results.fit import FitOptions, fit
from tests.synthetic_sweep import synthetic_frame, true_p_star


@pytest.fixture(scope="module")
def result():
    frame = synthetic_frame(np.random.default_rng(11), noise=0.02)
    # One censored point, so bounds are exported too.
    small = (frame["grammar.v"] == 8) & (frame["grammar.m"] == 2)
    frame = frame[~small | (frame["data.P"] > 2 * true_p_star(8, 2, 1))]
    return fit(frame, FitOptions(at="final", n_boot=200))


def test_csv_round_trips_both_tables(result):
    texts = render(result, "csv")
    assert set(texts) == {"exponents", "p_star"}
    exponents = pd.read_csv(io.StringIO(texts["exponents"]))
    pd.testing.assert_frame_equal(exponents, result.exponents.reset_index(drop=True))
    p_star = pd.read_csv(io.StringIO(texts["p_star"]), keep_default_na=False, na_values=[""])
    assert len(p_star) == len(result.crossings)
    assert np.allclose(p_star["P_star"], result.crossings["P_star"])
    assert p_star["censored"].fillna("").tolist() == result.crossings["censored"].tolist()
    one = render(result, "csv", ("exponents",))
    assert list(one) == [""]


def test_json_round_trips(result):
    loaded = json.loads(render(result, "json")[""])
    assert loaded["stats"]["n_points"] == result.stats["n_points"]
    assert [e["term"] for e in loaded["exponents"]] == result.exponents["term"].tolist()
    assert np.allclose([e["estimate"] for e in loaded["exponents"]], result.exponents["estimate"])
    censored = [c for c in loaded["crossings"] if c["censored"]]
    assert censored and censored[0]["P_lo"] is None  # NaN -> null: strict JSON
    assert loaded["options"]["threshold"] == 0.5


def test_latex_is_well_formed(result):
    text = render(result, "tex")[""]
    for env in ("table", "tabular"):
        assert text.count(rf"\begin{{{env}}}") == text.count(rf"\end{{{env}}}") == 2
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert text.count(rule) == 2
    for block in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", text, re.S):
        columns, body = len(block[0]), block[1]
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        assert rows and all(row.count(" & ") == columns - 1 for row in rows), rows
    # Braces balance and no raw special characters outside math.
    assert text.count("{") - text.count(r"\{") == text.count("}") - text.count(r"\}")
    assert r"$\log v$" in text and r"$\leq$" in text and "_l" not in text.replace(r"\_l", "")


def test_markdown_lists_every_point_and_term(result):
    text = render(result, "md")[""]
    rows = [line for line in text.splitlines() if line.startswith("| v=")]
    assert len(rows) == len(result.crossings)
    assert "| log v |" in text and "≤ " in text and "R² = " in text


def test_bad_format_and_table():
    with pytest.raises(UserError, match="choose one of md, csv, tex, json"):
        render(None, "xlsx")
    with pytest.raises(UserError, match="choose from exponents, p_star"):
        render(None, "md", ("everything",))


def test_the_summary_says_whether_the_theory_lies_inside_each_interval(result):
    from rhmscale.report.export import fit_summary

    assert result.exponents["off_by"].max() <= 1  # a synthetic sweep of the theory's law
    assert fit_summary(result).endswith(
        "The theory lies inside the 95% interval of every exponent."
    )
    off = fit(
        synthetic_frame(np.random.default_rng(6), noise=0.01, level1_factor=0.4),
        FitOptions(at="final", n_boot=200, levels="2-", theory="v * m^(k+2)"),
    )  # the law of the data is v m^(k+1): the theory's m exponent is off, its v exponent not
    assert fit_summary(off).endswith(
        f"inside the 95% interval of log v and outside that of (k+1) log m (off by "
        f"{off.exponents['off_by'].iloc[1]:.1f})."
    )


def test_the_ratio_has_one_name_and_a_censored_one_is_a_bound(result):
    """P*_k/P_k everywhere it is shown; where P*_k is censored, its ratio is the same bound."""
    from rich.console import Console

    from rhmscale.cli.tables import p_star_table

    censored = next(result.crossings[result.crossings["censored"] == "below"].itertuples())
    bound = f"≤ {censored.ratio:.2f}"
    markdown = render(result, "md")[""]
    assert "| P*_k/P_k |" in markdown and f"| {bound} |" in markdown
    latex = render(result, "tex")[""]
    assert r"$P^*_k/P_k$" in latex and rf"$\leq$ {censored.ratio:.2f}" in latex
    console = Console(file=io.StringIO(), width=200)
    console.print(p_star_table(result))
    text = console.file.getvalue()
    assert "P*_k/P_k" in text and bound in text and "ratio" not in text
    assert "P*/theory" not in markdown + latex
