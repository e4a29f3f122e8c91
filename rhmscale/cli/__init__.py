"""The `rhmscale` command: the typer app assembled from the command modules, and `main`.

A UserError (a mistake in the input) is printed on stderr without a traceback, exit code 2.
Library modules are imported inside the commands, so that `rhmscale --help` stays fast (no
torch, no pandas).
"""

from __future__ import annotations

import sys

import typer

from rhmscale.cli import results, run
from rhmscale.cli.sweep import sweep_app
from rhmscale.errors import UserError

app = typer.Typer(
    name="rhmscale",
    help="Sample complexity of masked diffusion models on the Random Hierarchy Model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run.register(app)  # commands in workflow order: run, collect, fit, export, plot, report
results.register(app)
app.add_typer(run.grammar_app, name="grammar")
app.add_typer(run.config_app, name="config")
app.add_typer(sweep_app, name="sweep")


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
