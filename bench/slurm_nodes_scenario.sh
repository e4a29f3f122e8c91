#!/usr/bin/env bash
# A sweep across three SLURM nodes that loses one mid-run: bench/slurm_nodes_scenario.sh OUT
#
# Starts the dev cluster with three nodes (slurm/dev-cluster.sh start --nodes 3, no GPUs), then
# submits SPEC (default results/slurm-nodes/nodes.yaml: 24 CPU runs, two a task, three tasks at
# once) with `rhmscale sweep submit`. Once a third of the runs are done and a run trains on
# node2 with a checkpoint, node2's power fails (dev-cluster.sh kill-node node2: its slurmd and
# every process of its jobs SIGKILLed). The script then records `sweep status` every 2 s (what
# it says of node2, the runs' states), squeue and sinfo, until every task has ended; checks
# that every run is done once (one result.json, one training from step 0, evaluations recorded
# once, resumed runs from a checkpoint on another node); brings node2 back; and writes to OUT:
#   scenario.log   what happened, with times
#   status.log     `sweep status` (and its notes) every 2 s from the kill to the end
#   queue.log      squeue and sinfo every 2 s
#   runs.tsv       each run: state, the nodes it was set up on (in order), the step it last
#                  started from (0: from the start; a run set up ahead of a free slot on the lost
#                  node, or trained there before its first checkpoint, starts from 0 on another)
#   summary.json   the checks and times
# Needs root (the dev cluster), the rhmscale command on PATH and its python (RHMSCALE_PY, default
# python3) able to import rhmscale.
set -uo pipefail
out=$(realpath -m "$1")
SPEC=${SPEC:-results/slurm-nodes/nodes.yaml}
LOST=${LOST:-node2}
PY=${RHMSCALE_PY:-python3}
RHM=(rhmscale)
mkdir -p "$out"
: >"$out/scenario.log"
root=$(mktemp -d /tmp/slurm-nodes.XXXXXX)
say() { echo "[$(date +%T)] $*" | tee -a "$out/scenario.log"; }
fail() {
    say "FAILED: $*"
    exit 1
}
t0=$(date +%s.%N)
since() { awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}'; }

say "machine: $(. /etc/os-release && echo "$PRETTY_NAME"), $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GB"
bash slurm/dev-cluster.sh start --nodes 3 --gpus 0 --accounting yes >"$out/start.txt" 2>&1 ||
    fail "start: $(tail -5 "$out/start.txt")"
eval "$(bash slurm/dev-cluster.sh env)"
sinfo -N -o "%N %c %m %G %T" | tee -a "$out/scenario.log"
grep -E '^(NodeName|PartitionName|SlurmdTimeout)' "$(dirname "$SLURM_CONF")/slurm.conf" | tee -a "$out/scenario.log"
name=$("$PY" -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$SPEC")
sweep=$root/$name

"${RHM[@]}" sweep submit "$SPEC" --root "$root" >"$out/submit.txt" 2>&1 ||
    fail "submit: $(tail -3 "$out/submit.txt")"
say "$(grep -a '^sweep .*submitted' "$out/submit.txt")"
array=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['array_id'])" "$sweep/jobs.jsonl")
t0=$(date +%s.%N)

counts() { "${RHM[@]}" sweep status "$sweep" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["counts"])'; }
n_done() { "${RHM[@]}" sweep status "$sweep" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["counts"]["done"])'; }
# a run that trains on LOST and has a checkpoint (its lock's holder line names the node)
victim() {
    local lock
    for lock in "$sweep"/runs/*/.lock; do
        [[ -e $lock ]] || continue
        if grep -q " node $LOST training since " "$lock" && compgen -G "$(dirname "$lock")/checkpoints/*.ckpt" >/dev/null; then
            basename "$(dirname "$lock")"
            return 0
        fi
    done
    return 1
}
queue_log() {
    { echo "--- $(since) s"; squeue -r -j "$array" -o "%i %T %N %r" 2>&1; sinfo -h -N -o "%N %T %E" 2>&1; } >>"$out/queue.log"
}
total=$(ls "$sweep/backlog" | wc -l)
while :; do
    queue_log
    done_now=$(n_done)
    if ((done_now * 3 >= total)) && run=$(victim); then break; fi
    (($(awk -v s="$(since)" 'BEGIN {print (s > 600)}'))) && fail "no run trained on $LOST within 600 s"
    sleep 1
done
say "$done_now of $total runs done; run $run trains on $LOST: killing $LOST"
# The runs that have a checkpoint now resume from it; one the node trained without a checkpoint
# yet starts again from step 0 (as after any crash).
for ckpt in "$sweep"/runs/*/checkpoints/last.ckpt; do
    [[ -e $ckpt ]] && basename "$(dirname "$(dirname "$ckpt")")"
done >"$root/resumable.txt"
bash slurm/dev-cluster.sh kill-node "$LOST" 2>&1 | tee -a "$out/scenario.log"
killed_at=$(since)
noted=""
while [[ -n $(squeue -h -r -j "$array" 2>/dev/null) ]] || ! squeue -h >/dev/null 2>&1; do
    queue_log
    { echo "--- $(since) s"; "${RHM[@]}" sweep status "$sweep" 2>&1; } >>"$out/status.log"
    if [[ -z $noted ]] && note=$(grep -a -A3 "node $LOST is lost" "$out/status.log" | tr -s ' \n' ' '); then
        noted=$(since)
        say "sweep status, $(awk -v a="$noted" -v b="$killed_at" 'BEGIN {printf "%.0f", a - b}') s after the kill: ${note%%--- *}"
    fi
    if sinfo -h -n "$LOST" -o %T | grep -q '^down' && [[ ! -e $root/.down ]]; then
        touch "$root/.down"
        say "$LOST is DOWN ($(sinfo -h -n "$LOST" -o '%T %E')); $(grep -c . <<<"$(squeue -h -r -j "$array" -t PD)") task(s) pending"
    fi
    (($(awk -v s="$(since)" 'BEGIN {print (s > 1200)}'))) && fail "tasks still queued after 1200 s"
    sleep 2
done
queue_log
end=$(since)
say "every task ended at $end s; sweep: $(counts)"
"${RHM[@]}" sweep status "$sweep" >"$out/final-status.txt" 2>&1
sacct -X -j "$array" -o JobID%12,State,NodeList,Start,End >"$out/sacct.txt" 2>&1
grep -h "Requeu\|requeue" "$(dirname "$SLURM_CONF")/log/slurmctld.log" | grep "JobId=${array}_" >>"$out/scenario.log"

"$PY" - "$sweep" "$LOST" "$run" "$out" "$killed_at" "$end" "${noted:-}" "$root/resumable.txt" <<'EOF'
import json, re, sys
from pathlib import Path
import pandas as pd
from rhmscale.store.folders import RunDir
from rhmscale.sweeps.status import sweep_status

sweep, lost, victim, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
killed_at, end, noted = float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
resumable = set(Path(sys.argv[8]).read_text().split())
status = sweep_status(sweep)
rows, problems, resumed, moved = [], [], [], []
for run in status.runs:
    folder = sweep / "runs" / run.run_id
    log = (folder / "run.log").read_text()
    nodes = re.findall(rf"run {run.run_id} on (\S+) \(job", log)
    # the steps it started training from, in order: first in a pack, or taking a slot later
    found = re.findall(rf"training \d+ run\(s\) from step (\d+)|run {run.run_id} took slot \d+ at its step (\d+)", log)
    starts = [int(a or b) for a, b in found]
    steps = list(pd.read_parquet(RunDir(folder).metrics)["step"])
    if run.state != "done":
        problems.append(f"{run.run_id}: {run.state}")
    moved_off = len(nodes) == 2 and nodes[0] == lost
    # from step 0 once; twice only if the lost node was training it before its first checkpoint
    if starts.count(0) not in ((1, 2) if moved_off and run.run_id not in resumable else (1,)):
        problems.append(f"{run.run_id}: trained from step 0 {starts.count(0)} times")
    if moved_off and run.run_id in resumable and starts[-1] == 0:
        problems.append(f"{run.run_id}: had a checkpoint, started again from step 0")
    if steps != sorted(set(steps)):
        problems.append(f"{run.run_id}: evaluations {steps}")
    # Set up again elsewhere: taken on the lost node (training, or set up ahead of a free slot),
    # then by a worker on another node; from its checkpoint if it had one.
    if len(nodes) > 1:
        moved.append(run.run_id)
        if nodes[0] != lost or lost in nodes[1:]:
            problems.append(f"{run.run_id}: set up on {nodes}, from steps {starts}")
    if starts[-1] > 0:
        resumed.append(run.run_id)
        if len(nodes) < 2:
            problems.append(f"{run.run_id}: resumed from step {starts[-1]} on {nodes}")
    rows.append((run.run_id, run.state, ",".join(nodes), starts[-1]))
with open(out / "runs.tsv", "w") as f:
    f.write("run\tstate\tset up on\tresumed from step\n")
    for row in rows:
        f.write("\t".join(map(str, row)) + "\n")
summary = {
    "runs": len(status.runs),
    "counts": dict(status.counts),
    "run_folders": len(list((sweep / "runs").iterdir())),
    "nodes_used": sorted({n for _, _, nodes, _ in rows for n in nodes.split(",")}),
    "lost_node": lost,
    "killed_at_s": killed_at,
    "status_named_the_lost_node_at_s": float(noted) if noted else None,
    "all_tasks_ended_at_s": end,
    "runs_set_up_again_on_another_node": moved,
    "runs_resumed_from_a_checkpoint": resumed,
    "victim_resumed": victim in resumed,
    "problems": problems,
    "every_run_done_once": not problems and status.counts == {"done": len(status.runs)},
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["every_run_done_once"] and summary["victim_resumed"] else 1)
EOF
ok=$?
cat "$out/summary.json" >>"$out/scenario.log"
bash slurm/dev-cluster.sh start >>"$out/start.txt" 2>&1 && say "$LOST back: $(sinfo -h -N -o '%N=%T' | paste -sd' ')"
rm -rf "$root"
((ok == 0)) || fail "the checks failed (summary.json)"
say "every run done once; $LOST lost at ${killed_at} s, its runs resumed on the other nodes"
