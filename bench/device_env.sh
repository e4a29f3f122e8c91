# Sourced by the bench/device_*.sh scripts on a GPU machine without a package registry: the
# wheels in .whl/ (the packages it lacks, for its Python) go into /tmp/site, on PYTHONPATH with
# this checkout; `device_facts FILE` writes the GPU, driver and torch there.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
rhmscale() { python3 -c "from rhmscale.cli import main; main()" "$@"; }
device_facts() {
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    } >"$1" 2>&1
}
# `stop_at DEADLINE PID...`: wait for the submits PID... (each waits for its workers) until
# DEADLINE (epoch seconds); then ask the workers to stop (they checkpoint and end, a later call
# resumes them), give them 90 s, kill what is left, and say so on stdout.
stop_at() {
    local deadline=$1
    shift
    local pids=("$@")
    alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
    while alive && [ "$(date +%s)" -lt "$deadline" ]; do sleep 2; done
    alive || return 0
    echo "deadline: the workers are asked to stop"
    pkill -TERM -f submitit.core._submit
    for _ in $(seq 90); do alive || return 0; sleep 1; done
    pkill -KILL -f submitit
    kill "${pids[@]}" 2>/dev/null
}
