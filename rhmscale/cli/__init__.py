"""The `rhmscale` command: the typer app assembled from the command modules, and `main`.

A UserError (a mistake in the input) is printed on stderr without a traceback, exit code 2; so
is a file-system failure the user can fix (disk full, read-only, a path through a file: see
cli/failures.py), as `error: cannot write <path>: <reason>`. Ctrl-C or SIGTERM ends a command with
one line and exit 130 or 143 (cli/interrupt.py). Any other exception is a bug: its traceback
stays, followed by one line naming its type and where, exit code 1.
Library modules are imported inside the commands, so that `rhmscale --help` stays fast (no
torch, no pandas).
"""

from __future__ import annotations

import sys

import typer

from rhmscale.cli import refine, results, run
from rhmscale.cli.sweep import sweep_app
from rhmscale.cli.tune import tune_app
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
refine.register(sweep_app)  # sweep refine reads results: its own module
app.add_typer(sweep_app, name="sweep")
app.add_typer(tune_app, name="tune")


def main() -> None:
    try:
        run_app()
    except Exception as exc:  # noqa: BLE001 - not an input mistake (those are UserErrors): a bug
        bug(exc)


def run_app() -> None:
    from rhmscale.cli import interrupt
    from rhmscale.cli.failures import NamedStdout, cannot_write, silence_stdout

    sys.stdout = NamedStdout(sys.stdout)
    try:
        try:
            with interrupt.signals_interrupt():
                app()
        finally:
            sys.stdout.flush()  # a full disk under `> file` fails here at the latest
    except BrokenPipeError:  # `rhmscale ... | head` stopped reading: what it wanted, it has
        silence_stdout()
        sys.exit(0)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside typer's reach
        interrupt.report(exc)
    except SystemExit as exc:
        # click's own answer to a reader that stopped while a command wrote: exit code 1,
        # stdout wrapped so that nothing more is written.
        if exc.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            silence_stdout()
            sys.exit(0)
        if exc.code == 130 and (stopped := interrupt.interruption(exc)) is not None:
            interrupt.report(stopped)  # typer's exit for a KeyboardInterrupt (or SIGTERM)
        raise
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:
        message = cannot_write(exc)
        if message is None:
            raise
        silence_stdout()
        fail(message)


def bug(exc: Exception) -> None:
    """An exception no input explains: its traceback, then one line naming its type and where
    it was raised, exit code 1 (an input mistake's is 2)."""
    import traceback

    traceback.print_exc()
    where = traceback.extract_tb(exc.__traceback__)[-1]
    print(
        f"error: unexpected {type(exc).__name__} at {where.filename}:{where.lineno}: a bug in "
        "rhmscale, not a mistake in the input; please report it with the traceback above",
        file=sys.stderr,
    )
    sys.exit(1)


def fail(message: str) -> None:
    """One line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
