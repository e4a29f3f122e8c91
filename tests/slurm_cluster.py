"""The dev SLURM cluster for tests: find it or start it (slurm/dev-cluster.sh).

Import the session fixture in tests/conftest.py::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401

A test that takes ``slurm_cluster`` gets the environment of a running single-node cluster
(``SLURM_CONF`` is also set in ``os.environ`` for the whole session). Without one the test is
skipped with the reason, or fails when ``RHMSCALE_REQUIRE_SLURM=1`` (as CI sets).

Functions that submitit runs inside a job must be importable there: a job runs
``<this venv>/bin/python -m submitit.core._submit`` in the submission's working directory, so
``tests.*`` only imports when pytest was started from the repository root. Executors built
with :func:`slurm_executor` (or given ``slurm_setup=JOB_SETUP``) put the repository root on
the job's ``PYTHONPATH``, which makes them independent of the working directory.
"""

from __future__ import annotations

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

# Lines for submitit's ``slurm_setup``: the job's Python finds ``tests.*`` wherever it runs.
JOB_SETUP = [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]


class ClusterUnavailable(RuntimeError):
    """No dev SLURM cluster is running and none could be started; the message says why."""


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
    conf = env.get("SLURM_CONF")
    if out.returncode != 0 or not conf or not Path(conf).is_file():
        raise ClusterUnavailable(
            f"'slurm/dev-cluster.sh env' gave no usable SLURM_CONF: {out.stdout!r} {out.stderr!r}"
        )
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_cluster() -> dict[str, str]:
    """Return the environment variables (``SLURM_CONF``) of a running dev SLURM cluster.

    Reuses a cluster that ``slurm/dev-cluster.sh status`` reports usable; otherwise starts one
    if SLURM is installed. Raises :class:`ClusterUnavailable` with the reason when neither works.
    """
    if not DEV_CLUSTER.is_file():
        raise ClusterUnavailable(f"{DEV_CLUSTER} is missing")
    status = _dev_cluster("status", timeout=STATUS_TIMEOUT_S)
    if status.returncode == 0:
        return _cluster_env()
    missing = [name for name in _DAEMONS if not _installed(name)]
    if missing:
        raise ClusterUnavailable(
            f"SLURM is not installed (missing: {', '.join(missing)}); "
            "run: slurm/dev-cluster.sh install && slurm/dev-cluster.sh start"
        )
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "the dev SLURM cluster is not running and only root can start it: "
            "sudo slurm/dev-cluster.sh start"
        )
    start = _dev_cluster("start", timeout=START_TIMEOUT_S)
    if start.returncode != 0:
        raise ClusterUnavailable(
            f"'slurm/dev-cluster.sh start' failed (exit {start.returncode}):\n"
            f"{_tail(start.stderr + start.stdout)}"
        )
    return _cluster_env()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Session fixture: a running dev SLURM cluster; its env vars are set in os.environ.

    Skips when no cluster can be had, fails instead when RHMSCALE_REQUIRE_SLURM=1. The cluster
    is left running afterwards (it is shared, and the next session starts in seconds).
    """
    reason = ""
    try:
        env = ensure_cluster()
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
