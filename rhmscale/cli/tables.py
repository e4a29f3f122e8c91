"""Rich tables the commands print. Presentation only: what goes in them (cells, counts, packs,
P*_k, exponents) is decided in sweeps/ and results/. rich is imported on use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rhmscale.labels import cell_parts, short_names

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from rhmscale.config import GrammarConfig
    from rhmscale.results.fit import FitOptions, FitResult
    from rhmscale.rhm.grammar import Grammar
    from rhmscale.sweeps.grouping import PackPlan
    from rhmscale.sweeps.status import SweepStatus


def format_values(values: list[Any]) -> str:
    """A few values listed; many as their range."""
    if len(values) <= 4:
        return ", ".join(map(str, values))
    return f"{values[0]} .. {values[-1]} ({len(values)} values)"


def run_table(result: dict[str, Any]) -> Table:
    """One run's result.json: per level k accuracy of novel samples, of all samples and of
    level-k tuples of novel samples; then coherence, novelty, memorisation, loss."""
    from rich.table import Table

    final = result["final"]
    L = result["config"]["grammar"]["L"]
    table = Table(title=f"run {result['run_id']} at step {final['step']}")
    levels = ("gen/novel_acc_l{k}", "gen/acc_l{k}", "gen/novel_tuple_acc_l{k}")
    table.add_column("level k", justify="right")
    for name in levels:
        table.add_column(name, justify="right")
    for k in range(1, L + 1):
        values = (final.get(name.format(k=k)) for name in levels)  # older runs lack some
        table.add_row(str(k), *("-" if v is None else f"{v:.3f}" for v in values))
    table.add_section()
    for name in (
        "gen/novel_coherence_length",
        "gen/coherence_length",
        "gen/novel_n",
        "gen/novel_frac",
        "gen/memorized_frac",
        "val/loss",
        "train/loss",
    ):
        table.add_row(name, f"{final[name]:.3f}", "", "")
    return table


def rule_tables(grammar: Grammar, cfg: GrammarConfig, max_rules: int) -> list[Table]:
    """A grammar's productions, one table per level from the root down."""
    from rich.table import Table

    tables = []
    for k in range(cfg.L, 0, -1):
        table = Table(title=f"level {k} -> level {k - 1} ({'tokens' if k == 1 else 'symbols'})")
        table.add_column("symbol", justify="right")
        table.add_column("productions")
        for a in range(min(cfg.v, max_rules)):
            table.add_row(
                str(a), "   ".join(" ".join(map(str, t)) for t in grammar.rules[k - 1][a])
            )
        if cfg.v > max_rules:
            table.add_row("…", f"{cfg.v - max_rules} more symbols")
        tables.append(table)
    return tables


# --- sweeps -----------------------------------------------------------------------------------


def status_table(
    status: SweepStatus, title: str | None = None, to_submit: set[str] | None = None
) -> Table:
    """One row per cell (v, m, s, L and the other keys that vary between cells), one column per
    state. to_submit (the run ids a submission takes): a plan instead, with the cell's P values,
    its done runs and those it would submit."""
    from rich.table import Table

    from rhmscale.sweeps.status import STATES

    columns = cell_parts(status.varying_keys())  # named as in the cells' labels
    plan = to_submit is not None
    if plan:
        shown = ["done", "to submit"]
    else:
        shown = [s for s in STATES if status.counts.get(s)] or ["pending"]
    table = Table(title=title or f"sweep {status.name}: {len(status.runs)} runs")
    for name in [*columns, "runs"]:
        table.add_column(name, justify="right")
    if plan:
        table.add_column("data.P", justify="left")
    for state in shown:
        table.add_column(state, justify="right")
    for cell in status.cells():
        counts = cell.counts
        if plan:
            counts["to submit"] = cell.count_in(to_submit)
        table.add_row(
            *(str(cell.cell[key]) for key in columns.values()),
            str(len(cell.runs)),
            *([format_values(cell.sizes)] if plan else []),
            *(str(counts.get(s, 0) or "") for s in shown),
        )
    table.add_section()
    totals = status.counts.copy()
    if plan:
        totals["to submit"] = len(to_submit)
    table.add_row(
        "all",
        *[""] * (len(columns) - 1),
        str(len(status.runs)),
        *([""] if plan else []),
        *(str(totals.get(s, 0)) for s in shown),
    )
    return table


def runs_table(status: SweepStatus) -> Table:
    """One row per finished run: its grid values and final per-level accuracy (result.json)."""
    from rich.table import Table

    finals = status.finals()
    done = [r for r in status.runs if r.run_id in finals]
    depth = max((run.grammar["L"] for run in done), default=0)
    keys = sorted({k for r in done for k in r.values})
    table = Table(
        title=f"sweep {status.name}: {len(done)} finished runs, accuracies at their LAST "
        "evaluation (fit uses each run's best by default: --at)"
    )
    for name in ["run", *short_names(keys)]:
        table.add_column(name, justify="right")
    metrics = [f"gen/novel_acc_l{k}" for k in range(1, depth + 1)]
    metrics += ["gen/novel_frac", "gen/memorized_frac"]
    headers = [f"l{k}" for k in range(1, depth + 1)] + ["novel", "memo"]
    for name in headers:  # short, so that 80 columns show them; the caption says what they are
        table.add_column(name, justify="right")
    levels = "l1" if depth == 1 else f"l1 .. l{depth}"
    table.caption = (
        f"{levels}: {' .. '.join(dict.fromkeys([metrics[0], metrics[depth - 1]]))} at the last "
        "evaluation; novel: gen/novel_frac; memo: gen/memorized_frac"
        if depth
        else None
    )
    for run in sorted(done, key=lambda r: [str(r.values.get(k)).zfill(12) for k in keys]):
        final = finals[run.run_id]
        cells = [f"{final[m]:.2f}" if m in final else "" for m in metrics]
        table.add_row(run.run_id[:8], *(str(run.values.get(k, "")) for k in keys), *cells)
    return table


def packs_table(plan: PackPlan) -> Table:
    """One row per pack, in the order they start (the most expensive first): what tells it
    from the other packs, what its members vary in, its expected steps and share of the work."""
    from rich.table import Table

    table = Table(title="packs (members train together on one device; longest first: ~ = expected)")
    table.add_column("pack", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("~steps", justify="right")
    table.add_column("~work", justify="right")
    for name in short_names([*plan.shape_keys, *plan.member_keys]):
        table.add_column(name)
    total = sum(pack.cost for pack in plan.packs) or 1.0
    for pack in plan.packs:
        table.add_row(
            str(pack.number),
            str(pack.size),
            f"{pack.steps:,}",
            f"{pack.cost / total:.1%}",
            *(str(pack.shape[key]) for key in plan.shape_keys),
            *(format_values(pack.members[key]) for key in plan.member_keys),
        )
    return table


# --- results ----------------------------------------------------------------------------------


def p_star_table(result: FitResult) -> Table:
    from rich.table import Table

    from rhmscale.report.export import RATIO, p_star_frame, p_star_text, ratio_text, size

    table = Table(
        title=f"P*_k: {result.options.metric} crosses {result.options.threshold} "
        f"(evaluation: {result.options.at})"
    )
    for name in ("cell", "k", "P*_k", f"{result.options.ci:.0%} interval", "theory P_k", RATIO):
        table.add_column(name, justify="left" if name == "cell" else "right")
    for _, row in p_star_frame(result).iterrows():
        value, interval = p_star_text(row)
        style = "yellow" if row["censored"] else None
        table.add_row(
            row["cell"], str(row["k"]), value, interval, size(row["P_theory"]),
            ratio_text(row), style=style,
        )  # fmt: skip
    return table


def exponent_table(result: FitResult) -> Table:
    from rich.table import Table

    from rhmscale.report.export import exponent_frame, number

    table = Table(title="exponents of log P*_k")
    for name in ("term", "estimate", f"{result.options.ci:.0%} interval", "theory", "off by"):
        table.add_column(name, justify="left" if name == "term" else "right")
    for row in exponent_frame(result).itertuples():
        inside = row.off_by <= 1
        table.add_row(
            row.term,
            number(row.estimate),
            f"[{number(row.lo)}, {number(row.hi)}]",
            number(row.theory),
            f"[{'green' if inside else 'red'}]{number(row.off_by, 1)}[/]",
        )
    return table


def robustness_table(table: pd.DataFrame, options: FitOptions) -> Table:
    """results.robustness's rows; a variant that moved an exponent in bold yellow, one that
    could not be fitted dim, with its reason."""
    from rich.markup import escape
    from rich.table import Table

    from rhmscale.report.export import number

    shown = Table(title="robustness: the exponents refitted with one choice changed")
    numbers = ("estimate", f"{options.ci:.0%} interval", "shift", "moved by", "moved")
    for name in ("variant", "term", *numbers, "note"):
        shown.add_column(name, justify="right" if name in numbers else "left")
    for row in table.itertuples():
        variant, note = escape(row.variant), escape(row.note)  # error texts may hold [brackets]
        if not row.term:
            shown.add_row(variant, "", "", "", "", "", "", note, style="dim")
            continue
        shown.add_row(
            variant, row.term, number(row.estimate), f"[{number(row.lo)}, {number(row.hi)}]",
            f"{row.shift:+.3f}", number(row.moved_by, 1), "moved" if row.moved else "", note,
            style="bold yellow" if row.moved else None,
        )  # fmt: skip
    return shown


HEAD_COLUMNS = ("run_id", "grammar.v", "grammar.m", "grammar.L", "data.P", "seed", "step")


def frame_head(frame: pd.DataFrame, rows: int = 5) -> Table:
    """The first rows of a collected table, a few of its columns (80 columns wide)."""
    from rich.table import Table

    columns = [c for c in HEAD_COLUMNS if c in frame.columns]
    metric = next((c for c in ("gen/novel_acc_l1", "val/loss") if c in frame.columns), None)
    columns += [metric] if metric else []
    table = Table(
        title=f"first {min(rows, len(frame))} of {len(frame)} rows, {len(columns)} of "
        f"{len(frame.columns)} columns"
    )
    for name in short_names(columns):
        table.add_column(name, justify="right")
    for _, row in frame.head(rows).iterrows():
        cells = [row[c] for c in columns]
        table.add_row(
            *(
                str(v)[:8] if c == "run_id" else f"{v:.3g}" if isinstance(v, float) else str(v)
                for c, v in zip(columns, cells, strict=True)
            )
        )
    return table


def refine_table(points: pd.DataFrame, target: float) -> Table:
    """`sweep refine`: per cell and level, P*_k, its interval, its bracket and what is proposed."""
    from rich.table import Table

    from rhmscale.report.export import number, p_star_text, size

    table = Table(title=f"brackets of P*_k (target: a ratio of {target:g})")
    for name in ("cell", "k", "P*_k", "interval", "bracket", "ratio", "proposed"):
        table.add_column(name, justify="left" if name in ("cell", "proposed") else "right")
    for _, row in points.iterrows():
        value, interval = p_star_text(row)
        left, right = (size(x) if x == x else "" for x in (row["P_left"], row["P_right"]))
        table.add_row(
            row["cell"], str(row["k"]), value, interval, f"{left} .. {right}",
            number(row["bracket_ratio"], 2), row["action"] or "[green]meets the target[/]",
        )  # fmt: skip
    return table
