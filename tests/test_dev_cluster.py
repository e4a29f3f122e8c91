"""The dev SLURM cluster (slurm/dev-cluster.sh) works end to end: sbatch, accounting through
slurmdbd, submitit job arrays and requeue; and its offline install (`bundle`, then
`install --from --dry-run`), checked without changing this machine's packages. Runs on the real
cluster; takes about half a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.slurm_cluster import JOB_SETUP, square_in_job

pytestmark = pytest.mark.slurm

TERMINAL = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


def slurm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def sbatch(*args: str) -> str:
    return slurm("sbatch", "--parsable", *args).stdout.strip().split(";")[0]


def job_state(job_id: str) -> str:
    """State from squeue (MinJobAge keeps finished jobs there for 5 min), else from sacct."""
    out = slurm("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0]
    out = slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State", check=False)
    words = out.stdout.split()
    return words[0] if words else "UNKNOWN"


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            squeue = slurm("squeue", "-t", "all", check=False).stdout
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nsqueue:\n{squeue}")
        time.sleep(interval)


def wait_job(job_id: str, timeout: float = 60) -> str:
    wait_until(lambda: job_state(job_id) in TERMINAL, timeout, f"job {job_id} to finish")
    return job_state(job_id)


def sacct_rows(job_id: str) -> list[list[str]]:
    out = slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode")
    return [line.split("|") for line in out.stdout.splitlines() if line]


def test_sbatch_job_writes_its_files(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "hello from job $SLURM_JOB_ID" > result.txt\n'
        "env > env.txt\n"
        "echo to-stdout\n"
    )
    job_id = sbatch(
        "--job-name=devcluster-test",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/slurm-%j.out",
        "--time=1",
        str(script),
    )
    assert wait_job(job_id) == "COMPLETED"
    assert (tmp_path / "result.txt").read_text() == f"hello from job {job_id}\n"
    assert (tmp_path / f"slurm-{job_id}.out").read_text() == "to-stdout\n"
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "env.txt").read_text().splitlines()
        if "=" in line
    )
    # The job sees the submitter's environment: a normal PATH, HOME, and the cluster's config.
    assert "/usr/bin" in env["PATH"].split(":")
    assert env.get("HOME")
    assert env["SLURM_CONF"] == slurm_cluster["SLURM_CONF"]
    assert env["SLURM_JOB_ID"] == job_id


def test_sacct_records_jobs(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    ok = sbatch(f"--chdir={tmp_path}", "--output=/dev/null", "--wrap=true")
    bad = sbatch(f"--chdir={tmp_path}", "--output=/dev/null", "--wrap=exit 3")
    assert wait_job(ok) == "COMPLETED"
    assert wait_job(bad) == "FAILED"

    # slurmdbd stores job records asynchronously: give it a few seconds.
    def recorded() -> bool:
        rows = sacct_rows(ok) + sacct_rows(bad)
        return {r[0]: (r[1], r[2]) for r in rows} == {
            ok: ("COMPLETED", "0:0"),
            bad: ("FAILED", "3:0"),
        }

    wait_until(recorded, 20, "sacct to record both jobs")


def test_submitit_job_array(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(
        slurm_partition="debug",
        timeout_min=2,
        cpus_per_task=1,
        slurm_array_parallelism=3,
        # The job can import tests.slurm_cluster whatever the working directory.
        slurm_setup=JOB_SETUP,
    )
    jobs = executor.map_array(square_in_job, [1, 2, 3])
    assert len(jobs) == 3
    try:
        wait_until(lambda: all(job.done() for job in jobs), 90, "the submitit array")
    finally:
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as e:  # show the job's own log on failure
            pytest.fail(f"array task {job.job_id} failed: {e}\nstderr:\n{job.stderr()}")
    assert [r["square"] for r in results] == [1, 4, 9]
    array_id = jobs[0].job_id.split("_")[0]
    assert {r["array_job_id"] for r in results} == {array_id}
    assert sorted(r["array_task_id"] for r in results) == ["0", "1", "2"]
    assert {r["python"] for r in results} == {sys.executable}
    # submitit's own status path (sacct through slurmdbd) sees the tasks as completed.
    wait_until(
        lambda: all(job.watcher.get_state(job.job_id, mode="force") == "COMPLETED" for job in jobs),
        20,
        "sacct to report the array tasks COMPLETED",
    )


def test_requeued_job_runs_again(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "count.sh"
    script.write_text(
        "#!/bin/bash\n"
        "n=$(( $(cat starts 2>/dev/null || echo 0) + 1 ))\n"
        "echo $n > starts\n"
        'echo "start $n restart_count=${SLURM_RESTART_COUNT:-0}" >> log.txt\n'
        "if [ $n -lt 2 ]; then sleep 300; fi\n"
    )
    job_id = sbatch(
        f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.out", "--time=5", str(script)
    )
    starts = tmp_path / "starts"

    def count() -> int:
        try:
            return int(starts.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    try:
        wait_until(lambda: count() == 1 and job_state(job_id) == "RUNNING", 30, "the first start")
        slurm("scontrol", "requeue", job_id)

        def started_again() -> bool:
            if job_state(job_id) == "PENDING":
                # A requeued job waits (BeginTime) before it may run again; release it now.
                slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            return count() >= 2

        wait_until(started_again, 60, "the requeued job to start again")
        assert wait_job(job_id) == "COMPLETED"
    finally:
        slurm("scancel", job_id, check=False)
    assert count() == 2
    assert (tmp_path / "log.txt").read_text().splitlines() == [
        "start 1 restart_count=0",
        "start 2 restart_count=1",
    ]


def dpkg_list() -> str:
    return subprocess.run(["dpkg", "-l"], capture_output=True, text=True, check=True).stdout


def installed_packages() -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Status}\\n"], capture_output=True, text=True
    )
    return {line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")}


@pytest.mark.skipif(
    not (shutil.which("apt-get") and shutil.which("dpkg-deb")), reason="needs apt-get and dpkg"
)
def test_bundle_then_install_from_it_dry_run(tmp_path: Path):
    """`bundle` downloads SLURM, munge and what they need; `install --from --dry-run` reads
    only the folder and says what it would install, changing nothing on this machine (a package
    made here, not installed, is one it would install)."""
    script = str(Path(__file__).resolve().parents[1] / "slurm" / "dev-cluster.sh")
    before = dpkg_list()
    bundle = tmp_path / "bundle"
    made = subprocess.run(["bash", script, "bundle", str(bundle)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    packages = {line.split()[0] for line in (bundle / "MANIFEST").read_text().splitlines()}
    assert {"slurmd", "slurmctld", "slurm-client", "munge", "libmunge2", "libc6"} <= packages
    assert len(list(bundle.glob("*.deb"))) == len(packages)
    again = subprocess.run(["bash", script, "bundle", str(bundle)], capture_output=True, text=True)
    assert again.returncode != 0 and "not empty" in again.stderr
    # A package no machine has: the dry run must list it among those it would install.
    dummy = tmp_path / "dummy"
    (dummy / "DEBIAN").mkdir(parents=True)
    (dummy / "DEBIAN" / "control").write_text(
        "Package: rhmscale-test-dummy\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: rhmscale tests <tests@localhost>\nDescription: never installed\n"
    )
    built = subprocess.run(
        ["dpkg-deb", "--build", str(dummy), str(bundle / "rhmscale-test-dummy_1.0_all.deb")],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    here = installed_packages()
    dry = subprocess.run(
        ["bash", script, "install", "--from", str(bundle), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    would = {line.split()[2] for line in dry.stdout.splitlines() if line.startswith("would ")}
    present = {line.split()[2] for line in dry.stdout.splitlines() if line.startswith("already ")}
    assert "rhmscale-test-dummy" in would
    assert would | present == packages | {"rhmscale-test-dummy"} and not would & present
    assert (packages & here) <= present, "an installed package is not one to install"
    assert f"would install {len(would)} packages" in dry.stderr
    assert "nothing installed" in dry.stderr
    missing = subprocess.run(
        ["bash", script, "install", "--from", str(tmp_path / "nothing"), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "no bundle folder" in missing.stderr
    # Nothing of this machine's packages changed (the dummy is not installed).
    assert dpkg_list() == before
    assert "rhmscale-test-dummy" not in installed_packages()
