"""`rhmscale sweep refine`: more runs where the sweep's P*_k are still loose (imports stay
inside the command). What to run is decided in results/refinement.py, how the spec grows in
sweeps/refine.py; this only wires them to the plan and the submission."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rhmscale.cli.console import make_console
from rhmscale.cli.failures import check_output_file, writing
from rhmscale.cli.options import SweepPathArg, WaitOpt, bounded, executor_options, fit_options
from rhmscale.errors import UserError

if TYPE_CHECKING:
    from rhmscale.results.fit import FitOptions

MAX_ROUNDS = 20  # --until: a bound on rounds (each adds runs, so the budget ends it sooner)
POLL_S = 10.0  # --until: how often the round's runs are looked at


def sweep_refine(
    path: SweepPathArg,
    target: Annotated[
        float,
        bounded("--target", "Refine every bracket of a P*_k wider than this ratio of sizes"),
    ] = 1.25,
    seeds: Annotated[
        int | None,
        bounded(
            "--seeds",
            "Seeds per proposed size (and added where seed noise widens an interval); "
            "default: as many as the cell's sizes have",
        ),
    ] = None,
    max_runs: Annotated[
        int | None,
        bounded("--max-runs", "Budget: the most runs the sweep may hold after refining"),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the grown spec (YAML) here, atomically."),
    ] = None,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit", help="Submit the new runs into the sweep (sweep.yaml records the growth)."
        ),
    ] = False,
    until: Annotated[
        bool,
        typer.Option(
            "--until",
            help="Unattended: refine, submit and wait for the new runs, round after round, "
            "until every bracket meets the target or the budget is spent (implies --submit); "
            "the sweep's workers stay alive between rounds.",
        ),
    ] = False,
    wait: WaitOpt = None,
    *,
    fit: FitOptions,
    overrides: dict[str, Any],
) -> None:
    """Propose runs inside every P*_k bracket wider than --target (log-midpoints), beyond the
    grid for censored cells, and seeds where seed noise sets the interval; print the plan,
    write the grown spec (-o) or submit it (--submit). Repeat after the runs are done, until
    every bracket meets the target or the budget is spent (--until does that by itself)."""
    from rhmscale.cli.sweep import follow

    if not until:
        submission = refine_round(path, target, seeds, max_runs, output, submit, fit, overrides)
        if submission is not None:
            follow(submission, wait)
        return
    refine_until(path, target, seeds, max_runs, output, fit, overrides)


def refine_until(path, target, seeds, max_runs, output, fit, overrides) -> None:
    """Rounds of refine_round, each waiting for its runs, under a hold that keeps the
    sweep's workers (and their compiled packs) alive between rounds. Its state is the sweep
    folder: run again after a restart, it goes on from the runs that are done."""
    from rhmscale.cli.interrupt import stopping
    from rhmscale.cli.sweep import print_status
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.backlog import ENDED, hold
    from rhmscale.sweeps.dispatch import apply_executor_overrides, cancel_jobs, wait_jobs, wait_runs
    from rhmscale.sweeps.status import load_sweep_spec

    console = make_console()
    sweep = SweepDir(path.resolve())
    kind = apply_executor_overrides(load_sweep_spec(sweep).executor, overrides).kind
    jobs = []  # the local workers this loop started: its children, waited for at the end
    status = f"rhmscale sweep status {path}"
    with stopping(kind, jobs, lambda: cancel_jobs(sweep), status), hold(sweep):
        for round_number in range(1, MAX_ROUNDS + 1):
            console.rule(f"refine round {round_number}")
            submission = refine_round(path, target, seeds, max_runs, output, True, fit, overrides)
            if submission is None:
                break
            if submission.prepared.executor.kind != "slurm":  # end with this process
                jobs += submission.jobs
            ids = submission.prepared.run_ids
            console.print(f"waiting for {len(ids)} run(s) ...")

            def said(states: dict[str, str]) -> None:
                counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(states.values()).items()))
                console.print(f"  {counts}", markup=False)

            states = wait_runs(sweep, ids, poll_s=POLL_S, on_poll=said)
            if not all(state in ENDED for state in states.values()):
                console.print(
                    "[red]no worker is left to train the round's other runs[/]: see "
                    f"rhmscale sweep status {path}; run this command again to go on"
                )
                raise typer.Exit(1)
        else:
            console.print(f"[yellow]stopped after {MAX_ROUNDS} rounds[/]")
    errors = wait_jobs(jobs)
    for err in errors:
        console.print(f"[red]{err}[/]")
    print_status(path, json_out=False, failures=10)


def refine_round(path, target, seeds, max_runs, output, submit, fit, overrides) -> Any:
    """One refinement: plan it, write it (-o), submit it (--submit); the submission, or None
    when there is nothing new to run or it was not submitted."""
    from rhmscale.cli.sweep import print_plan
    from rhmscale.cli.tables import refine_table
    from rhmscale.config import size_key
    from rhmscale.results.collect import collect
    from rhmscale.results.refinement import refinement
    from rhmscale.store.atomic import atomic_write_text
    from rhmscale.store.folders import SweepDir
    from rhmscale.sweeps.dispatch import prepare
    from rhmscale.sweeps.dispatch import submit as submit_spec
    from rhmscale.sweeps.refine import grow, growth_record
    from rhmscale.sweeps.spec import spec_to_yaml
    from rhmscale.sweeps.status import load_sweep_spec

    path = path.resolve()
    spec = load_sweep_spec(SweepDir(path))
    if path.name != spec.name:
        raise UserError(f"{path} holds sweep '{spec.name}': its folder must be named so")
    if output is not None:
        check_output_file(output)
    collection = collect(path)
    console = make_console()
    console.print(f"[dim]{path}: {collection.summary()}[/]")
    if collection.frame.empty:
        raise UserError(f"no finished runs in {path} to refine from ({collection.summary()})")
    found = refinement(collection.frame, fit, target, seeds)
    growth = grow(spec, found.proposals.to_dict("records"), max_runs)
    console.print(refine_table(found.points, target))
    done = collection.counts()["done"]
    if done < growth.n_before:
        console.print(
            f"[yellow]note:[/] {growth.n_before - done} of the sweep's {growth.n_before} runs are "
            "not done: the brackets are those of the done runs (the others are not proposed again)"
        )
    for proposal, why in growth.left:
        console.print(f"  not proposed: {proposal['cell']} P={proposal[size_key()]}: {why}")
    root = path.parent
    if not growth.taken:
        met = (found.points["action"] == "").all()
        console.print(
            "every bracket meets the target: nothing to refine"
            if met
            else "nothing new to run (the table and the lines above say why)"
        )
        return None
    console.print(
        f"refinement: {growth.n_added} new run(s) at {len(growth.taken)} size(s) "
        f"({growth.n_before} -> {growth.n_before + growth.n_added} runs)"
    )
    # The plan validates the executor's overrides and the folder's runs before anything is written.
    prepared = prepare(growth.spec, root, executor=overrides, runs=growth.run_ids)
    if output is not None:
        with writing(output):
            atomic_write_text(output, spec_to_yaml(growth.spec))
        console.print(f"wrote the grown spec to {output}")
    if not submit:
        print_plan(prepared, root)
        console.print(f"submit it with: rhmscale sweep refine {path} --submit (same options)")
        return None
    with writing(path):
        submission = submit_spec(growth.spec, root, executor=overrides, runs=growth.run_ids)
        SweepDir(path).append_job_line(growth_record(growth, target, max_runs))
    return submission


def register(app: typer.Typer) -> None:
    app.command("refine")(executor_options(fit_options(sweep_refine)))
