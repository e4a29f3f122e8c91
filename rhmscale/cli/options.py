"""Arguments and options that several commands take, each defined once.

Two groups of options are shared whole: the fit's settings (fit, export, plot, report) and the
executor's overrides (sweep plan, submit, retry; tune submit, retry). `option_group` makes a
decorator that puts a group's options into a command's signature, where the command has a
parameter of the group's name, and calls the command with that parameter set to one object
built from them, so that typer parses and documents each option as if the command had
declared it.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rhmscale.bounds import OPTIONS

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML RunConfig file (partial is fine).")
]
OverrideArgs = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides key=value, as Hydra takes them: grammar.v=32 data.P=512.",
        show_default=False,
    ),
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="A dotted override key=value, as the arguments (repeatable)."),
]


def refuse_old_override(values: list[str] | None) -> None:
    """-o was the override option; it is an output path in every command now."""
    if values:
        raise typer.BadParameter(
            "-o is an output path in every command now; give overrides as arguments "
            f"({' '.join(values)}) or with --set KEY=VALUE"
        )


OldOverrideOpt = Annotated[
    list[str] | None, typer.Option("-o", hidden=True, callback=refuse_old_override)
]
RootOpt = Annotated[Path, typer.Option(help="Runs root folder.")]
RunsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Sweep folders <root>/<sweep>, folders of runs, or tables written by `rhmscale "
        "collect -o` (.csv, .parquet); several are fitted together (a run in two counts once)."
    ),
]
SpecArg = Annotated[
    str,
    typer.Argument(
        help="Sweep spec YAML file, or a preset name (quick, paper-lite, paper, paper-transformer)."
    ),
]
SweepPathArg = Annotated[Path, typer.Argument(help="The sweep folder: <root>/<sweep name>.")]
WaitOpt = Annotated[
    bool | None,
    typer.Option(help="Wait for the jobs (default: yes for local/debug, no for slurm)."),
]

WANDB_MODES = ("auto", "online", "offline", "disabled")


def check_wandb_mode(value: str | None) -> str | None:
    """--wandb's callback: a bad mode is the option's mistake (not the YAML's tracking.wandb)."""
    if value is not None and value not in WANDB_MODES:
        raise typer.BadParameter(f"{value!r}: use {', '.join(WANDB_MODES)}")
    return value


def bounded(flag: str, help: str, *names: str) -> Any:
    """A numeric option whose bound is OPTIONS[flag] (rhmscale/bounds.py): its --help states
    it, and a value outside is refused (exit 2) before the command starts."""
    bound = OPTIONS[flag]

    def check(value: float | None) -> float | None:
        if value is not None and not bound.holds(value):
            raise typer.BadParameter(f"{value}; it must be {bound.text} ({bound.why})")
        return value

    return typer.Option(flag, *names, help=f"{help} ({bound.text}).", callback=check)


Options = dict[str, tuple[Any, Any]]  # parameter name -> (Annotated type, default)


def option_group(
    name: str, options: Options, build: Callable[[dict[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: `options` replace the command's parameter `name` in its signature (in its
    place, so --help lists them there); the command gets name=build({option: value})."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        others = set(signature.parameters) - {name}
        if name not in signature.parameters or set(options) & others:
            raise TypeError(f"{command.__name__} needs a parameter '{name}' and none of {options}")
        # The command's own annotations, evaluated (they are strings under `from __future__
        # import annotations`); the group's parameter is left out: its type may be one that
        # is imported only when the command runs.
        own = {p: a for p, a in command.__annotations__.items() if p not in (name, "return")}
        hints = typing.get_type_hints(
            types.SimpleNamespace(__annotations__=own),
            globalns=command.__globals__,
            include_extras=True,
        )
        params = []
        for param in signature.parameters.values():
            if param.name == name:
                params += [
                    inspect.Parameter(
                        option, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a
                    )
                    for option, (a, d) in options.items()
                ]
            else:
                annotation = hints.get(param.name, param.annotation)
                kind = inspect.Parameter.KEYWORD_ONLY
                params.append(param.replace(kind=kind, annotation=annotation))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            group = {option: kwargs.pop(option) for option in options}
            return command(**kwargs, **{name: build(group)})

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=inspect.Signature.empty
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# --- the fit's settings: rhmscale.results FitOptions (tests check the defaults agree) ---------

FIT_OPTIONS: Options = {
    "threshold": (
        Annotated[float, bounded("--threshold", "Accuracy at which a level counts as learned")],
        0.5,
    ),
    "at": (
        Annotated[
            str,
            typer.Option(
                help="Evaluation used per run: best (lowest val/loss, before memorisation), "
                "final, or a training step."
            ),
        ],
        "best",
    ),
    "metric": (
        Annotated[
            str,
            typer.Option(
                help="Per-level metric; {k} is the level. Default: among samples that are not "
                "copies of a training sequence (gen/acc_l{k} counts copies as learned)."
            ),
        ],
        "gen/novel_acc_l{k}",
    ),
    "regressors": (
        Annotated[
            str,
            typer.Option(
                help="Comma-separated regressors of log P*_k: log v, log m, k, k log m, "
                "(k+1) log m, log s, L."
            ),
        ],
        "log v, (k+1) log m",
    ),
    "theory": (
        Annotated[str, typer.Option(help="Predicted P_k, a formula in v, m, s, L, k.")],
        "v * m^(k+1)",
    ),
    "where": (
        Annotated[
            str,
            typer.Option(
                help='Fit only these cells: "s=2", "L=3, v=16|32" (grammar letters or config keys).'
            ),
        ],
        "",
    ),
    "levels": (
        Annotated[
            str,
            typer.Option(
                help="Levels whose P*_k enter the exponent fit: all, 2-, 2-3 or 1 (the P*_k "
                "table lists every level)."
            ),
        ],
        "all",
    ),
    "n_boot": (
        Annotated[int, bounded("--n-boot", "Bootstrap replicates")],
        1000,
    ),
}


def _fit_options(values: dict[str, Any]) -> Any:
    from rhmscale.results.fit import FitOptions

    return FitOptions(**values)


fit_options = option_group("fit", FIT_OPTIONS, _fit_options)


# --- the executor's overrides: fields of the spec's executor (sweeps.spec.ExecutorSpec) -------

EXECUTOR_OPTIONS: Options = {
    "executor": (
        Annotated[
            str | None,
            typer.Option("--executor", "-e", help="local, slurm or debug (default: the spec's)."),
        ],
        None,
    ),
    "partition": (Annotated[str | None, typer.Option(help="SLURM partition.")], None),
    "runs_per_task": (
        Annotated[int | None, bounded("--runs-per-task", "Runs one array task runs in sequence")],
        None,
    ),
    "array_parallelism": (
        Annotated[int | None, bounded("--array-parallelism", "Array tasks running at once")],
        None,
    ),
    "timeout_min": (
        Annotated[int | None, bounded("--timeout-min", "Time limit of a task, minutes")],
        None,
    ),
    "cpus_per_task": (Annotated[int | None, bounded("--cpus-per-task", "CPUs of a task")], None),
    "gpus_per_task": (Annotated[int | None, bounded("--gpus-per-task", "GPUs of a task")], None),
    "tasks_per_gpu": (
        Annotated[
            int | None,
            bounded(
                "--tasks-per-gpu",
                "Tasks sharing each GPU (SLURM: as GPU shards, see --shards-per-gpu)",
            ),
        ],
        None,
    ),
    "gpu_type": (
        Annotated[str | None, typer.Option(help="SLURM: GPU model to request, e.g. h100.")],
        None,
    ),
    "shards_per_gpu": (
        Annotated[
            int | None, bounded("--shards-per-gpu", "SLURM: the cluster's GPU shards per GPU")
        ],
        None,
    ),
    "constraint": (
        Annotated[str | None, typer.Option(help="SLURM: node features (--constraint).")],
        None,
    ),
}


def _executor_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """ExecutorSpec fields to override; --executor is the field `kind`."""
    return {("kind" if option == "executor" else option): v for option, v in values.items()}


executor_options = option_group("overrides", EXECUTOR_OPTIONS, _executor_overrides)
