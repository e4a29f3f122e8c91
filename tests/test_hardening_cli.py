"""Nothing lost, nothing stuck (issue 12), at the command line: W&B without a network, file
system failures as one line, sweep names that stay under the root.

No test reaches a real network: a port with nothing listening and a local server that accepts
connections and never answers stand in for a W&B server out of reach.
"""

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rhmscale.cli.failures import cannot_write, writing
from rhmscale.errors import UserError
from rhmscale.store import wandb_mirror
from rhmscale.sweeps.spec import check_sweep_name, parse_spec

RHMSCALE = [str(Path(sys.executable).with_name("rhmscale"))]
TINY = [
    *("grammar.L=2", "grammar.v=4", "grammar.m=2"),
    *("data.P=8", "data.n_test=4", "train.max_steps=30"),
    *("model.arch=tree_unet", "model.width=16"),
    *("eval.n_samples=16", "eval.n_evals=2", "train.device=cpu"),
]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, like a W&B API key


def cli(*args, env=None, stdout=subprocess.PIPE, cwd=None):
    return subprocess.run(
        [*RHMSCALE, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def free_port() -> int:
    """A port on localhost with nothing listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentServer:
    """Accepts TCP connections and never answers: a server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(params=["refused", "silent"])
def dead_server(request):
    """The URL of a W&B server out of reach: nothing listening, or never answering."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"
        return
    server = SilentServer()
    yield server.url
    server.close()


def wandb_env(tmp_path, base_url, key=FAKE_KEY):
    """The test's environment for a `rhmscale` that decides its W&B mode itself: no
    WANDB_MODE (conftest sets offline, which `auto` would follow), a home without .netrc."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env |= {"HOME": str(tmp_path), "WANDB_BASE_URL": base_url, "NO_PROXY": "*", "no_proxy": "*"}
    env.pop("WANDB_API_KEY", None)
    if key:
        env["WANDB_API_KEY"] = key
    return env


# --- 1. W&B with credentials but no network ------------------------------------------------


def run_against(server: str, mode: str, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    """The tiny run with W&B `mode`, a key, and `server` as the W&B server; its seconds."""
    start = time.monotonic()
    result = cli(
        "run", *TINY, "tracking.connect_timeout=1", "--root", str(tmp_path / "runs"),
        "--wandb", mode, "--no-progress", env=wandb_env(tmp_path, server),
    )  # fmt: skip
    return result, time.monotonic() - start


@pytest.mark.slow
def test_auto_without_a_server_trains_offline_and_warns_once(tmp_path, dead_server):
    result, elapsed = run_against(dead_server, "auto", tmp_path)
    assert result.returncode == 0, result.stderr
    assert elapsed < 90, elapsed  # was ~115 s of wandb retries, then a CommError
    (run,) = (tmp_path / "runs" / "adhoc" / "runs").iterdir()
    assert json.loads((run / "result.json").read_text())["final"]["step"] == 30
    assert list((run / "wandb").glob("offline-run-*")), list((run / "wandb").iterdir())
    warnings = [line for line in result.stderr.splitlines() if "W&B" in line]
    assert len(warnings) == 1, result.stderr
    assert dead_server in warnings[0] and f"wandb sync {run.absolute()}/wandb" in warnings[0]
    assert "Traceback" not in result.stderr
    logged = [line for line in (run / "run.log").read_text().splitlines() if "W&B" in line]
    assert len(logged) == 1 and "WARNING" in logged[0] and "wandb sync" in logged[0]


def test_online_without_a_server_exits_2_fast(tmp_path, dead_server):
    result, elapsed = run_against(dead_server, "online", tmp_path)
    assert result.returncode == 2, result.stderr
    assert elapsed < 30
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert dead_server in result.stderr and "tracking.wandb=online" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_online_without_a_key_exits_2(tmp_path):
    env = wandb_env(tmp_path, f"http://127.0.0.1:{free_port()}", key=None)
    result = cli("run", *TINY, "--root", str(tmp_path / "runs"), "--wandb", "online", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "WANDB_API_KEY" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


class _Answer404(BaseHTTPRequestHandler):
    requests = 0

    def do_HEAD(self):  # noqa: N802 - http.server's name
        type(self).requests += 1
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD  # noqa: N815

    def log_message(self, *args):
        pass


def test_any_http_answer_counts_and_the_server_is_asked_once(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer404)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    try:
        for _ in range(32):  # a pack of 32 runs
            assert wandb_mirror.choose_mode("auto", 1.0) == wandb_mirror.Mode("online")
    finally:
        server.shutdown()
        server.server_close()
    assert _Answer404.requests == 1


def test_a_silent_server_is_given_up_on_after_the_timeout(monkeypatch):
    server = SilentServer()
    monkeypatch.setenv("NO_PROXY", "*")
    try:
        start = time.monotonic()
        problem = wandb_mirror.server_problem(server.url, 0.5)
        assert time.monotonic() - start < 3
    finally:
        server.close()
    assert problem == "did not answer within 0.5s"
    assert wandb_mirror.server_problem(server.url, 0.5) == problem  # cached: asked once


def test_auto_follows_an_explicit_wandb_mode_and_says_why_it_is_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mirror.choose_mode("auto").mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc
    mode = wandb_mirror.choose_mode("auto")
    assert mode.mode == "offline" and "no credentials" in mode.fallback
    assert "wandb sync /r/wandb/offline-run-*" in mode.warning("/r")


# --- 2. file system failures: one line, exit code 2 ------------------------------------------


def test_root_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = cli("run", *TINY, "--root", str(blocker / "runs"), "--wandb", "disabled")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot write {blocker}/runs/adhoc/runs/"), line
    assert line.endswith(f"{blocker} is a file, not a folder"), line


def test_run_dir_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "run"
    target.write_text("")
    result = cli("run", *TINY, "--run-dir", str(target), "--wandb", "disabled")
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: cannot write {target}: it is a file, not a folder\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_under_stdout_is_one_line():
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        result = cli("config", "show", stdout=full)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: cannot write standard output: No space left on device\n"


def test_an_output_that_is_not_a_file_is_refused(tmp_path):
    """collect -o writes beside the path and renames onto it: onto a folder, a fifo or a device
    (as root, /dev/full itself) that would replace it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for output in (fifo, tmp_path):
        result = cli("collect", str(tmp_path), "-o", str(output))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"--output {output} is" in result.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "cannot write out: No space left"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "cannot write out: Disk quota exceeded"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "cannot write /ro/x: Read-only"),
        (PermissionError(errno.EACCES, "Permission denied", "/p"), "cannot write /p: Permission"),
    ],
)
def test_space_and_path_errors_become_user_errors(exc, message):
    with pytest.raises(UserError, match=message), writing("out"):
        raise exc


def test_other_os_errors_keep_their_traceback():
    assert cannot_write(OSError(errno.EINVAL, "Invalid argument")) is None
    assert cannot_write(OSError(errno.EACCES, "Permission denied")) is None  # no path to name
    with pytest.raises(ConnectionRefusedError), writing("out"):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


# --- 3. sweep names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x\n", "../x", "/abs", "a/b", ".", "..", "", "x" * 101])
def test_bad_sweep_names_are_refused(name):
    with pytest.raises(ValueError, match="sweep name"):
        check_sweep_name(name)
    with pytest.raises(UserError, match="sweep name"):
        parse_spec({"name": name})


@pytest.mark.parametrize("sweep", ["../../x", "ABSOLUTE", "x\n"])
def test_run_sweep_option_stays_under_the_root(tmp_path, sweep):
    if sweep == "ABSOLUTE":
        sweep = str(tmp_path / "elsewhere")
    result = cli("run", *TINY, "--root", str(tmp_path / "root" / "runs"), "--sweep", sweep)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --sweep: sweep name") and "Traceback" not in (
        result.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere
