"""W&B mirror of a run: the run store is the source of truth, W&B is the dashboard.

W&B run id = run_id, so a requeued run resumes the same W&B run; its name says what it is
('v=8 m=3 s=2 L=3 P=187 seed=0', labels.run_label); group = sweep name; the config is flattened
(dotted keys, plus `cell` and `run_id`) so that W&B's grouping, filters and parallel-coordinates
views work on every grid key. W&B's own folders are kept inside the run directory. Every
member of a pack has its own W&B run, open at the same time in one process (wandb's
reinit="create_new"), which is why this talks to wandb directly rather than through a logger
that logs the same metrics everywhere.

Metrics are logged with our training step as the column `step` (W&B's x axis for them), not as
W&B's internal step: a resumed run logs some steps again, which W&B's step would drop.

The mode (`tracking.wandb`) is settled before wandb is called, so that a machine without network
neither waits for minutes nor loses a run: `auto` is online only when there are credentials and
the W&B server answers within `tracking.connect_timeout` seconds, else offline with one warning
that says why and how to upload later (`wandb sync`); `online` raises a UserError in those cases.
The server is asked once per process and base URL (a pack of 32 runs asks once).

wandb reads its WANDB_* variables when first called and fails every run for one it cannot parse
(WANDB_MODE=garbage, WANDB_SILENT=maybe, a WANDB_BASE_URL that is not an http(s) URL): they are
checked first. `online` and `offline` then raise a UserError naming them; `auto` logs offline
with them hidden from wandb. Under `auto` no W&B failure costs the run, only its mirror: a run
that cannot start even offline, or whose logging fails later, goes on without W&B.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import netrc
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhmscale.config import RunConfig, TrackingConfig
from rhmscale.errors import UserError
from rhmscale.labels import cell_label, run_label
from rhmscale.store.folders import RunDir

SAMPLE_COLUMNS = ["step", "sample", "coherence_depth", "grammatical", "memorized"]
DEFAULT_BASE_URL = "https://api.wandb.ai"
DEFAULT_TIMEOUT = TrackingConfig.model_fields["connect_timeout"].default
FINISH_TIMEOUT_S = 300.0  # online: run.finish() gives up uploading after this (data kept on disk)
ENV_MODES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}

log = logging.getLogger(__name__)


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = base_url().split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


_answers: dict[str, str | None] = {}  # base URL -> None (it answered) or why it did not
_answers_lock = threading.Lock()


def server_problem(url: str, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None when the W&B server at `url` answers an HTTP request within `timeout` seconds (any
    HTTP response, an error status included), else why not, e.g. "did not answer within 5s".
    Asked once per process and URL; the request runs in a thread so that a slow DNS cannot
    hold the caller past the timeout."""
    with _answers_lock:
        if url not in _answers:
            _answers[url] = _ask(url, timeout)
        return _answers[url]


def _ask(url: str, timeout: float) -> str | None:
    answer: list[str | None] = []
    thread = threading.Thread(target=lambda: answer.append(_request(url, timeout)), daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # urlopen's timeout is per socket operation: bound the total
    return answer[0] if answer else f"did not answer within {timeout:g}s"


def _request(url: str, timeout: float) -> str | None:
    try:  # Request() itself raises for a malformed URL: in this thread, a traceback on stderr
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "rhmscale"})
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered, if only with an error status
    except ValueError as exc:  # not a URL urllib can open
        return f"is not a usable URL ({exc})"
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError | socket.timeout):
            return f"did not answer within {timeout:g}s"
        if isinstance(reason, ConnectionRefusedError):
            return "refused the connection"
        if isinstance(reason, socket.gaierror):
            return f"could not be found ({reason.strerror or reason})"
        if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "is unreachable (no route to it)"
        return f"did not answer ({reason})"


_refused: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}  # WANDB_* -> refused ones


def refused_settings() -> dict[str, str]:
    """The WANDB_* variables that wandb would refuse, each with why (wandb's own validation,
    asked once per set of variables)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("WANDB_")))
    if env not in _refused:
        import wandb

        refused = {}
        for name, value in env:
            try:
                wandb.Settings().update_from_env_vars({name: value})
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, UsageError...
                errors = getattr(exc, "errors", None)
                refused[name] = errors()[0]["msg"] if callable(errors) else first_line(exc)
        _refused[env] = refused
    return _refused[env]


def settings_problem() -> str | None:
    """What is wrong with the WANDB_* variables, naming them; None when wandb takes them."""
    refused = refused_settings()
    return (
        "; ".join(f"{k}={os.environ.get(k)!r} is not valid ({why})" for k, why in refused.items())
        or None
    )


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class Mode:
    """The W&B mode a run uses, and why `auto` chose offline (None when it did not)."""

    mode: str  # online, offline or disabled
    fallback: str | None = None

    def warning(self, folder: Path | str) -> str | None:
        """The one-line warning when `auto` fell back to offline, with the command that uploads
        the offline runs of `folder` (a run folder) later."""
        if self.fallback is None:
            return None
        return (
            f"W&B: {self.fallback}: logging offline; upload later with: "
            f"wandb sync {Path(folder).absolute() / 'wandb'}/offline-run-*"
        )


def choose_mode(mode: str, timeout: float = DEFAULT_TIMEOUT) -> Mode:
    """Settle tracking.wandb: auto -> online (credentials and a server that answers within
    `timeout` seconds) or offline (saying why); online -> UserError when either is missing.
    `auto` follows WANDB_MODE=offline|dryrun|disabled when it is set. WANDB_* variables that
    wandb refuses: a UserError naming them (online, offline), offline without them (auto)."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise UserError(f"tracking.wandb={mode!r}: use auto, online, offline or disabled")
    env_mode = ENV_MODES.get(os.environ.get("WANDB_MODE", "").lower())
    if mode == "disabled" or (mode == "auto" and env_mode == "disabled"):
        return Mode("disabled")
    if problem := settings_problem():
        if mode != "auto":
            raise UserError(
                f"tracking.wandb={mode}: {problem}; fix or unset "
                f"{' and '.join(refused_settings())}, or use --wandb disabled"
            )
        return Mode("offline", f"{problem}; ignored")
    if mode == "offline" or (mode == "auto" and env_mode == "offline"):
        return Mode("offline")
    url = base_url()
    if not has_credentials():
        if mode == "online":
            raise UserError(
                "tracking.wandb=online needs W&B credentials: set WANDB_API_KEY or run "
                f"`wandb login` (for {url}), or use --wandb auto or offline"
            )
        return Mode("offline", "no credentials (WANDB_API_KEY or `wandb login`)")
    problem = server_problem(url, timeout)
    if problem is None:
        return Mode("online")
    if mode == "online":
        raise UserError(
            f"tracking.wandb=online: the W&B server {url} {problem} (tracking.connect_timeout="
            f"{timeout:g}); check the network or WANDB_BASE_URL, or use --wandb auto or offline "
            "and `wandb sync` later"
        )
    return Mode("offline", f"the server {url} {problem}")


def resolve_mode(mode: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """online, offline or disabled for tracking.wandb `mode` (see choose_mode); a fallback to
    offline is logged."""
    chosen = choose_mode(mode, timeout)
    if chosen.fallback is not None and refused_settings():  # the caller's wandb would fail
        log.warning("W&B: %s: not logging to W&B", chosen.fallback)
        return "disabled"
    if chosen.fallback is not None:
        log.warning("W&B: %s: logging offline (upload later with `wandb sync`)", chosen.fallback)
    return chosen.mode


def init_timeout(connect_timeout: float) -> float:
    """How long wandb.init may take (wandb's default, 90 s, retried per member, is minutes)."""
    return max(10.0, 6 * connect_timeout)


@contextlib.contextmanager
def wandb_folders(run_dir: RunDir) -> Iterator[None]:
    """Point W&B's cache/data/artifact folders into the run directory while W&B is called, and
    hide the WANDB_* variables it would refuse (only `auto` gets this far with any)."""
    names = {
        "WANDB_DIR": run_dir.path,
        "WANDB_CACHE_DIR": run_dir.wandb / "cache",
        "WANDB_DATA_DIR": run_dir.wandb / "data",
        "WANDB_ARTIFACT_DIR": run_dir.wandb / "artifacts",
    }
    hidden = list(refused_settings())
    saved = {name: os.environ.get(name) for name in [*names, *hidden]}
    run_dir.wandb.mkdir(parents=True, exist_ok=True)
    os.environ.update({name: str(path) for name, path in names.items()})
    for name in hidden:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_open_runs: set[int] = set()  # id() of the MirrorRuns of this process not yet finished


class MirrorRun:
    """One run's open W&B run; each call runs inside the run folder's W&B folders.

    on_failure(exc), when given (tracking.wandb=auto), takes a failure to log instead of the
    run: it is called once, and the run is not mirrored any more."""

    def __init__(
        self, run: Any, run_dir: RunDir, on_failure: Callable[[Exception], None] | None = None
    ) -> None:
        self.run = run
        self.run_dir = run_dir
        self.on_failure = on_failure
        self.failed = False
        _open_runs.add(id(self))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._logged(lambda: self.run.log({**metrics, "step": step}))

    def log_samples(self, step: int, rows: list[list[Any]]) -> None:
        """Generated samples as a W&B table (rows: sample, depth, grammatical, memorized)."""
        import wandb

        def log_table() -> None:
            table = wandb.Table(columns=SAMPLE_COLUMNS, data=[[step, *row] for row in rows])
            self.run.log({"gen/samples": table, "step": step})

        self._logged(log_table)

    def _logged(self, action: Callable[[], None]) -> None:
        if self.failed:
            return
        with wandb_folders(self.run_dir):
            try:
                action()
            except Exception as exc:
                if self.on_failure is None:
                    raise
                self.failed = True
                self.on_failure(exc)

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        quiet = contextlib.suppress(Exception) if self.failed else contextlib.nullcontext()
        try:
            with wandb_folders(self.run_dir), quiet:  # a failed mirror has warned once
                if summary:
                    self.run.summary.update(summary)
                self.run.finish(exit_code=exit_code)
        finally:
            _open_runs.discard(id(self))


def open_run(config: RunConfig, run_dir: RunDir) -> MirrorRun | None:
    """Start (or resume) the run's W&B run; None when tracking is disabled.

    `online` raises a UserError (the run fails before it trains) when there are no
    credentials, the server does not answer, or wandb.init fails. `auto` logs one warning in
    the run's log and goes on offline instead; when wandb.init fails online while other runs of
    this process are open (wandb holds on to the failed run's id until it is torn down), or
    fails offline, the run goes on without a W&B run: the run folder has all of it."""
    tracking = config.tracking
    chosen = choose_mode(tracking.wandb, tracking.connect_timeout)
    if chosen.mode == "disabled":
        return None
    run_log = logging.getLogger(f"rhmscale.run.{config.run_id()}")
    auto = tracking.wandb == "auto"
    with wandb_folders(run_dir):
        try:
            run = _init(config, run_dir, chosen.mode)
        except Exception as exc:
            if chosen.mode != "online":
                if not auto:
                    raise
                why = "; ".join(filter(None, [chosen.fallback, "could not start offline"]))
                return _not_mirrored(run_log, f"{why} ({first_line(exc)})", run_dir)
            problem = f"could not start a run ({first_line(exc)})"
            with _answers_lock:  # the next members of a pack do not wait for it again
                _answers[base_url()] = problem
            if tracking.wandb == "online":
                raise UserError(f"W&B server {base_url()} {problem}") from exc
            chosen = Mode("offline", f"the server {base_url()} {problem}")
            if _open_runs:
                why = f"{chosen.fallback}; other W&B runs are open in this process"
                return _not_mirrored(run_log, why, run_dir)
            _teardown_wandb()  # frees the failed run's id for the offline run
            try:
                run = _init(config, run_dir, "offline")
            except Exception as again:  # noqa: BLE001 - auto: the run goes on without W&B
                why = f"{chosen.fallback}; nor offline ({first_line(again)})"
                return _not_mirrored(run_log, why, run_dir)
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
    if warning := chosen.warning(run_dir.path):
        run_log.warning(warning)

    def stop_mirroring(exc: Exception) -> None:
        _not_mirrored(run_log, f"logging failed ({first_line(exc)})", run_dir)

    return MirrorRun(run, run_dir, on_failure=stop_mirroring if auto else None)


def _not_mirrored(run_log: logging.Logger, why: str, run_dir: RunDir) -> None:
    """tracking.wandb=auto and W&B failed: one warning line, and the run goes on without it."""
    run_log.warning(
        "W&B: %s: the run goes on without W&B (its folder %s has all its results)",
        why,
        run_dir.path,
    )


def _teardown_wandb() -> None:
    import io

    import wandb

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        wandb.teardown()


def _init(config: RunConfig, run_dir: RunDir, mode: str) -> Any:
    import wandb

    tracking = config.tracking
    settings: dict[str, Any] = {"init_timeout": init_timeout(tracking.connect_timeout)}
    if mode == "offline":
        settings |= {"silent": True, "console": "off"}
    elif "finish_timeout" in wandb.Settings.model_fields:  # wandb >= 0.19.9
        settings["finish_timeout"] = FINISH_TIMEOUT_S
    return wandb.init(
        id=config.run_id(),
        name=run_label(config),
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group,
        job_type=tracking.job_type,
        tags=tracking.tags or None,
        dir=str(run_dir.path),
        mode=mode,
        resume="allow",
        config=config.flat() | {"run_id": config.run_id(), "cell": cell_label(config)},
        settings=wandb.Settings(**settings),
        reinit="create_new",  # the members of a pack each have a run, open at once
    )
