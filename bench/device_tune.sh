#!/usr/bin/env bash
# Run tuning studies side by side on a GPU machine, resumable across calls, and pack what
# comes back:
#   bench/device_tune.sh LIMIT_S OUT SPEC...
#   LIMIT_S  seconds the studies may take (then their workers are asked to stop: each
#            checkpoints its trials, and a later call resumes them); OUT  folder for the
#            results: device.txt, gpu.csv (nvidia-smi every 5 s), tune-<study>.log, and
#            studies.tgz (the study folders without checkpoints or W&B files: the journal and
#            each trial's run folder, what `tune report` reads).
#   SPEC     study specs; each study gets its own `tune submit` (local executor), all at once.
# Environment: ROOT (default studies) the studies' root; a later call on the same machine finds
#   the studies there and goes on with `tune retry` (trials interrupted at the deadline resume
#   from their checkpoints; no new trial is asked once a study's budget is spent).
#   OPTIONS  more `tune submit` options, e.g. "--tasks-per-gpu 2".
set -uo pipefail
limit=$1 out=$2
shift 2
root=${ROOT:-studies}
source bench/device_env.sh
device_facts "$out/device.txt"
export WANDB_MODE=${WANDB_MODE:-offline} # no network here: W&B writes offline runs
deadline=$(($(date +%s) + limit))
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$out/gpu.csv" &
smi=$!
pids=()
for spec in "$@"; do
    name=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$spec")
    log="$out/tune-$name.log"
    if [ -d "$root/$name" ]; then
        # shellcheck disable=SC2086  # OPTIONS holds several options
        rhmscale tune retry "$root/$name" ${OPTIONS:-} >>"$log" 2>&1 &
    else
        # shellcheck disable=SC2086
        rhmscale tune submit "$spec" --root "$root" ${OPTIONS:-} >>"$log" 2>&1 &
    fi
    pids+=($!)
done
stop_at "$deadline" "${pids[@]}" | tee -a "$out"/tune-*.log
for p in "${pids[@]}"; do wait "$p"; echo "rc=$?"; done
kill "$smi"
for folder in "$root"/*/; do
    COLUMNS=160 rhmscale tune status "$folder" >"$out/status-$(basename "$folder").txt" 2>&1
done
tar --exclude='*.ckpt' --exclude='wandb' -czf "$out/studies.tgz" "$root"
ls -la "$out"
