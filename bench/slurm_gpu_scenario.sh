#!/usr/bin/env bash
# rhmscale through SLURM on a GPU machine, end to end: bench/slurm_gpu_scenario.sh MODE OUT
#
# Installs the dev cluster from an offline bundle (.slurm-bundle, made on a machine with a
# package registry by: slurm/dev-cluster.sh bundle .slurm-bundle), starts it with the machine's
# GPUs (4 shards each, no accounting), then
#   probe: one GPU job (what it sees) and one packed task of SPEC, shortened, to time it;
#   full:  SPEC three times through sbatch, each in its own root:
#          serial/   one task per GPU (gpus_per_task 1): the tasks run one after another;
#          shared/   the same with 4 tasks per GPU through shards (--gres=shard:1);
#          requeue/  shared again, with a 2-minute time limit (SLURM sends USR2 at 30 s,
#                    submitit requeues) and task 0 requeued by 'scontrol requeue' at its first
#                    checkpoint; its runs must end as the uninterrupted ones (compare.json).
# OUT gets at most 8 files: scenario.log, summary.json, compare.json, evidence.tgz (cluster
# config, sbatch lines, squeue snapshots, statuses, run folders without checkpoints).
# Wheels in .whl/ (packages the machine lacks) are installed first, into /tmp/site.
set -uo pipefail
mode=$1 out=$(realpath "$2")
SPEC=${SPEC:-results/slurm-gpu/gpu-packed.yaml}
work=/tmp/scenario
rm -rf "$work" && mkdir -p "$work/evidence"
ev=$work/evidence
say() { echo "[$(date +%T)] $*" | tee -a "$out/scenario.log"; }
fail() {
    say "FAILED: $*"
    pack
    exit 1
}
pack() { tar -czf "$out/evidence.tgz" -C "$work" --exclude='*.ckpt' --exclude='wandb' evidence roots 2>/dev/null; }
rhm() { python3 -c "from rhmscale.cli import main; main()" "$@"; }
since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}'; }

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

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

snapshot() { # snapshot NAME: squeue of the sweep's array, every 2 s, until it is gone
    local name=$1
    while [[ -n $(squeue -h -r -n "rhm-$name") ]]; do
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
    rhm sweep plan "$SPEC" --root "$root" "$@" >"$ev/plan-$label.txt" 2>&1
    start=$(date +%s.%N)
    rhm sweep submit "$SPEC" --root "$root" "$@" >"$ev/submit-$label.txt" 2>&1 ||
        fail "submit $label: $(tail -3 "$ev/submit-$label.txt")"
    [[ -z ${ON_SUBMIT:-} ]] || $ON_SUBMIT "$root/$name" "$name" &
    snapshot "$name" "$label"
    wait
    WALL[$label]=$(since "$start")
    rhm sweep status "$root/$name" >"$ev/status-$label.txt" 2>&1
    cp "$root/$name"/submitit/*_submission.sh "$ev/sbatch-$label.sh" 2>/dev/null
    grep -h -E ": device |from step|requeue|USR2|signal" "$root/$name"/runs/*/run.log >"$ev/runlog-$label.txt"
    say "$label: $(rhm sweep status "$root/$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"])') in ${WALL[$label]} s"
}
declare -A WALL

if [[ $mode == probe ]]; then
    srun --gres=shard:1 bash -c 'echo "in a shard job: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; python3 -c "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name())"' 2>&1 | tee -a "$out/scenario.log"
    python3 - "$SPEC" "$work/probe.yaml" <<'EOF'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec["name"] = "probe"
spec["base"]["train"]["max_steps"] = 5000
spec["grid"] = spec["grid"][:1]
yaml.safe_dump(spec, open(sys.argv[2], "w"))
EOF
    SPEC=$work/probe.yaml run_sweep probe
    grep -h "training\|done" "$work/roots/probe/probe/runs/"*/run.log | head -4 | tee -a "$out/scenario.log"
    pack
    exit 0
fi

# ------------------------------------------------------------------ full
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

run_sweep serial
run_sweep shared --tasks-per-gpu 4 --shards-per-gpu 4
ON_SUBMIT=requeue_first_task run_sweep requeue --tasks-per-gpu 4 --shards-per-gpu 4 --timeout-min 2

python3 bench/slurm_gpu_compare.py "$work/roots" --out "$out/compare.json" | tee -a "$out/scenario.log"
python3 - "$out/summary.json" "${WALL[serial]}" "${WALL[shared]}" "${WALL[requeue]}" <<'EOF'
import json, sys, subprocess
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
serial, shared, requeue = map(float, sys.argv[2:])
json.dump({"gpu": gpu, "wall_s": {"serial": serial, "shared_4_per_gpu": shared,
           "requeue_shared": requeue}, "shared_speedup": serial / shared},
          open(sys.argv[1], "w"), indent=1)
EOF
cat "$out/summary.json" | tee -a "$out/scenario.log"
pack
