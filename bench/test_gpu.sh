#!/usr/bin/env bash
# `make test-gpu`: what CI cannot run, in one command on a GPU machine (issue 35).
#   bash bench/test_gpu.sh [LOG]
# 1. set-up: the wheels in .whl/ (what a bare GPU machine lacks) into /tmp/site
#    (bench/device_env.sh); the device, driver, Python, torch and commit, in the log;
# 2. the GPU-only tests (GPU_TESTS below: every test file that skips without CUDA, and the
#    executor's GPU settings); a GPU test skipped for want of CUDA counts as a failure;
# 3. a packed GPU sweep end to end: bench/smoke_gpu.yaml submitted with `rhmscale sweep
#    submit` into a temporary root, `sweep status`, and every run done, on cuda.
# LOG (default $TEST_GPU_LOG, else $OUT/test_gpu.log when OUT is set, else test_gpu.log) gets
# everything printed; the exit status is 0 only when every stage passed (2: no CUDA GPU here).
# It runs `python3` from PATH: on a developer's GPU box activate the venv first
# (`source .venv/bin/activate`); on the device machine, from the repository root with the
# wheels carried in .whl/: `bash bench/test_gpu.sh`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
GPU_TESTS=(tests/test_training_gpu.py tests/test_per_member_optim.py tests/test_executor_gpu.py)
SMOKE_SPEC=bench/smoke_gpu.yaml
SMOKE_NAME=smoke-gpu # the spec's name: its folder under the root

log=${1:-${TEST_GPU_LOG:-${OUT:+$OUT/test_gpu.log}}}
log=${log:-test_gpu.log}
mkdir -p "$(dirname "$log")" || exit 2
exec 3>&1 4>&2 > >(tee "$log") 2>&1
tee_pid=$!
# On exit, give tee up to 10 s to write the log out (a straggling child may hold its pipe).
finish() {
    exec 1>&3 2>&4
    for _ in $(seq 100); do kill -0 "$tee_pid" 2>/dev/null || return 0; sleep 0.1; done
}
trap finish EXIT
started=$(date +%s)
failed=()
stage() { echo; echo "== $1 ($(($(date +%s) - started)) s)"; }
# A failed stage is named in the summary; the later stages still run.
fail() { echo "FAILED: $1"; failed+=("$1"); }

stage "set-up"
wheels=$(compgen -G ".whl/*.whl" | wc -l)
echo "wheels carried in .whl/: $wheels (installed into /tmp/site when there are any)"
# shellcheck source=bench/device_env.sh
source bench/device_env.sh # exits 1 when the wheels do not install

stage "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
    echo "(no nvidia-smi)"
python3 - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "of", torch.cuda.device_count())
EOF
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    echo "commit $commit ($(git status --short | wc -l) files changed or untracked)"
else
    echo "commit unknown (no git checkout here)"
fi
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch here: make test-gpu needs one (the GPU tests would only skip)"
    exit 2
fi

stage "GPU tests: ${GPU_TESTS[*]}"
options=(-q -p no:cacheprovider -rs --durations=12)
# pyproject's addopts name pytest-benchmark's option; without the plugin pytest refuses it.
python3 -c "import pytest_benchmark" 2>/dev/null || options+=(-o "addopts=-ra")
if ! python3 -c "import pytest" 2>/dev/null; then
    fail "pytest is missing: carry its wheels (pytest, pluggy, iniconfig, packaging) in .whl/"
else
    report=$(mktemp)
    python3 -m pytest "${options[@]}" "${GPU_TESTS[@]}" 2>&1 | tee "$report"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "GPU tests"
    if grep -q "needs a CUDA GPU" "$report"; then
        fail "GPU tests skipped for want of CUDA"
    fi
    rm -f "$report"
fi

stage "smoke: $SMOKE_SPEC, a packed sweep on the GPU"
root=$(mktemp -d /tmp/rhmscale-smoke.XXXXXX)
before_smoke=${#failed[@]}
sweep_started=$(date +%s)
rhmscale sweep submit "$SMOKE_SPEC" --root "$root" || fail "sweep submit"
echo "sweep submit: $(($(date +%s) - sweep_started)) s"
rhmscale sweep status "$root/$SMOKE_NAME" || fail "sweep status"
rhmscale sweep status "$root/$SMOKE_NAME" --json >"$root/status.json" || fail "sweep status --json"
python3 - "$root/status.json" "$root/$SMOKE_NAME/runs" <<'EOF' || fail "smoke sweep runs"
import json, sys
from pathlib import Path

status = json.loads(Path(sys.argv[1]).read_text())
runs = Path(sys.argv[2])
states = {r["run_id"]: r["state"] for r in status["runs"]}
not_done = {run: state for run, state in states.items() if state != "done"}
devices = {}
for run in states:
    result = runs / run / "result.json"
    if result.exists():
        devices[run] = json.loads(result.read_text()).get("device")
off_gpu = {run: device for run, device in devices.items() if device != "cuda"}
print(f"smoke: {len(states) - len(not_done)} of {len(states)} runs done; trained on "
      f"{sorted(set(devices.values()))}")
for run, state in not_done.items():
    print(f"  {run}: {state}")
    log = runs / run / "run.log"
    if log.exists():
        print("    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-5:]))
for run, device in off_gpu.items():
    print(f"  {run}: trained on {device}, not cuda")
sys.exit(0 if states and not not_done and not off_gpu else 1)
EOF
if [ ${#failed[@]} -eq "$before_smoke" ]; then
    rm -rf "$root"
else
    echo "the smoke sweep's folder is kept: $root"
fi

stage "summary"
if [ ${#failed[@]} -gt 0 ]; then
    named=$(printf '%s; ' "${failed[@]}")
    echo "make test-gpu FAILED (${#failed[@]}): ${named%; }. Log: $log"
    exit 1
fi
echo "make test-gpu passed; log: $log"
