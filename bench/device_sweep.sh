#!/usr/bin/env bash
# Run a sweep on a GPU machine and pack what comes back:
#   bench/device_sweep.sh SPEC LIMIT_S OUT [WHERE ...]
#   SPEC     a preset name or spec file; LIMIT_S  seconds the sweep may take (then its runs are
#   asked to checkpoint and stop, and a later call resumes them); OUT  folder for the results:
#   device.txt, submit.log (wall_s of each submission), status.txt, runs.tgz (run folders
#   without checkpoints or W&B files) and wandb.tgz.* (the offline W&B runs, in 15 MB pieces).
#   WHERE    cell selections (`sweep submit --where`), submitted one after the other into the
#   same sweep while time is left: the cells that matter most first (default: every cell).
# Environment: ROOT (default sw) the runs root; a second call on the same machine finds the
#   first's runs there (done ones are skipped, interrupted ones resume from their checkpoint).
#   OPTIONS  more `sweep submit` options, e.g. "--executor local --tasks-per-gpu 3".
#   WANDB=0  leaves wandb.tgz.* out.
# Wheels in .whl/ (packages the machine lacks) are installed first (bench/device_env.sh).
set -uo pipefail
spec=$1 limit=$2 out=$3
shift 3
root=${ROOT:-sw}
wheres=("$@")
[ ${#wheres[@]} -eq 0 ] && wheres=("")
source bench/device_env.sh
device_facts "$out/device.txt"
deadline=$(($(date +%s) + limit))
for where in "${wheres[@]}"; do
    [ $(($(date +%s) + 10)) -ge "$deadline" ] && break
    echo "== cells: ${where:-all} ($((deadline - $(date +%s))) s left)" >>"$out/submit.log"
    start=$(date +%s)
    # shellcheck disable=SC2086  # OPTIONS holds several options
    rhmscale sweep submit "$spec" --root "$root" \
        ${where:+--where "$where"} ${OPTIONS:-} >>"$out/submit.log" 2>&1 &
    submit=$!
    stop_at "$deadline" "$submit" >>"$out/submit.log"
    wait "$submit"
    echo "rc=$? wall_s=$(($(date +%s) - start))" >>"$out/submit.log"
done
name=$(ls "$root")
rhmscale sweep status "$root/$name" >"$out/status.txt" 2>&1
tar --exclude='*.ckpt' --exclude='wandb' -czf "$out/runs.tgz" "$root"
if [ "${WANDB:-1}" != 0 ]; then
    find "$root" -type d -name wandb -prune -print0 | tar --null -T - -czf - |
        split -b 15m - "$out/wandb.tgz."
fi
ls -la "$out"
