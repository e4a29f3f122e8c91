"""The fit's tables as CSV, Markdown, LaTeX (booktabs) and JSON; the robustness table as text.

Two tables: the exponents (one row per regressor, with interval and theory) and the sample
complexities P*_k (one row per cell and level, censored ones shown as bounds). The robustness
table (results/robustness.py computes it) as Markdown and a one-paragraph summary.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from rhmscale.config import GRAMMAR_KEYS
from rhmscale.errors import UserError
from rhmscale.results.fit import FitResult
from rhmscale.results.options import FitOptions

FORMATS = ("md", "csv", "tex", "json")
TABLES = ("exponents", "p_star")
TEX_TERMS = {
    "log v": r"$\log v$",
    "log m": r"$\log m$",
    "k": r"$k$",
    "k log m": r"$k \log m$",
    "(k+1) log m": r"$(k+1) \log m$",
    "log s": r"$\log s$",
    "L": r"$L$",
}


def check_format(fmt: str, tables: tuple[str, ...]) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise UserError(f"--table {unknown[0]!r}: choose from {', '.join(TABLES)}")


# --- values as text ---------------------------------------------------------------------------


def number(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def size(x: float) -> str:
    """A dataset size: integers up to 10^5, then 3 significant digits."""
    return f"{x:,.0f}" if x < 1e5 else f"{x:.3g}"


# P*_k over the theory's P_k (--theory, no prefactor), named so in every table (docs/fit.md);
# the `ratio` column of the CSV and JSON exports.
RATIO = "P*_k/P_k"
BOUND = {"below": "≤ ", "above": "> "}  # how a censored P*_k (and its ratio) is written


def p_star_text(row: pd.Series) -> tuple[str, str]:
    """(value, interval) of one P*_k; censored values are bounds with no interval."""
    if row["censored"]:
        return BOUND[row["censored"]] + size(row["P_star"]), ""
    return size(row["P_star"]), f"[{size(row['P_lo'])}, {size(row['P_hi'])}]"


def ratio_text(row: pd.Series) -> str:
    """P*_k/P_k, a bound as P*_k is when it is censored ("> 4.00": not learned at 4 x P_k)."""
    return BOUND.get(row["censored"], "") + number(row["ratio"], 2)


# --- tables as plain frames (CSV) and text (Markdown) ----------------------------------------


def exponent_frame(result: FitResult) -> pd.DataFrame:
    columns = ["term", "estimate", "lo", "hi", "theory", "off_by"]
    return result.exponents[columns] if len(result.exponents) else pd.DataFrame(columns=columns)


def p_star_frame(result: FitResult) -> pd.DataFrame:
    columns = ["cell", *GRAMMAR_KEYS.values(), "k", "P_star", "P_lo", "P_hi", "censored",
               "n_sizes", "n_seeds", "P_theory", "ratio"]  # fmt: skip
    return result.crossings[columns] if len(result.crossings) else pd.DataFrame(columns=columns)


def fit_summary(result: FitResult) -> str:
    stats, options = result.stats, result.options
    where = f"threshold {options.threshold} on {options.metric}, evaluation: {options.at}"
    if options.levels != "all":
        where += f", levels {options.levels} (the P*_k table lists every level)"
    if options.where:
        where += f", cells where {options.where}"
    if "fit_error" in stats:
        return f"No exponent fit ({where}): {stats['fit_error']}"
    ci = f"{options.ci:.0%}"
    return (
        f"log P*_k fitted on {', '.join(stats['regressors'])} ({where}): "
        f"R² = {stats['r2']:.3f}, {stats['n_points']} points from {stats['n_cells']} cells, "
        f"{stats['n_censored']} censored; {ci} intervals by {stats['interval_method']}; "
        f"theory P_k ∝ {stats['theory']}"
        + ("" if stats["theory_exact"] else " (not spanned by the regressors: projected)")
        + "; 'off by' = distance of the theory from the estimate in interval half-widths. "
        + theory_verdict(result)
        + "".join(f" Warning: {text}." for text in stats.get("design_warnings", []))
    )


def theory_verdict(result: FitResult) -> str:
    """One sentence: for which exponents the theory lies inside the interval, which not."""
    rows = result.exponents.to_dict("records")
    inside = [r["term"] for r in rows if r["off_by"] <= 1]
    outside = [f"{r['term']} (off by {r['off_by']:.1f})" for r in rows if r["off_by"] > 1]
    ci = f"{result.options.ci:.0%}"
    if not outside:
        return f"The theory lies inside the {ci} interval of every exponent."
    if not inside:
        return f"The theory lies outside the {ci} interval of every exponent: {', '.join(outside)}."
    return (
        f"The theory lies inside the {ci} interval of {', '.join(inside)} and outside that of "
        f"{', '.join(outside)}."
    )


def markdown(result: FitResult, tables: tuple[str, ...] = TABLES) -> str:
    ci = f"{result.options.ci:.0%}"
    parts = []
    if "exponents" in tables:
        lines = [
            f"| term | estimate | {ci} interval | theory | off by |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in exponent_frame(result).itertuples():
            lines.append(
                f"| {row.term} | {number(row.estimate)} | [{number(row.lo)}, {number(row.hi)}] "
                f"| {number(row.theory)} | {number(row.off_by, 1)} |"
            )
        parts.append("\n".join(lines) + "\n\n" + fit_summary(result))
    if "p_star" in tables:
        lines = [
            f"| cell | k | P*_k | {ci} interval | theory P_k | {RATIO} |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for _, row in p_star_frame(result).iterrows():
            value, interval = p_star_text(row)
            lines.append(
                f"| {row['cell']} | {row['k']} | {value} | {interval} | {size(row['P_theory'])} "
                f"| {ratio_text(row)} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# --- LaTeX ------------------------------------------------------------------------------------

_TEX_SPECIAL = {
    **{ch: "\\" + ch for ch in "&%$#_{}"},
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def tex_table(header: list[str], rows: list[list[str]], align: str, caption: str) -> str:
    body = [" & ".join(header) + r" \\", r"\midrule"] + [" & ".join(r) + r" \\" for r in rows]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\begin{{tabular}}{{{align}}}",
            r"\toprule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{caption}}}",
            r"\end{table}",
        ]
    )


def latex(result: FitResult, tables: tuple[str, ...] = TABLES) -> str:
    """booktabs tables; needs \\usepackage{booktabs} (and amssymb for \\leq)."""
    ci = f"{result.options.ci:.0%}".replace("%", r"\%")
    parts = []
    if "exponents" in tables:
        rows = [
            [
                TEX_TERMS.get(row.term, tex_escape(row.term)),
                rf"${number(row.estimate)}$ \, $[{number(row.lo)}, {number(row.hi)}]$",
                f"${number(row.theory)}$",
                f"${number(row.off_by, 1)}$",
            ]
            for row in exponent_frame(result).itertuples()
        ]
        caption = tex_escape(fit_summary(result)).replace("R²", "$R^2$").replace("∝", r"$\propto$")
        parts.append(
            tex_table(["term", f"estimate [{ci}]", "theory", "off by"], rows, "lrrr", caption)
        )
    if "p_star" in tables:
        rows = []
        for _, row in p_star_frame(result).iterrows():
            value, interval = p_star_text(row)
            value, ratio = (
                text.replace("≤ ", r"$\leq$ ").replace("> ", "$>$ ").replace(",", "{,}")
                for text in (value, ratio_text(row))
            )
            rows.append(
                [
                    tex_escape(row["cell"]),
                    str(row["k"]),
                    value,
                    interval.replace(",", "{,}").replace("{,} ", ", "),
                    size(row["P_theory"]).replace(",", "{,}"),
                    ratio,
                ]
            )
        caption = (
            f"Sample complexity $P^*_k$: where the seed mean of {tex_escape(result.options.metric)}"
            f" crosses {result.options.threshold}, with {ci} seed-bootstrap intervals."
        )
        parts.append(
            tex_table(
                ["cell", "$k$", "$P^*_k$", ci, "theory $P_k$", "$P^*_k/P_k$"],
                rows,
                "lrrrrr",
                caption,
            )
        )
    return "\n\n".join(parts) + "\n"


# --- dispatch -------------------------------------------------------------------------------


def render(result: FitResult, fmt: str, tables: tuple[str, ...] = TABLES) -> dict[str, str]:
    """Text per output: {"": text} for one file, or {"exponents": ..., "p_star": ...} for
    CSV with both tables (a CSV file holds one table)."""
    check_format(fmt, tables)
    if fmt == "md":
        return {"": markdown(result, tables)}
    if fmt == "tex":
        return {"": latex(result, tables)}
    if fmt == "json":
        full = result.to_dict()
        if "exponents" not in tables:
            full.pop("exponents")
        if "p_star" not in tables:
            full.pop("crossings")
        return {"": json.dumps(full, indent=2, allow_nan=False, default=str) + "\n"}
    frames = {"exponents": exponent_frame, "p_star": p_star_frame}
    texts = {t: frames[t](result).to_csv(index=False) for t in tables}
    return texts if len(texts) > 1 else {"": next(iter(texts.values()))}


# --- the robustness table (results/robustness.py) as text -------------------------------------


def robustness_summary(table: pd.DataFrame, options: FitOptions) -> str:
    """What the table is, and which variants moved which exponents by how much."""
    moved = table[table["moved"]]
    what = (
        f"Exponents refitted with one choice changed at a time (baseline: threshold "
        f"{options.threshold}, evaluation {options.at}, metric {options.metric}); 'moved by': "
        f"the distance from the baseline's estimate in half-widths of the baseline's "
        f"{options.ci:.0%} interval, 'moved' when above 1."
    )
    unfitted = int((table["term"] == "").sum())
    plural = "s have" if unfitted > 1 else " has"
    without = f" {unfitted} variant{plural} no fit (see their note)." if unfitted else ""
    if moved.empty:
        return what + " No variant moved an exponent." + without
    named = moved["variant"] + " (" + moved["moved_by"].map(lambda x: number(x, 1)) + ")"
    by_term = named.groupby(moved["term"], sort=False).agg(", ".join)
    listed = "".join(f" {term} moved with: {names}." for term, names in by_term.items())
    return what + listed + without


def robustness_markdown(table: pd.DataFrame, options: FitOptions) -> str:
    """A Markdown table, moved rows marked in bold, then the summary."""
    lines = [
        f"| variant | term | estimate | {options.ci:.0%} interval | shift | moved by | moved "
        "| note |",
        "|---|---|---:|---:|---:|---:|:-:|---|",
    ]
    for row in table.itertuples():
        note = " ".join(row.note.split()).replace("|", "\\|")  # one line, no cell breaks
        if not row.term:
            lines.append(f"| {row.variant} | | | | | | | {note} |")
            continue
        lines.append(
            f"| {row.variant} | {row.term} | {number(row.estimate)} "
            f"| [{number(row.lo)}, {number(row.hi)}] | {number(row.shift)} "
            f"| {number(row.moved_by, 1)} | {'**moved**' if row.moved else ''} | {note} |"
        )
    return "\n".join(lines) + "\n\n" + robustness_summary(table, options) + "\n"
