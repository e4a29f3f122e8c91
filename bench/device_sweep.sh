#!/usr/bin/env bash
# Run a sweep on a GPU machine and pack what comes back: bench/device_sweep.sh SPEC LIMIT_S OUT
#   SPEC     a preset name or spec file; LIMIT_S  seconds the sweep may take (then its runs are
#   asked to checkpoint and stop, and a later submit resumes them); OUT  folder for the results:
#   device.txt, submit.log (with wall_s), status.txt, runs.tgz (run folders without
#   checkpoints or W&B files) and wandb.tgz.* (the offline W&B runs, in 15 MB pieces).
# Wheels in .whl/ (packages the machine lacks) are installed first, into /tmp/site.
set -uo pipefail
spec=$1 limit=$2 out=$3
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
rhmscale() { python3 -c "from rhmscale.cli import main; main()" "$@"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} >"$out/device.txt" 2>&1
start=$(date +%s)
timeout -s TERM -k 60 "$limit" python3 -c "from rhmscale.cli import main; main()" \
    sweep submit "$spec" --root sw >"$out/submit.log" 2>&1
echo "rc=$? wall_s=$(($(date +%s) - start))" >>"$out/submit.log"
pkill -TERM -f submitit && sleep 15  # workers of a stopped submit checkpoint and end
name=$(ls sw)
rhmscale sweep status "sw/$name" >"$out/status.txt" 2>&1
tar --exclude='*.ckpt' --exclude='wandb' -czf "$out/runs.tgz" sw
find sw -type d -name wandb -prune -print0 | tar --null -T - -czf - | split -b 15m - "$out/wandb.tgz."
ls -la "$out"
