"""The runs one process trains (Runs): their logs, set-up, training in slots and records.

Each run keeps its own directory, as if it had trained alone: config.json, grammar.json,
metrics.parquet, checkpoints/last.ckpt (its own slice), run.log, its own W&B run, result.json
written last (its presence means done), failed.json when it failed. Set-up that is not training
happens off the training thread: a pack's first runs are set up side by side on threads, the
runs that fill its slots later on a Prefetch thread (training.prefetch), and a run that ended
closes its W&B run and writes result.json on a closing thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import platform
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale import __version__
from rhmscale.config import RunConfig
from rhmscale.store import wandb_mirror
from rhmscale.store.atomic import atomic_write_json, atomic_write_text
from rhmscale.store.folders import RunDir
from rhmscale.store.lock import job_id, node_name
from rhmscale.store.run_log import RunLogHandler
from rhmscale.training.schedule import VERDICTS


@dataclass
class RunOutcome:
    state: str  # "done", "interrupted", or "failed" (failed.json written)
    run_dir: Path
    result: dict[str, Any] | None  # result.json's content when done
    error: str | None = None  # "failed": "Type: message"; "running": where


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# Runs set up at once before a pack's first step: their W&B runs, data and checkpoints load on
# threads side by side (a pack of 27 set up one after the other took 7 s).
SET_UP_THREADS = 8


class Runs:
    """The runs one process trains, by run id: their logs, set-up, training in slots, and
    records. Runs may be added and set up on another thread while others train (Prefetch)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.lock = threading.RLock()  # the dicts below, between the training and set-up threads
        self.configs: dict[str, RunConfig] = {}
        self.stores: dict[str, RunDir] = {}
        self.judges: dict[str, Any] = {}
        self.log: dict[str, logging.Logger] = {}
        self.handlers: dict[str, logging.Handler] = {}
        self.todo: list[str] = []  # added, not yet set up
        self.locks: dict[str, Any] = {}  # the run folders' locks, released at their outcome
        self.members: dict[str, Any] = {}  # run id -> trainer.Member, once set up
        self.outcomes: dict[str, RunOutcome] = {}
        self.closing: set[str] = set()  # done, their W&B run and result.json being closed
        self.closer: ThreadPoolExecutor | None = None
        self.fabric: Any = None  # the device and precision the runs share, once training

    def add(
        self, config: RunConfig, store: RunDir, judge: Any = None, lock: Any = None, todo=True
    ) -> str:
        """A run to train (in todo: set up when training starts), whose folder's lock the
        caller took (released with its outcome); its run.log opens."""
        run_id = config.run_id()
        with self.lock:
            if lock is not None:
                self.locks[run_id] = lock
            self.configs[run_id], self.stores[run_id] = config, store
            self.judges[run_id] = judge
        logger = logging.getLogger(f"rhmscale.run.{run_id}")
        store.path.mkdir(parents=True, exist_ok=True)
        handler = RunLogHandler(str(store.usable_log()), run_id)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        with self.lock:
            self.log[run_id], self.handlers[run_id] = logger, handler
            if todo:
                self.todo.append(run_id)
        return run_id

    def close_logs(self, run_ids: list[str] | None = None) -> None:
        with self.lock:
            run_ids = list(self.handlers) if run_ids is None else run_ids
        for run_id in run_ids:
            with self.lock:
                handler = self.handlers.pop(run_id, None)
            if handler is not None:
                self.log[run_id].removeHandler(handler)
                handler.close()

    def ended(self, run_id: str, outcome: RunOutcome) -> None:
        """The run's outcome: its log closes and its folder's lock is released."""
        with self.lock:
            self.outcomes[run_id] = outcome
            lock = self.locks.pop(run_id, None)
        self.close_logs([run_id])
        if lock is not None:
            lock.release()

    def join(self, config: RunConfig, store: RunDir, lock: Any = None) -> Any:
        """A run added and set up while others train (a feed's): its Member, or None when its
        set-up failed (its outcome says so)."""
        return self.set_up(self.add(config, store, lock=lock, todo=False), self.fabric)

    def prepare(self) -> None:
        """The device and precision the runs share (imports torch and Lightning)."""
        # Heavy imports here, so that importing rhmscale.training (and the CLI) stays cheap.
        from rhmscale.training.fabric import make_fabric

        if self.fabric is None:
            self.fabric = make_fabric(self.configs[self.todo[0]])

    def train(
        self, progress, stop_at_step, should_stop, on_step, feed=None, slots=None, room=0
    ) -> None:
        """Set up the added runs and train them in one pack of slots (feed: more runs of the
        shape for slots that empty, e.g. a Prefetch; slots, room: see Trainer); every run
        ends with an outcome."""
        self.prepare()
        todo = list(self.todo)
        with ThreadPoolExecutor(min(SET_UP_THREADS, len(todo))) as pool:
            members = [m for m in pool.map(self.set_up, todo) if m is not None]
        if should_stop is not None and should_stop():  # asked to stop while setting up
            self.interrupted(self.unfinished())
        elif members or feed is not None:
            self.fit(members, progress, stop_at_step, should_stop, on_step, feed, slots, room)

    def set_up(self, run_id: str, fabric: Any = None) -> Any:
        """The run's directory, data, checkpoint and W&B run: its Member, or None when one of
        them raised (the run fails alone)."""
        from rhmscale.rhm.data import make_datasets
        from rhmscale.training import checkpoint
        from rhmscale.training.fabric import device_note
        from rhmscale.training.member import Member

        fabric = fabric or self.fabric
        with self.lock:
            if run_id in self.todo:
                self.todo.remove(run_id)
            config, store, log = self.configs[run_id], self.stores[run_id], self.log[run_id]
        mirror = None
        try:
            store.failed.unlink(missing_ok=True)  # a retry starts clean
            for stale in store.clean_temporaries():
                log.info("removed %s, left by an interrupted write", stale.name)
            for said in store.set_aside_damaged():  # not done (execute skips those)
                log.warning("%s; training the run again from its checkpoint", said)
            write_config(store, config)
            job = f" (job {job_id()})" if job_id() else ""
            log.info("run %s on %s%s in %s", run_id, node_name(), job, store.path)
            log.info(device_note(fabric.device))
            data = make_datasets(config)
            atomic_write_text(store.grammar, data.grammar.to_json())
            state = checkpoint.load_newest(fabric, store, run_id, log)
            if state is not None and state["history"]:
                store.write_metrics(state["history"])  # whatever happened to metrics.parquet
            mirror = wandb_mirror.open_run(config, store)
            member = Member(
                config, data, store, mirror=mirror, state=state, judge=self.judges[run_id]
            )
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(run_id, exc, mirror)
            return None
        with self.lock:
            self.members[run_id] = member
        return member

    def fit(self, members, progress, stop_at_step, should_stop, on_step, feed, slots, room) -> None:
        """Train the members in slots; when half the slots are empty for good, the others go
        on in a smaller pack (re-stacked from their in-memory state)."""
        from rhmscale.training.trainer import Trainer

        fabric = self.fabric
        if not members:  # a feed's first run
            while (member := feed.next()) is None and not feed.exhausted():
                time.sleep(0.05)
            if member is None:
                return
            members = [member]

        def run_id(member: Any) -> str:
            return member.config.run_id()

        try:
            while True:
                self.log_start(members, fabric)
                trainer = Trainer(
                    members,
                    fabric,
                    slots=slots,
                    room=room,
                    feed=feed,
                    on_step=on_step,
                    on_member_error=lambda m, exc: self.fail(run_id(m), exc),
                    on_member_done=lambda m: self.record_done(run_id(m), fabric),
                    on_member_start=lambda m: self.mark(run_id(m), "training"),
                    on_note=self.note,
                )
                ended = trainer.fit(
                    stop_at_step=stop_at_step, should_stop=should_stop, progress=progress
                )
                if ended != "restack":
                    break
                members, slots = [], None  # the smaller pack: the runs left
                for k, state in trainer.member_states(trainer.training()).items():
                    members.append(trainer.slots[k])
                    members[-1].state = state
                del trainer  # its GPU memory and graph, before the smaller pack's
        except (KeyboardInterrupt, SystemExit) as exc:
            self.drain()
            for r in self.unfinished():
                self.log[r].warning("run %s interrupted: %r", r, exc)
                self.finish_wandb(r, exit_code=1)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in every member's failed.json
            self.drain()
            for r in self.unfinished():
                self.fail(r, exc)
            return
        self.drain()
        self.interrupted(self.unfinished())

    def unfinished(self) -> list[str]:
        """Runs set up, without an outcome yet."""
        with self.lock:
            return [r for r in self.members if r not in self.outcomes and r not in self.closing]

    def mark(self, run_id: str, what: str) -> None:
        """Say in the run folder's lock what its worker does with it (store.lock.Held.mark)."""
        with self.lock:
            lock = self.locks.get(run_id)
        if lock is not None:
            lock.mark(what)

    def note(self, message: str) -> None:
        """A line about the pack in the run.log of each run not yet ended."""
        for r in self.unfinished():
            self.log[r].info(message)

    def log_start(self, members: list[Any], fabric: Any) -> None:
        ids = ", ".join(m.config.run_id() for m in members)
        for m in members:
            self.log[m.config.run_id()].info(
                "training %d run(s) from step %d on %s (%s, compile %s), in slots: %s",
                len(members),
                m.state["step"] if m.state else 0,  # this run's own step
                fabric.device,
                precision_of(fabric),
                m.config.train.compile,
                ids,
            )

    def record_done(self, run_id: str, fabric: Any) -> None:
        """The run ended: its result is made here, its W&B run closed and result.json written
        on the closing thread (closing a W&B run takes a second or more; the slot is free at
        once). drain() waits for them."""
        try:
            member = self.members[run_id]
            result = result_record(
                self.configs[run_id],
                member.history,
                fabric.device.type,
                precision_of(fabric),
                self.started,
            )
            result |= {verdict: member.verdict == verdict for verdict in VERDICTS}
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(run_id, exc)
            return
        with self.lock:
            self.closing.add(run_id)
            if self.closer is None:
                self.closer = ThreadPoolExecutor(1, thread_name_prefix="rhmscale-close")
        self.closer.submit(self.close_done, run_id, result)

    def close_done(self, run_id: str, result: dict[str, Any]) -> None:
        member, store = self.members[run_id], self.stores[run_id]
        try:
            self.finish_wandb(run_id, summary={f"final/{k}": v for k, v in result["final"].items()})
            atomic_write_json(store.result, result)  # last: its presence means done
        except Exception as exc:  # noqa: BLE001 - that run fails, the others go on
            self.fail(run_id, exc)
        else:
            how = member.verdict or "stopped early"
            early = f", {how} at step {result['final']['step']}" * result["stopped_early"]
            self.log[run_id].info("run %s done%s", run_id, early)
            self.ended(run_id, RunOutcome("done", store.path, result))
        finally:
            with self.lock:
                self.closing.discard(run_id)

    def drain(self) -> None:
        """Wait for the runs being closed (record_done)."""
        with self.lock:
            closer, self.closer = self.closer, None
        if closer is not None:
            closer.shutdown(wait=True)

    def interrupted(self, run_ids: list[str]) -> None:
        for r in run_ids:
            self.finish_wandb(r)
            self.log[r].info("run %s stopped at a checkpoint; resubmit to resume", r)
            self.ended(r, RunOutcome("interrupted", self.stores[r].path, None))

    def fail(self, run_id: str, exc: BaseException, mirror: Any = None) -> None:
        self.log[run_id].error("run %s failed", run_id, exc_info=exc)
        record = getattr(exc, "record", {})  # e.g. reason "diverged" and the step
        store = self.stores[run_id]
        try:
            store.write_failed(run_id, exc, **record)
        except OSError as write_error:  # a full disk: the log and the outcome still say it
            self.log[run_id].error("could not write failed.json: %s", write_error)
        if run_id in self.members:
            self.finish_wandb(run_id, exit_code=1)
        elif mirror is not None:
            with contextlib.suppress(Exception):
                mirror.finish(exit_code=1)
        self.ended(
            run_id, RunOutcome("failed", store.path, None, f"{type(exc).__name__}: {exc}"[:500])
        )

    def finish_wandb(self, run_id: str, summary: dict[str, Any] | None = None, exit_code=0) -> None:
        """Close the run's W&B run. W&B may be gone already (after a SIGTERM): one line in the
        log then, never an error that hides the run's own outcome."""
        mirror = self.members[run_id].mirror
        if mirror is None:
            return
        try:
            mirror.finish(summary, exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001 - see above
            self.log[run_id].warning("could not close the W&B run: %r", exc)


def precision_of(fabric: Any) -> str:
    """Fabric's precision setting: "bf16-mixed" or "32-true"."""
    return fabric.strategy.precision.precision


def write_config(store: RunDir, config: RunConfig) -> None:
    atomic_write_json(
        store.config,
        {
            "run_id": config.run_id(),
            "config": config.model_dump(mode="json"),
            "version": __version__,
        },
    )


def result_record(
    config: RunConfig, history: list[dict[str, Any]], device: str, precision: str, started: float
) -> dict[str, Any]:
    """result.json's content for a finished run (its last evaluation is the final one; `best`
    the step of its lowest val/loss, what `fit --at best` takes)."""
    scored = [row for row in history if math.isfinite(row["val/loss"])]
    return {
        "run_id": config.run_id(),
        "config": config.model_dump(mode="json"),
        "final": history[-1],
        "n_evals": len(history),
        "stopped_early": history[-1]["step"] < config.train.max_steps,
        "best_step": min(scored, key=lambda row: row["val/loss"])["step"] if scored else None,
        "device": device,
        "precision": precision,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "version": __version__,
        "session_wall_s": time.perf_counter() - started,
        "finished_at": now(),
    }
