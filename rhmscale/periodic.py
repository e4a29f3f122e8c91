"""A call repeated on a thread of its own while a block runs (a progress display, a heartbeat)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def repeating(call: Callable[[], object], every_s: float, name: str) -> Iterator[None]:
    """call() at once, then every `every_s` seconds on a daemon thread named `name`, until the
    block ends; the block's end waits for a call under way (none runs after it)."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            call()
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
