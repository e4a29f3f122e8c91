"""The dev SLURM cluster for tests: bring it to the tests' settings, put it back afterwards.

Import the session fixture in tests/conftest.py::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401

A test that takes ``slurm_cluster`` gets the environment of a running cluster (``SLURM_CONF``
is also set in ``os.environ`` for the whole session) that runs with :data:`TEST_SETTINGS`:
three nodes (tests/test_slurm_nodes.py: arrays spread over nodes, a node lost, a node
drained), one declared GPU of 4 shards on node1 (tests/test_sweep_slurm_gpu.py) and accounting
(sacct). The first such test of a session starts the cluster, or restarts it through
``slurm/dev-cluster.sh start`` when it runs with other settings; at the end of the session the
cluster is put back as it was (stopped again, or restarted with the user's settings), and the
test summary says what was done (:data:`SESSION_NOTES`). Without SLURM, or when the cluster
cannot be brought to these settings, the test is skipped with the reason, or fails when
``RHMSCALE_REQUIRE_SLURM=1`` (as CI sets).

Two sessions at once share the cluster: the last one to end puts it back (a lock file in the
state folder counts them; what to put back is recorded there too, so a session that was killed
before it could put the cluster back leaves that to the next one).

Functions that submitit runs inside a job must be importable there: a job runs
``<this venv>/bin/python -m submitit.core._submit`` in the submission's working directory, so
``tests.*`` only imports when pytest was started from the repository root. Executors built
with :func:`slurm_executor` (or given ``slurm_setup=JOB_SETUP``) put the repository root on
the job's ``PYTHONPATH``, which makes them independent of the working directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_CLUSTER = REPO_ROOT / "slurm" / "dev-cluster.sh"
STATUS_TIMEOUT_S = 60
START_TIMEOUT_S = 300
_DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")

# What the SLURM tests need of the dev cluster, as options of `dev-cluster.sh start`. Three
# nodes, not two: a lost node's tasks go to the others (plural), a drained node is one of
# several; every node declares the machine's CPUs, so tests bound what runs at once with
# array_parallelism as before (CI's 2 cores run no more tasks at once than with one node).
TEST_SETTINGS = {"gpus": "1", "shards": "4", "accounting": "yes", "nodes": "3"}
# dev-cluster.sh's defaults, for a settings file without a key.
_DEFAULT_SETTINGS = {"gpus": "auto", "shards": "4", "accounting": "auto", "nodes": "1"}
# In the state folder: held shared by every session using the cluster; what to put back.
_USERS_LOCK = ".pytest-users.lock"
_SAVED = ".pytest-saved.json"

# Lines for the end of the test summary (tests/conftest.py prints them).
SESSION_NOTES: list[str] = []

# Lines for submitit's ``slurm_setup``: the job's Python finds ``tests.*`` wherever it runs.
JOB_SETUP = [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]


class ClusterUnavailable(RuntimeError):
    """No dev SLURM cluster with the tests' settings can be had; the message says why."""


def _dev_cluster(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(DEV_CLUSTER), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ClusterUnavailable(
            f"'slurm/dev-cluster.sh {' '.join(args)}' did not finish within {timeout:.0f} s"
        ) from e


def _installed(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def _cluster_env() -> dict[str, str]:
    out = _dev_cluster("env", timeout=STATUS_TIMEOUT_S)
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    if out.returncode != 0 or not env.get("SLURM_CONF"):
        raise ClusterUnavailable(
            f"'slurm/dev-cluster.sh env' gave no SLURM_CONF: {out.stdout!r} {out.stderr!r}"
        )
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_settings(state: Path) -> str | None:
    """The state folder's ``settings`` file (what the last ``start`` chose), None if none."""
    try:
        return (state / "settings").read_text()
    except FileNotFoundError:
        return None


def _parse_settings(text: str | None) -> dict[str, str]:
    settings = dict(_DEFAULT_SETTINGS)
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key in settings:
            settings[key] = value.strip()
    return settings


def _options(settings: dict[str, str]) -> list[str]:
    return [word for key in _DEFAULT_SETTINGS for word in (f"--{key}", settings[key])]


def _usable() -> bool:
    return _dev_cluster("status", timeout=STATUS_TIMEOUT_S).returncode == 0


def _start(settings: dict[str, str]) -> None:
    start = _dev_cluster("start", *_options(settings), timeout=START_TIMEOUT_S)
    if start.returncode != 0:
        raise ClusterUnavailable(
            f"'slurm/dev-cluster.sh start {' '.join(_options(settings))}' failed "
            f"(exit {start.returncode}):\n{_tail(start.stderr + start.stdout)}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` while the block runs (one session at a time)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Session:
    """This session's use of the cluster: what it found, and putting that back at the end."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.users = None  # the users lock file, held shared while the session uses the cluster

    def begin(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        with _locked(self.state / ".pytest-record.lock"):
            self.users = open(self.state / _USERS_LOCK, "a")  # noqa: SIM115 (held until end)
            saved = self.state / _SAVED
            try:
                fcntl.flock(self.users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another session uses the cluster: its record stands
            else:
                # No other session: a record left is that of a session that was killed before
                # it could put the cluster back. It stands if the cluster still runs as that
                # session left it; if someone has started it with other settings since, those
                # are the ones to put back.
                if saved.exists() and (
                    _parse_settings(_read_settings(self.state)) != TEST_SETTINGS
                ):
                    saved.unlink()
            fcntl.flock(self.users, fcntl.LOCK_SH)
            if not saved.exists():
                found = {"usable": _usable(), "settings": _read_settings(self.state)}
                tmp = saved.with_suffix(".tmp")
                tmp.write_text(json.dumps(found))
                tmp.replace(saved)
            _start(TEST_SETTINGS)

    def end(self) -> str:
        """Put the cluster back unless another session still uses it; say what was done."""
        assert self.users is not None
        wanted = " ".join(_options(TEST_SETTINGS))
        with _locked(self.state / ".pytest-record.lock"):
            fcntl.flock(self.users, fcntl.LOCK_UN)
            try:
                fcntl.flock(self.users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.users.close()
                return (
                    "dev SLURM cluster: left running with the tests' settings "
                    f"({wanted}): another test session uses it and puts it back when it ends"
                )
            try:
                return self._put_back(wanted)
            finally:
                self.users.close()

    def _put_back(self, wanted: str) -> str:
        saved = self.state / _SAVED
        found = json.loads(saved.read_text())
        before_text = found["settings"]
        before = _parse_settings(before_text)
        settings = " ".join(_options(before))
        try:
            if not found["usable"]:
                out = _dev_cluster("stop", timeout=START_TIMEOUT_S)
                if out.returncode != 0:
                    raise ClusterUnavailable(_tail(out.stderr + out.stdout))
                done = (
                    f"started for the SLURM tests ({wanted}) and stopped again, as it was "
                    "before the tests"
                )
            elif before != TEST_SETTINGS:
                _start(before)
                done = (
                    f"restarted for the SLURM tests ({wanted}), then restarted again with its "
                    f"settings from before ({settings})"
                )
            else:
                done = f"used as it ran ({wanted}) and left running"
        except ClusterUnavailable as e:
            return (
                "dev SLURM cluster: could NOT be put back as it was before the tests "
                f"({'stopped' if not found['usable'] else settings}): {e}\n"
                f"it runs with the tests' settings ({wanted}); to put it back: "
                + (
                    "slurm/dev-cluster.sh stop"
                    if not found["usable"]
                    else f"slurm/dev-cluster.sh start {settings}"
                )
            )
        # `start` rewrote the settings file: give it back its exact content (or none).
        if before_text is None:
            (self.state / "settings").unlink(missing_ok=True)
        else:
            (self.state / "settings").write_text(before_text)
        saved.unlink()
        return f"dev SLURM cluster: {done}"


def ensure_cluster() -> tuple[dict[str, str], _Session | None]:
    """Bring the dev SLURM cluster to :data:`TEST_SETTINGS`; return its environment variables
    (``SLURM_CONF``) and the session record that puts it back (None when nothing was changed).

    Raises :class:`ClusterUnavailable` with the reason when that cannot be done.
    """
    if not DEV_CLUSTER.is_file():
        raise ClusterUnavailable(f"{DEV_CLUSTER} is missing")
    missing = [name for name in _DAEMONS if not _installed(name)]
    if missing:
        raise ClusterUnavailable(
            f"SLURM is not installed (missing: {', '.join(missing)}); "
            "run: slurm/dev-cluster.sh install"
        )
    env = _cluster_env()
    state = Path(env["SLURM_CONF"]).parent
    if os.geteuid() != 0:
        # Only root can (re)start it: use it if it runs with the tests' settings.
        if _usable() and _parse_settings(_read_settings(state)) == TEST_SETTINGS:
            return env, None
        raise ClusterUnavailable(
            "the dev SLURM cluster does not run with the tests' settings, and only root can "
            f"start it: sudo slurm/dev-cluster.sh start {' '.join(_options(TEST_SETTINGS))}"
        )
    session = _Session(state)
    try:
        session.begin()
    except BaseException:
        # Put back what may have been changed before the failure.
        if session.users is not None:
            with contextlib.suppress(Exception):
                SESSION_NOTES.append(session.end())
        raise
    return env, session


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Session fixture: the dev SLURM cluster with :data:`TEST_SETTINGS`; its env vars are set
    in os.environ.

    Skips when it cannot be had, fails instead when RHMSCALE_REQUIRE_SLURM=1. At the end of the
    session the cluster is put back as it was before (see the module's docstring).
    """
    reason = ""
    session = None
    env: dict[str, str] = {}
    try:
        env, session = ensure_cluster()
    except ClusterUnavailable as e:
        reason = f"dev SLURM cluster unavailable: {e}"
    if reason:  # outside the except block: no chained traceback in the report
        if os.environ.get("RHMSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (RHMSCALE_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(reason)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if session is not None:
            SESSION_NOTES.append(session.end())


def slurm_executor(folder: str | Path, **parameters: Any) -> Any:
    """A submitit SLURM executor on the dev cluster's ``debug`` partition.

    The job can import ``tests.*`` (JOB_SETUP); ``parameters`` go to ``update_parameters``.
    """
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    defaults: dict[str, Any] = {
        "slurm_partition": "debug",
        "timeout_min": 2,
        "cpus_per_task": 1,
        "slurm_setup": list(JOB_SETUP),
    }
    defaults.update(parameters)
    executor.update_parameters(**defaults)
    return executor


def square_in_job(x: int) -> dict[str, Any]:
    """Job function for the submitit tests: x squared, plus where and how it ran."""
    return {
        "x": x,
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "python": sys.executable,
        "path": os.environ.get("PATH", ""),
        "host": socket.gethostname(),
    }
