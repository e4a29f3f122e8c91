"""The GPU tooling of issue 35 holds on a machine without a GPU: `make test-gpu`
(bench/test_gpu.sh) names every GPU-only test file and refuses to pass where CUDA is absent,
its smoke spec is a valid packed GPU sweep, and bench/graph_vs_compiled.py measures with the
GPU test's configs, compares curves per window and member, and exits 2 without a GPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rhmscale.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "test_gpu.sh"
BENCH = ROOT / "bench" / "graph_vs_compiled.py"
SMOKE = ROOT / "bench" / "smoke_gpu.yaml"
NO_CUDA = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # torch then sees no GPU, even on one


def bench_module():
    spec = importlib.util.spec_from_file_location("graph_vs_compiled", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_list(name: str) -> list[str]:
    """A bash array of bench/test_gpu.sh, e.g. GPU_TESTS=(a b c)."""
    match = re.search(rf"^{name}=\((.*)\)$", SCRIPT.read_text(), re.M)
    assert match, f"bench/test_gpu.sh has no {name}=(...)"
    return match.group(1).split()


def test_the_gpu_script_parses_and_make_runs_it():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-gpu:\n\tbash bench/test_gpu.sh$", makefile, re.M)


def test_every_gpu_only_test_file_is_run_by_make_test_gpu():
    skips_without_cuda = {
        f"tests/{path.name}"
        for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"skipif\(\s*not torch\.cuda\.is_available\(\)", path.read_text())
    }
    listed = script_list("GPU_TESTS")
    assert skips_without_cuda, "no test file skips without CUDA: the pattern here is stale"
    assert skips_without_cuda <= set(listed), skips_without_cuda - set(listed)
    assert all((ROOT / path).is_file() for path in listed), listed


@pytest.mark.skipif(
    any((ROOT / ".whl").glob("*.whl")), reason="the script would install .whl/ into /tmp/site"
)
def test_the_gpu_script_fails_without_cuda_and_says_so_in_its_log(tmp_path):
    log = tmp_path / "out" / "test_gpu.log"
    env = NO_CUDA | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(log)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    text = log.read_text()
    assert "no CUDA GPU visible to torch here" in text
    assert "torch " in text  # the device facts came first


def test_the_smoke_spec_is_a_packed_gpu_sweep_that_plans(tmp_path):
    spec = yaml.safe_load(SMOKE.read_text())
    assert re.search(rf"^SMOKE_NAME={spec['name']}\b", SCRIPT.read_text(), re.M)
    executor = spec["executor"]
    assert executor["kind"] == "local" and executor["gpus_per_task"] == 1 and executor["pack"]
    assert spec["base"]["model"]["arch"] == "tree_unet"
    result = CliRunner().invoke(
        app, ["sweep", "plan", str(SMOKE), "--root", str(tmp_path)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "8 runs, 0 done" in result.output and "8 to submit" in result.output
    assert not (tmp_path / spec["name"]).exists()  # a plan writes nothing


def test_the_bench_exits_2_with_one_line_without_a_gpu(tmp_path):
    out = tmp_path / "gvc.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(out), "--steps", "5"],
        capture_output=True,
        text=True,
        env=NO_CUDA,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], result.stderr
    assert result.stdout == "" and not out.exists()


def test_the_bench_trains_the_gpu_tests_packs():
    from tests.test_training_gpu import MEMBERS, SMALL

    bench = bench_module()
    assert bench.SMALL == SMALL and bench.MEMBERS == MEMBERS
    assert bench.members_of(2, 0) == MEMBERS
    assert bench.members_of(1, 5) == [["data.P=64", "seed=5"]]


def test_the_bench_compares_per_window_and_member():
    bench = bench_module()
    reference = torch.linspace(3.0, 1.0, 300).unsqueeze(1).repeat(1, 2)
    other = reference.clone()
    other[19, 1] += 1e-3  # step 20, member 1: window 11-50
    other[99, 0] -= 5e-3  # step 100, member 0: window 51-end, beyond the test's 2e-3
    found = bench.compare_losses(other, reference, atol=2e-3)
    windows = found["windows"]
    assert list(windows) == ["1-3", "4-10", "11-50", "51-end"]
    assert windows["51-end"]["steps"] == [51, 300]
    assert windows["1-3"]["max_abs"] == [0.0, 0.0] and windows["4-10"]["max_abs"] == [0.0, 0.0]
    assert windows["11-50"]["max_abs"][0] == 0.0
    assert windows["11-50"]["max_abs"][1] == pytest.approx(1e-3, rel=1e-2)
    assert windows["51-end"]["max_abs"][0] == pytest.approx(5e-3, rel=1e-2)
    assert windows["51-end"]["max_rel"][0] == pytest.approx(
        5e-3 / float(reference[99, 0]), rel=1e-2
    )
    assert found["first_diff_step"] == [100, 20]
    assert found["first_over_atol"] == [100, None]
    assert len(found["step_abs_diff"]) == 300
    assert "error" in bench.compare_losses(other[:10], reference, atol=2e-3)
    short = bench.compare_losses(other[:30], reference[:30], atol=2e-3)["windows"]
    assert list(short) == ["1-3", "4-10", "11-50"] and short["11-50"]["steps"] == [11, 30]
