"""Prefetch: the runs that fill a pack's slots, set up ahead on a thread of their own."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from rhmscale.training.runs import Runs

log = logging.getLogger("rhmscale.training")


class Prefetch:
    """A Feed (trainer.Feed) that sets up the next runs of a shape on a thread of its own
    (data, checkpoint, W&B run: seconds each), `depth` of them ahead, so that a slot that
    empties takes a ready run without the training loop waiting. take() gives the next run
    to set up (its config, folder and the folder's lock), or None when there is none now;
    it is asked again every POLL_S while the pack lives, so runs submitted meanwhile join it.
    keep() says whether an empty pack should wait for more (a refinement loop's hold)."""

    POLL_S = 2.0

    def __init__(
        self,
        runs: Runs,
        take: Callable[[], Any],
        depth: int = 2,
        keep: Callable[[], bool] = lambda: False,
    ) -> None:
        self.runs, self.take, self.keep = runs, take, keep
        self.ready: queue.Queue = queue.Queue()
        self.room = threading.Semaphore(depth)
        self.stopping = threading.Event()
        self.found_none = threading.Event()  # the last look found nothing to take
        self.keeping = False  # keep() at that look
        self.thread = threading.Thread(target=self.work, name="rhmscale-prefetch", daemon=True)
        self.thread.start()

    def work(self) -> None:
        try:
            self.take_and_set_up()
        except Exception:  # a bug, not a run's failure (set_up records those): say it, and
            log.exception("setting up the next runs failed")  # let the pack end
            self.found_none.set()

    def take_and_set_up(self) -> None:
        while not self.stopping.is_set():
            if not self.room.acquire(timeout=0.2):
                continue
            taken = self.take()
            if taken is None:
                self.keeping = self.keep()  # asked here, not by the loop: it reads files
                self.found_none.set()
                self.room.release()
                self.stopping.wait(self.POLL_S)
                continue
            self.found_none.clear()
            member = self.runs.join(*taken)
            if member is None:  # its set-up failed: its outcome says so
                self.room.release()
            else:
                self.ready.put(member)

    def next(self) -> Any:
        try:
            member = self.ready.get_nowait()
        except queue.Empty:
            return None
        self.room.release()
        return member

    def exhausted(self) -> bool:
        return self.found_none.is_set() and self.ready.empty() and not self.keeping

    def stop(self) -> None:
        """No more set-ups; the one under way ends first. Runs set up and not taken stay in
        `runs` without an outcome (the caller says they were interrupted)."""
        self.stopping.set()
        self.thread.join()
