#!/usr/bin/env bash
# rhmscale through SLURM on a GPU machine, end to end: bench/slurm_gpu_scenario.sh STAGES OUT
#
# Installs the dev cluster from an offline bundle (.slurm-bundle, made on a machine with a
# package registry by: slurm/dev-cluster.sh bundle .slurm-bundle), starts it with the machine's
# GPUs (4 shards each, no accounting), then runs STAGES, a comma-separated list of
#   probe:   one GPU job (what it sees) and one packed task of SPEC, shortened, to time it;
#   serial:  SPEC through sbatch, one task per GPU (gpus_per_task 1): tasks one after another;
#   shared:  the same with 4 tasks per GPU through shards (--gres=shard:1);
#   requeue: shared again, with a time limit of RQ_TIMEOUT_MIN minutes (default 2: SLURM sends
#            USR2 90 s before it, at 30 s; submitit requeues) and task 0 requeued by
#            'scontrol requeue' at its first checkpoint; its runs must end as the uninterrupted
#            ones (compare.json).
# Each stage has its own root under /tmp/scenario/roots. A later call on the same (warm) machine
# keeps them; on a fresh one, FROM=evidence.tgz of an earlier call restores their run folders
# (checkpoints left out), so stages can be split across calls and still be compared.
# OUT gets: scenario.log, summary.json (wall times of the stages run so far), compare.json
# (each other sweep stage against REFERENCE, default serial, once that one is there),
# evidence.tgz (cluster config, sbatch lines,
# squeue snapshots, statuses, run folders without checkpoints).
# DEADLINE=S (seconds of this script): a stage still running then is cancelled and left out of
# summary.json, so that a call ends inside its limit with what it has; a later call redoes it.
# Wheels in .whl/ (packages the machine lacks) are installed first (bench/device_env.sh).
set -uo pipefail
stages=,$1, out=$(realpath "$2")
SPEC=${SPEC:-results/slurm-gpu/gpu-packed.yaml}
work=/tmp/scenario
mkdir -p "$work/evidence" "$work/roots"
[[ -z ${FROM:-} || -n $(ls "$work/roots") ]] || tar -xzf "$FROM" -C "$work" || exit 1
ev=$work/evidence
say() { echo "[$(date +%T)] $*" | tee -a "$out/scenario.log"; }
fail() {
    say "FAILED: $*"
    pack
    exit 1
}
pack() {
    cp -r "${RHMSCALE_SLURM_STATE:-$HOME/.rhmscale-slurm}/log" "$ev/slurm-log" 2>/dev/null
    tar -czf "$out/evidence.tgz" -C "$work" --exclude='*.ckpt' --exclude='wandb' evidence roots 2>/dev/null
}
since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}'; }
wanted() { [[ $stages == *",$1,"* ]]; }

source bench/device_env.sh

# ------------------------------------------------------------------ the cluster
say "machine: $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | head -1 | awk '{print $NF}'), $(nproc) CPUs"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$out/scenario.log"
ls -l /dev/nvidia* >"$ev/dev-nvidia.txt" 2>&1
{ echo "cgroup: $(ls /sys/fs/cgroup 2>&1 | tr '\n' ' ')"; grep -c localhost /etc/hosts; } >>"$out/scenario.log"
t0=$(date +%s.%N)
bash slurm/dev-cluster.sh install --from .slurm-bundle >"$ev/install.log" 2>&1 || fail "install --from: $(tail -3 "$ev/install.log")"
say "installed from the bundle in $(since "$t0") s"
bash slurm/dev-cluster.sh start ${START_OPTS:---gpus auto --shards 4 --accounting no} >"$ev/start.log" 2>&1 ||
    fail "start: $(tail -5 "$ev/start.log")"
eval "$(bash slurm/dev-cluster.sh env)"
state=$(dirname "$SLURM_CONF")
cp "$state/slurm.conf" "$state/gres.conf" "$ev/"
scontrol show node >"$ev/node.txt"
sinfo -o "%P %N %c %m %G %T" | tee -a "$out/scenario.log"

snapshot() { # snapshot NAME LABEL: squeue of the sweep's array, every 2 s, until it is gone
    local name=$1
    while [[ -n $(squeue -h -r -n "rhm-$name") ]]; do
        if ((SECONDS > ${DEADLINE:-999999})) && [[ ! -e $ev/late-$2 ]]; then
            say "$2: past the deadline (${DEADLINE} s): cancelled, left for a later call"
            touch "$ev/late-$2"
            scancel -n "rhm-$name"
        fi
        { date +%T; squeue -r -n "rhm-$name" -o "%i %T %b %M %L %r"; } >>"$ev/squeue-$2.txt"
        # A requeued task waits out its credential (11 s here): let it start at once.
        squeue -h -r -n "rhm-$name" -t PD -o "%i %r" | awk '$2 == "BeginTime" {print $1}' |
            while read -r id; do scontrol update "JobId=$id" StartTime=now; done
        sleep 2
    done
}

run_sweep() { # run_sweep LABEL [submit options...]: submit SPEC into roots/LABEL, wait, record
    local label=$1 root=$work/roots/$1 start name
    shift
    name=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$SPEC")
    if grep -q "^$label " "$ev/walls.txt" 2>/dev/null; then
        say "$label: done by an earlier call, kept"
        return
    fi
    rm -rf "$root" "$ev/late-$label" # a stage cut short by a deadline is redone whole
    rhmscale sweep plan "$SPEC" --root "$root" "$@" >"$ev/plan-$label.txt" 2>&1
    start=$(date +%s.%N)
    rhmscale sweep submit "$SPEC" --root "$root" "$@" >"$ev/submit-$label.txt" 2>&1 ||
        fail "submit $label: $(tail -3 "$ev/submit-$label.txt")"
    [[ -z ${ON_SUBMIT:-} ]] || $ON_SUBMIT "$root/$name" "$name" &
    snapshot "$name" "$label"
    wait
    [[ -e $ev/late-$label ]] || echo "$label $(since "$start")" >>"$ev/walls.txt"
    rhmscale sweep status "$root/$name" >"$ev/status-$label.txt" 2>&1
    cp "$root/$name"/submitit/*_submission.sh "$ev/sbatch-$label.sh" 2>/dev/null
    grep -h -E ": device |from step|requeue|USR2|signal" "$root/$name"/runs/*/run.log >"$ev/runlog-$label.txt"
    say "$label: $(rhmscale sweep status "$root/$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"])') in $(since "$start") s"
}

if wanted probe; then
    srun --gres=shard:1 bash -c 'echo "in a shard job: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; python3 -c "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name())"' 2>&1 | tee -a "$out/scenario.log"
    python3 - "$SPEC" "$work/probe.yaml" <<'EOF'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec["name"] = "probe"
spec["base"]["train"]["max_steps"] = 5000
spec["grid"] = spec["grid"][:1] if isinstance(spec["grid"], list) else spec["grid"]
yaml.safe_dump(spec, open(sys.argv[2], "w"))
EOF
    SPEC=$work/probe.yaml run_sweep probe
    grep -h "training\|done\|compiled" "$work/roots/probe/probe/runs/"*/run.log | head -6 | tee -a "$out/scenario.log"
fi

requeue_first_task() { # once a run of task 0 has a checkpoint, 'scontrol requeue' it
    local folder=$1 array="" run
    for _ in $(seq 300); do
        array=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['array_id'])" "$folder/jobs.jsonl" 2>/dev/null)
        run=$(grep -l "SLURM_ARRAY_TASK_ID=0$" "$folder"/runs/*/run.log 2>/dev/null | head -1)
        [[ -n $array && -n $run ]] && compgen -G "$(dirname "$run")/checkpoints/*.ckpt" >/dev/null && break
        sleep 1
    done
    say "requeue: scontrol requeue ${array}_0 (a checkpoint exists)"
    scontrol requeue "${array}_0" 2>&1 | tee -a "$out/scenario.log"
}

wanted serial && run_sweep serial
wanted shared && run_sweep shared --tasks-per-gpu 4 --shards-per-gpu 4
wanted requeue && ON_SUBMIT=requeue_first_task run_sweep requeue --tasks-per-gpu 4 --shards-per-gpu 4 --timeout-min "${RQ_TIMEOUT_MIN:-2}"

reference=${REFERENCE:-serial} # the uninterrupted sweep the others are compared with
if grep -q "^$reference " "$ev/walls.txt" 2>/dev/null && [[ $(ls "$work/roots" | grep -v probe | wc -l) -ge 2 ]]; then
    python3 bench/slurm_gpu_compare.py "$work/roots" --out "$out/compare.json" \
        --reference "$reference" | tee -a "$out/scenario.log"
fi
python3 - "$out/summary.json" "$ev/walls.txt" <<'EOF'
import json, subprocess, sys
from pathlib import Path
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except FileNotFoundError:  # the scenario tried on a CPU machine's declared GPUs
    gpu = "none (no nvidia-smi)"
walls = Path(sys.argv[2])
lines = walls.read_text().splitlines() if walls.exists() else []
wall_s = {label: float(s) for label, s in (line.split() for line in lines)}
summary = {"gpu": gpu, "wall_s": wall_s}
if "serial" in wall_s and "shared" in wall_s:
    summary["shared_speedup"] = wall_s["serial"] / wall_s["shared"]
json.dump(summary, open(sys.argv[1], "w"), indent=1)
EOF
cat "$out/summary.json" | tee -a "$out/scenario.log"
pack
