#!/usr/bin/env bash
# One device call for the streaming workers (issue 29) and the GPU-only tests (issue 35):
#   bash bench/device_workers.sh OUT
# 1. paper-lite end to end with this checkout (bench/sweep_breakdown.py: wall, member-steps/s,
#    GPU busy, phases, and, unless REFERENCE=0, the training-only rate of its shapes), at most
#    SWEEP_S (330) s;
# 2. bench/test_gpu.sh (the GPU-only tests and a packed GPU sweep), at most TESTS_S (170);
# 3. bench/graph_vs_compiled.py for the transformer (issue 35), with what time is left.
# Everything lands in OUT (one tarball, out.tgz, besides the logs).
set -uo pipefail
out=$1
mkdir -p "$out"
source bench/device_env.sh
device_facts "$out/device.txt"
started=$(date +%s)
echo "== paper-lite ($(($(date +%s) - started)) s)"
timeout "${SWEEP_S:-330}" python3 bench/sweep_breakdown.py paper-lite --root /tmp/sw \
    --out "$out/sweep_paper_lite_workers.json" --figure "$out/sweep_paper_lite_workers.png" \
    --label "streaming workers" $([ "${REFERENCE:-1}" = 0 ] || echo --reference) \
    >"$out/sweep.log" 2>&1
echo "rc=$? $(($(date +%s) - started)) s" | tee -a "$out/sweep.log"
rhmscale sweep status /tmp/sw/paper-lite >"$out/status.txt" 2>&1
echo "== tests ($(($(date +%s) - started)) s)"
timeout "${TESTS_S:-170}" bash bench/test_gpu.sh "$out/test_gpu.log" >/dev/null 2>&1
echo "rc=$? $(($(date +%s) - started)) s" | tee -a "$out/test_gpu.log"
left=$((${LIMIT_S:-560} - ($(date +%s) - started)))
echo "== graph vs compiled: $left s left"
if [ "$left" -gt 40 ]; then
    timeout "$left" python3 bench/graph_vs_compiled.py --archs transformer --budget-s $((left - 20)) \
        --out "$out/graph_vs_compiled.json" >"$out/graph_vs_compiled.log" 2>&1
    echo "rc=$?" >>"$out/graph_vs_compiled.log"
fi
tar --exclude='*.ckpt' --exclude='wandb' -czf "$out/runs.tgz" -C /tmp sw 2>/dev/null
tar -czf "$out/../out.tgz" -C "$out" . && mv "$out/../out.tgz" "$out/out.tgz"
ls -la "$out"
