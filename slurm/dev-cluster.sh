#!/usr/bin/env bash
# dev-cluster.sh - a real SLURM cluster of one or several nodes on this machine, for tests and
# laptops.
#
# munge + MariaDB + slurmdbd + slurmctld + one slurmd per node (slurmd -N NODE, each with its
# own port, spool, pid and log file) on this machine, every file of the cluster (config, logs,
# pid files, spool, database) in one state folder. Runs as root; needs no systemd and no
# cgroups. See slurm/README.md.
set -euo pipefail

PROG=$(basename "$0")

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS] COMMAND

A SLURM cluster on this machine (munge, MariaDB, slurmdbd, slurmctld, one slurmd per node) for
tests and laptops, with the machine's GPUs (or declared ones) as GRES. All its state lives in
one folder. Must run as root.

Commands:
  install   apt-get install slurm-wlm munge slurmdbd mariadb-server (skipped when installed)
  install --from DIR [--dry-run]
            install SLURM and munge offline from the .deb files of 'bundle' (dpkg; no package
            registry; no slurmdbd/MariaDB, so the cluster runs without accounting); with
            --dry-run: list what it would install and what is already here, change nothing
  bundle DIR
            download here (apt) the .deb files of SLURM, munge and every library they need
            into DIR, for 'install --from DIR' on a machine without a package registry
  start     write the config and start every daemon that is not running; wait until the node
            is idle (idempotent; also after a machine restart with stale pid files); with
            --accounting no, stops the slurmdbd and MariaDB it had started; starts again the
            slurmd of a node that kill-node stopped
  stop      stop the daemons this script started (the state folder is kept)
  status    show which daemons are up (one slurmd per node) and the sinfo output; exit 0 if
            the cluster is usable (every node answers)
  kill-node NODE
            what a node's power failure does: SIGKILL its slurmd and every process of the
            jobs on it (their slurmstepd and what they started); slurmctld marks it DOWN
            after SlurmdTimeout (10 s with --nodes > 1) and requeues its batch jobs. 'start'
            brings the node back
  env       print the export line, for: eval "\$($PROG env)"

Options:
  --state DIR        state folder (env RHMSCALE_SLURM_STATE; default \$HOME/.rhmscale-slurm)
  --gpus N|auto      GPUs of the node, as GRES gpu (start): auto = one per 'nvidia-smi -L' line,
                     each bound to its /dev/nvidiaN; a number on a machine without them declares
                     GPUs that exist only for the scheduler (no device, no CUDA_VISIBLE_DEVICES)
  --shards K         SLURM GPU shards per GPU (GRES shard; start; default 4; 0 for none): K jobs
                     asking --gres=shard:1 share one GPU
  --accounting yes|no|auto
                     slurmdbd + MariaDB, for sacct (start; auto: yes when both are installed)
  --nodes N          compute nodes (start; default 1, at most 16): 1 is 'localhost'; N > 1 are
                     node1..nodeN, each a slurmd of its own declaring every CPU, sharing out
                     the memory and the GPUs (GPU i on node i mod N); jobs go to the least
                     loaded node
                     start remembers these four in the state folder; give one to change it
  --db-port PORT     MariaDB TCP port on 127.0.0.1 (env RHMSCALE_SLURM_DB_PORT; default 3307)
  --dry-run          install --from: say what would be installed, install nothing
  --timeout SECONDS  how long start waits for each daemon and for the node
                     (env RHMSCALE_SLURM_TIMEOUT; default 60)
  -h, --help         this help

Ports: slurmctld 6817, slurmd 6818, slurmdbd 6819 (the SLURM defaults; with --nodes N > 1 node k's
slurmd listens on 6819+k), so one dev cluster runs per machine. Every SLURM command needs SLURM_CONF=<state>/slurm.conf (start and env print it).
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

log() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

STATE=${RHMSCALE_SLURM_STATE:-${HOME:-/root}/.rhmscale-slurm}
DB_PORT=${RHMSCALE_SLURM_DB_PORT:-3307}
TIMEOUT=${RHMSCALE_SLURM_TIMEOUT:-60}
CLUSTER_NAME=rhmscale
CTLD_PORT=6817
SLURMD_PORT=6818
DBD_PORT=6819
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
# What 'bundle' downloads with its dependencies: a cluster without accounting.
BUNDLE_PACKAGES=(slurm-wlm munge)
GPUS_OPT="" SHARDS_OPT="" ACCOUNTING_OPT="" NODES_OPT="" FROM="" BUNDLE_DIR="" KILL_NODE="" DRY_RUN=0
MAX_NODES=16
# Daemons are started with this environment only, so nothing of the caller's environment
# (a virtualenv, SLURM_* variables of an enclosing job, pytest's settings) leaks into them.
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

COMMAND=""
while (($# > 0)); do
    case $1 in
        -h | --help | help)
            usage
            exit 0
            ;;
        --state)
            (($# >= 2)) || die "--state needs a folder"
            STATE=$2
            shift 2
            ;;
        --state=*)
            STATE=${1#--state=}
            shift
            ;;
        --db-port)
            (($# >= 2)) || die "--db-port needs a port number"
            DB_PORT=$2
            shift 2
            ;;
        --db-port=*)
            DB_PORT=${1#--db-port=}
            shift
            ;;
        --dry-run)
            DRY_RUN=1
            shift
            ;;
        --timeout)
            (($# >= 2)) || die "--timeout needs a number of seconds"
            TIMEOUT=$2
            shift 2
            ;;
        --timeout=*)
            TIMEOUT=${1#--timeout=}
            shift
            ;;
        --gpus | --shards | --accounting | --nodes | --from)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --gpus) GPUS_OPT=$2 ;;
                --nodes) NODES_OPT=$2 ;;
                --shards) SHARDS_OPT=$2 ;;
                --accounting) ACCOUNTING_OPT=$2 ;;
                --from) FROM=$2 ;;
            esac
            shift 2
            ;;
        install | start | stop | status | env | bundle | kill-node)
            [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
            COMMAND=$1
            shift
            if [[ $COMMAND == bundle ]]; then
                (($# >= 1)) && [[ $1 != -* ]] || die "bundle needs a folder: $PROG bundle DIR"
                BUNDLE_DIR=$1
                shift
            elif [[ $COMMAND == kill-node ]]; then
                (($# >= 1)) && [[ $1 != -* ]] || die "kill-node needs a node name: $PROG kill-node node2"
                KILL_NODE=$1
                shift
            fi
            ;;
        *)
            usage >&2
            die "unknown argument '$1'"
            ;;
    esac
done
[[ -n $COMMAND ]] || {
    usage >&2
    exit 2
}
[[ $DB_PORT =~ ^[0-9]+$ ]] || die "--db-port must be a number, got '$DB_PORT'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, got '$TIMEOUT'"
[[ -n $STATE ]] || die "the state folder must not be empty"
[[ -z $GPUS_OPT || $GPUS_OPT == auto || $GPUS_OPT =~ ^[0-9]+$ ]] ||
    die "--gpus must be a number of GPUs or 'auto', got '$GPUS_OPT'"
[[ -z $SHARDS_OPT || $SHARDS_OPT =~ ^[0-9]+$ ]] ||
    die "--shards must be a number of shards per GPU, got '$SHARDS_OPT'"
[[ -z $ACCOUNTING_OPT || $ACCOUNTING_OPT =~ ^(yes|no|auto)$ ]] ||
    die "--accounting must be yes, no or auto, got '$ACCOUNTING_OPT'"
[[ -z $NODES_OPT ]] || { [[ $NODES_OPT =~ ^[0-9]+$ ]] && ((NODES_OPT >= 1 && NODES_OPT <= MAX_NODES)); } ||
    die "--nodes must be a number of nodes from 1 to $MAX_NODES, got '$NODES_OPT'"
[[ -z $FROM || $COMMAND == install ]] || die "--from goes with install: $PROG install --from DIR"
((DRY_RUN == 0)) || [[ -n $FROM ]] || die "--dry-run goes with install --from: $PROG install --from DIR --dry-run"

STATE=$(realpath -m -- "$STATE")
CONF=$STATE/slurm.conf
DBD_CONF=$STATE/slurmdbd.conf
CGROUP_CONF=$STATE/cgroup.conf
LOG_DIR=$STATE/log
RUN_DIR=$STATE/run
DB_DIR=$STATE/mysql
DB_SOCKET=$RUN_DIR/mysqld.sock
DB_PASS_FILE=$STATE/.db-password
MUNGE_MARK=$RUN_DIR/munged.started # holds munged's pid when this script started munged
GRES_CONF=$STATE/gres.conf
SETTINGS=$STATE/settings # gpus=, shards=, accounting=, nodes= as 'start' last chose them

export SLURM_CONF=$CONF

export_line() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

# ---------------------------------------------------------------- process helpers

# pid_alive PIDFILE NAME: the pid in PIDFILE is a live process called NAME (pid files left
# over from before a restart may name an unrelated process, hence the name check).
pid_alive() {
    local pidfile=$1 name=$2 pid comm
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    [[ -n $pid ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    comm=$(<"/proc/$pid/comm")
    [[ $comm == "$name" ]]
}

pid_of() {
    tr -dc '0-9' <"$1"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

log_tail() {
    local file=$1
    if [[ -r $file ]]; then
        printf -- '--- last lines of %s:\n' "$file" >&2
        tail -n 25 "$file" >&2
        printf -- '---\n' >&2
    else
        printf -- '--- (no log file %s)\n' "$file" >&2
    fi
}

# wait_for DESCRIPTION LOGFILE COMMAND...: run COMMAND every 0.2 s until it succeeds; after
# TIMEOUT seconds show the log tail and fail.
wait_for() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what"
            log_tail "$logfile"
            die "$what did not come up (see $logfile)"
        fi
        sleep 0.2
    done
}

# run_daemon LOGFILE COMMAND...: run COMMAND detached from this shell's session and stdio
# (a caller that captures our output, such as a test fixture, must not wait on the daemons)
# with a clean environment.
run_daemon() {
    local logfile=$1
    shift
    env -i PATH="$DAEMON_PATH" HOME="${HOME:-/root}" LANG=C.UTF-8 SLURM_CONF="$CONF" \
        setsid "$@" </dev/null >>"$logfile" 2>&1
}

# signal_pid PIDFILE NAME: SIGTERM the daemon named in PIDFILE; prints its pid, fails (and
# removes the stale pid file) if it is not running.
signal_pid() {
    local pidfile=$1 name=$2 pid
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 1
    fi
    pid=$(pid_of "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    echo "$pid"
}

# wait_gone NAME PID...: wait up to 15 s for the processes to exit, then SIGKILL them.
wait_gone() {
    local name=$1 pid i alive
    shift
    for ((i = 0; i < 75; i++)); do
        alive=0
        for pid in "$@"; do [[ -d /proc/$pid ]] && alive=1; done
        ((alive)) || return 0
        sleep 0.2
    done
    for pid in "$@"; do
        if [[ -d /proc/$pid ]]; then
            log "$name (pid $pid) did not stop after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    sleep 0.2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run this as root (the dev cluster runs its daemons and jobs as root)"
}

require_binaries() {
    local b missing=() accounting=()
    [[ $ACCOUNTING == no ]] ||
        accounting=(slurmdbd sacctmgr mariadbd mariadb-install-db mariadb mariadb-admin)
    for b in munged munge unmunge slurmctld slurmd sinfo "${accounting[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    ((${#missing[@]} == 0)) ||
        die "not installed: ${missing[*]} (run: $PROG install; or --accounting no, if only slurmdbd/MariaDB are missing)"
}

# ---------------------------------------------------------------- install

cmd_install() {
    ((DRY_RUN)) || require_root
    if [[ -n $FROM ]]; then
        install_from "$FROM"
        return
    fi
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "already installed: ${PACKAGES[*]}"
        return 0
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    log "installed; now run: $PROG start"
}

# bundle DIR: the .deb files of BUNDLE_PACKAGES and of everything they depend on, as apt
# resolves them for an empty system (so the bundle does not depend on what is installed here).
cmd_bundle() {
    local dir tmp names
    command -v apt-get >/dev/null 2>&1 || die "bundle needs apt-get (Debian or Ubuntu)"
    dir=$(realpath -m -- "$BUNDLE_DIR")
    [[ ! -e $dir ]] || [[ -z $(ls -A "$dir") ]] ||
        die "$dir exists and is not empty; give a new folder (or delete it)"
    tmp=$(mktemp -d "$(dirname "$dir")/.bundle.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    install -d "$tmp/status" "$tmp/cache/partial"
    touch "$tmp/status/empty"
    if [[ -z $(ls -A /var/lib/apt/lists 2>/dev/null | grep -v '^lock$\|^partial$') ]]; then
        require_root
        apt-get update -q >&2
    fi
    names=$(apt-get -o Dir::State::status="$tmp/status/empty" -o Dir::Cache::archives="$tmp/cache" \
        install --print-uris -qq -y --no-install-recommends "${BUNDLE_PACKAGES[@]}" |
        awk '{print $2}' | sed 's/_.*//') || die "apt could not resolve ${BUNDLE_PACKAGES[*]}"
    [[ -n $names ]] || die "apt resolved no packages for ${BUNDLE_PACKAGES[*]}"
    log "downloading $(wc -w <<<"$names") packages into $dir"
    # shellcheck disable=SC2086  # one package name per word
    (cd "$tmp" && apt-get download -q $names >&2) || die "apt-get download failed"
    rm -rf "$tmp/status" "$tmp/cache"
    (cd "$tmp" && for f in *.deb; do dpkg-deb -f "$f" Package Version | sed 's/^[^:]*: //' | paste -sd' '; done) \
        >"$tmp/MANIFEST"
    mv "$tmp" "$dir"
    trap - EXIT
    log "bundle ready: $dir ($(du -sh "$dir" | cut -f1)); on the offline machine: $PROG install --from $dir"
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# lib_present DEB: the package ships shared libraries and this system already has every one of
# them under the same name (Ubuntu 24.04 renamed many library packages, libreadline8 ->
# libreadline8t64, with the same sonames: those need no Debian copy).
lib_present() {
    local deb=$1 name found=0
    while read -r name; do
        [[ -e /usr/lib/x86_64-linux-gnu/$name || -e /lib/x86_64-linux-gnu/$name ||
            -e /usr/lib/$name || -e /lib/$name ]] || ldconfig -p | grep -qF " $name " || return 1
        found=1
    done < <(dpkg-deb -c "$deb" | awk '{print $6}' | grep -E '^\./(usr/)?lib/' |
        sed 's#.*/##' | grep -E '^lib.*\.so(\.[0-9]+)+$|^lib.*-[0-9.]+\.so$' | sort -u)
    ((found))
}

# install_from DIR: dpkg-install the bundle's packages this system lacks. Dependencies met under
# another package name (see lib_present) are forced past dpkg; 'ldd' then checks that every
# SLURM and munge program finds its libraries.
install_from() {
    local dir=$1 deb pkg want=() skipped=0 created_policy=0 missing
    [[ -d $dir ]] || die "no bundle folder $dir (make one with: $PROG bundle DIR)"
    compgen -G "$dir/*.deb" >/dev/null || die "$dir holds no .deb files (make it with: $PROG bundle DIR)"
    for deb in "$dir"/*.deb; do
        pkg=$(dpkg-deb -f "$deb" Package)
        if installed "$pkg" || lib_present "$deb"; then
            skipped=$((skipped + 1))
            ((DRY_RUN == 0)) || printf 'already here: %s\n' "$pkg"
        else
            want+=("$deb")
            ((DRY_RUN == 0)) || printf 'would install: %s %s\n' "$pkg" "$(dpkg-deb -f "$deb" Version)"
        fi
    done
    if ((DRY_RUN)); then
        # dpkg's own dry run (--no-act) checks that the packages would unpack here.
        if ((${#want[@]} > 0)) && [[ $(id -u) -eq 0 ]]; then
            dpkg --no-act -i --force-depends --force-confdef --force-confold "${want[@]}" >/dev/null ||
                die "dry run: dpkg would not install the bundle (see above)"
        fi
        log "dry run: would install ${#want[@]} packages from $dir ($skipped already here); nothing installed"
        return 0
    fi
    if ((${#want[@]} == 0)); then
        log "already installed: every package of $dir ($skipped)"
    else
        log "installing ${#want[@]} packages from $dir ($skipped already here)"
        # No daemon may start from a package script: there is no init system and no config yet.
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            created_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive dpkg -i --force-depends --force-confdef --force-confold \
            "${want[@]}" >&2 || {
            ((created_policy)) && rm -f /usr/sbin/policy-rc.d
            die "dpkg could not install the bundle (see above)"
        }
        ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    fi
    missing=$(for b in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmstepd /usr/sbin/munged \
        /usr/bin/sbatch /usr/bin/squeue /usr/lib/x86_64-linux-gnu/slurm-wlm/*.so; do
        [[ -e $b ]] && ldd "$b" 2>/dev/null | grep 'not found' | sed "s#^#$b: #" || true
    done | sort -u)
    [[ -z $missing ]] || die "installed, but libraries are missing:"$'\n'"$missing"
    log "installed; now run: $PROG start (without accounting: no slurmdbd in the bundle)"
}

# ---------------------------------------------------------------- configuration

# Resolved by load_settings: the GPUs, shards per GPU, accounting (yes/no), whether the GPUs are
# this machine's devices (1) or declared only (0), and the number of nodes.
GPUS=0 SHARDS=4 ACCOUNTING=yes GPU_DEVICES=0 NODES=1

detected_gpus() {
    command -v nvidia-smi >/dev/null 2>&1 || {
        echo 0
        return
    }
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
}

# load_settings: options given now, else what the last 'start' chose, else the defaults.
load_settings() {
    local gpus=auto shards=4 accounting=auto nodes=1 key value
    if [[ -r $SETTINGS ]]; then
        while IFS='=' read -r key value; do
            case $key in
                gpus) gpus=$value ;;
                shards) shards=$value ;;
                accounting) accounting=$value ;;
                nodes) [[ $value =~ ^[0-9]+$ ]] && ((value >= 1 && value <= MAX_NODES)) && nodes=$value ;;
            esac
        done <"$SETTINGS"
    fi
    gpus=${GPUS_OPT:-$gpus}
    shards=${SHARDS_OPT:-$shards}
    accounting=${ACCOUNTING_OPT:-$accounting}
    nodes=${NODES_OPT:-$nodes}
    NODES=$nodes
    SAVED_SETTINGS=$(printf 'gpus=%s\nshards=%s\naccounting=%s\nnodes=%s' "$gpus" "$shards" "$accounting" "$nodes")
    local detected
    detected=$(detected_gpus)
    if [[ $gpus == auto ]]; then
        GPUS=$detected
    else
        GPUS=$gpus
    fi
    GPU_DEVICES=0
    if ((GPUS > 0 && detected > 0)); then
        ((GPUS <= detected)) || die "--gpus $GPUS: this machine has $detected (nvidia-smi -L)"
        GPU_DEVICES=1
    fi
    SHARDS=$shards
    if [[ $accounting == auto ]]; then
        if command -v slurmdbd >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1; then
            ACCOUNTING=yes
        else
            ACCOUNTING=no
        fi
    else
        ACCOUNTING=$accounting
    fi
}

gres_summary() {
    local what="no GPUs"
    if ((GPUS > 0)); then
        what="$GPUS GPU(s)$( ((GPU_DEVICES)) || echo ' declared, no devices')"
        ((SHARDS == 0)) || what+=", $SHARDS shards each"
    fi
    echo "$(node_count_text), $what, accounting $ACCOUNTING"
}

node_count_text() {
    if ((NODES == 1)); then echo "1 node"; else echo "$NODES nodes"; fi
}

# ---------------------------------------------------------------- nodes
# One node is today's single-node cluster: 'localhost', slurmd on SLURMD_PORT, files without a
# node name. N > 1 nodes are node1..nodeN on this machine (NodeHostname=localhost), slurmd k
# on port 6819+k, its pid, log and spool files named by slurm.conf's %n (the node's name).

node_names() {
    local k
    if ((NODES == 1)); then
        echo localhost
        return
    fi
    for ((k = 1; k <= NODES; k++)); do echo "node$k"; done
}

node_port() { # node_port K (1-based)
    if ((NODES == 1)); then echo "$SLURMD_PORT"; else echo $((DBD_PORT + $1)); fi
}

# node_file PATTERN NODE: a per-node file name of slurm.conf (its %n replaced by NODE)
node_file() {
    echo "${1//%n/$2}"
}

slurmd_pid_pattern() {
    if ((NODES == 1)); then echo "$RUN_DIR/slurmd.pid"; else echo "$RUN_DIR/slurmd-%n.pid"; fi
}

slurmd_log_pattern() {
    if ((NODES == 1)); then echo "$LOG_DIR/slurmd.log"; else echo "$LOG_DIR/slurmd-%n.log"; fi
}

slurmd_spool_pattern() {
    if ((NODES == 1)); then echo "$STATE/spool/slurmd"; else echo "$STATE/spool/slurmd-%n"; fi
}

slurmd_pidfile() { node_file "$(slurmd_pid_pattern)" "$1"; }
slurmd_logfile() { node_file "$(slurmd_log_pattern)" "$1"; }

# Every slurmd pid file in the state folder, also those of nodes an earlier start had (a
# cluster started with more nodes, or with one): stop and restart take them all.
all_slurmd_pidfiles() {
    compgen -G "$RUN_DIR/slurmd.pid" || true
    compgen -G "$RUN_DIR/slurmd-*.pid" || true
}

# node_gpu_indices K: the GPUs of node K (1-based): GPU i goes to node (i mod N) + 1.
node_gpu_indices() {
    local i
    for ((i = 0; i < GPUS; i++)); do
        if (((i % NODES) + 1 == $1)); then echo "$i"; fi
    done
    return 0
}

gres_types_line() {
    ((GPUS == 0)) && return 0
    if ((SHARDS == 0)); then echo "GresTypes=gpu"; else echo "GresTypes=gpu,shard"; fi
}

node_gres() { # node_gres K: node K's Gres=, if it has GPUs
    local n
    n=$(node_gpu_indices "$1" | wc -l)
    ((n > 0)) || return 0
    local gres="gpu:$n"
    ((SHARDS == 0)) || gres+=",shard:$((n * SHARDS))"
    printf ' Gres=%s' "$gres"
}

# One gpu line (and one shard line) per GPU. SLURM needs a device file for each: shards are
# placed by file, and the file's number becomes the job's CUDA_VISIBLE_DEVICES. Declared GPUs
# get placeholder device nodes in the state folder (fake_gpu_files), so scheduling, shards and
# CUDA_VISIBLE_DEVICES behave as with real devices (there is no device to isolate).
gres_conf_text() {
    local i file node="" names
    echo "# Written by slurm/dev-cluster.sh; regenerated by every 'start'."
    if ((GPUS == 0)); then
        echo "# No GPUs (--gpus 0, or none detected)."
        return
    fi
    ((GPU_DEVICES)) || echo "# Declared GPUs: placeholder device nodes (this machine has no GPU)."
    mapfile -t names < <(node_names)
    for ((i = 0; i < GPUS; i++)); do
        file=$(gpu_file "$i")
        ((NODES == 1)) || node="NodeName=${names[i % NODES]} "
        echo "${node}Name=gpu File=$file"
        ((SHARDS == 0)) || echo "${node}Name=shard Count=$SHARDS File=$file"
    done
}

gpu_file() {
    if ((GPU_DEVICES)); then
        echo "/dev/nvidia$1"
    else
        echo "$STATE/fake-dev/nvidia$1"
    fi
}

fake_gpu_files() {
    local i
    ((GPUS > 0 && GPU_DEVICES == 0)) || return 0
    install -d -m 755 "$STATE/fake-dev"
    for ((i = 0; i < GPUS; i++)); do
        # SLURM insists on a character device: a node with /dev/null's numbers (1, 3).
        [[ -c $STATE/fake-dev/nvidia$i ]] && continue
        rm -f "$STATE/fake-dev/nvidia$i"
        mknod -m 666 "$STATE/fake-dev/nvidia$i" c 1 3 ||
            die "cannot create the placeholder device $STATE/fake-dev/nvidia$i (mknod); declare no GPUs (--gpus 0) here"
    done
}

real_memory_mb() {
    local mem=""
    mem=$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p' | head -n 1) || true
    if [[ ! $mem =~ ^[0-9]+$ ]]; then
        mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    fi
    # Leave 5% (at least 256 MB) below what slurmd measures, or the node is drained
    # ("Low RealMemory") when the kernel reports a little less after a restart. Nodes share
    # the machine's memory out.
    local margin=$((mem / 20))
    ((margin >= 256)) || margin=256
    ((mem > margin)) || die "cannot determine the memory of this machine"
    echo $(((mem - margin) / NODES))
}

slurm_conf_text() {
    cat <<EOF
# Written by slurm/dev-cluster.sh; regenerated by every 'start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# Job credentials live 10 s instead of 120 s; a requeued job waits this long (+1 s) before it
# may run again, so checkpoint/requeue comes back in seconds instead of two minutes.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$(slurmd_spool_pattern)
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$(slurmd_pid_pattern)
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$(slurmd_log_pattern)
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
$(accounting_lines)
$(gres_types_line)
# Reject at submission a job that can never run here (say -c 4 on this 2-CPU node) instead of
# leaving it pending for ever with reason PartitionConfig.
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
MailProg=/bin/true
$(node_timeouts)
$(node_lines)
PartitionName=debug Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP$(partition_spread)
EOF
}

# Several nodes: a node whose slurmd stops answering (kill-node) is DOWN within SlurmdTimeout
# (slurmctld pings every third of it) and its batch jobs are requeued: seconds, not the default
# 5 minutes. (One node keeps SLURM's defaults: losing it loses the cluster anyway.)
node_timeouts() {
    if ((NODES == 1)); then
        echo "# One node: SLURM's default SlurmdTimeout (300 s)."
    else
        echo "SlurmdTimeout=10"
    fi
}

# Every node declares all the machine's CPUs (they share one kernel's), so N nodes offer N times
# the CPU slots: array_parallelism bounds what runs at once. LLN (least loaded node) places a job
# on the node with the most idle CPUs, so an array's tasks spread over the nodes as on a busy
# cluster, instead of filling node1 first.
partition_spread() {
    ((NODES == 1)) || printf ' LLN=YES'
}

node_lines() {
    local k=0 name mem
    mem=$(real_memory_mb)
    while read -r name; do
        k=$((k + 1))
        if ((NODES == 1)); then
            echo "NodeName=$name CPUs=$(nproc) RealMemory=$mem$(node_gres 1) State=UNKNOWN"
        else
            echo "NodeName=$name NodeHostname=localhost NodeAddr=127.0.0.1 Port=$(node_port "$k") CPUs=$(nproc) RealMemory=$mem$(node_gres "$k") State=UNKNOWN"
        fi
    done < <(node_names)
}

accounting_lines() {
    if [[ $ACCOUNTING == yes ]]; then
        printf '%s\n' AccountingStorageType=accounting_storage/slurmdbd \
            AccountingStorageHost=localhost "AccountingStoragePort=$DBD_PORT"
    else
        echo "# No accounting (--accounting no): squeue works, sacct does not."
        echo "AccountingStorageType=accounting_storage/none"
    fi
}

slurmdbd_conf_text() {
    cat <<EOF
# Written by slurm/dev-cluster.sh; regenerated by every 'start'. Mode 600 (slurmdbd insists).
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
}

cgroup_conf_text() {
    cat <<EOF
# Written by slurm/dev-cluster.sh. The dev cluster uses no cgroup plugin for jobs
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none).
EOF
    # On a cgroup v2 machine slurmd still opens the cgroup/v2 plugin, which asks systemd over
    # dbus for a scope for its step daemons; a container has no systemd ("cannot connect to dbus
    # system daemon ... slurmd initialization failed"), and IgnoreSystemd=yes fails too where
    # the cgroup tree cannot be made (gVisor: "Could not create scope directory"). Nothing here
    # uses cgroups, so load the v1 plugin, which asks for nothing until a job plugin uses it.
    if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs && ! -S /run/dbus/system_bus_socket ]]; then
        echo "CgroupPlugin=cgroup/v1"
    fi
}

# write_file PATH MODE CONTENT: write atomically; returns 0 if the content changed.
write_file() {
    local path=$1 mode=$2 content=$3 tmp
    if [[ -f $path ]] && [[ $(<"$path") == "$content" ]]; then
        chmod "$mode" "$path"
        return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    chmod "$mode" "$tmp"
    printf '%s\n' "$content" >"$tmp"
    mv -f "$tmp" "$path"
    return 0
}

write_config() {
    install -d -m 755 "$STATE" "$LOG_DIR" "$RUN_DIR" "$STATE/spool"
    install -d -m 700 "$STATE/spool/slurmctld"
    local node
    while read -r node; do
        install -d -m 700 "$(node_file "$(slurmd_spool_pattern)" "$node")"
    done < <(node_names)
    if [[ ! -s $DB_PASS_FILE ]]; then
        (
            umask 077
            tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$DB_PASS_FILE" || true
        )
    fi
    chmod 600 "$DB_PASS_FILE"
    local changed=0
    CONFIG_CHANGED=0
    write_file "$SETTINGS" 644 "$SAVED_SETTINGS" || true
    write_file "$CONF" 644 "$(slurm_conf_text)" && changed=1
    fake_gpu_files
    write_file "$GRES_CONF" 644 "$(gres_conf_text)" && changed=1
    write_file "$DBD_CONF" 600 "$(slurmdbd_conf_text)" && changed=1
    write_file "$CGROUP_CONF" 644 "$(cgroup_conf_text)" && changed=1
    CONFIG_CHANGED=$changed
}

# ---------------------------------------------------------------- daemons

munge_ok() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    if munge_ok; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
            chown munge:munge /etc/munge/munge.key
        fi
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    # After a hard restart the socket and pid file of the previous munged may still be there;
    # --force lets munged replace them.
    log "starting munged"
    run_daemon "$LOG_DIR/munged.out" runuser -u munge -- /usr/sbin/munged --force
    wait_for "munged" /var/log/munge/munged.log munge_ok
    if [[ -r /run/munge/munged.pid ]]; then
        cp /run/munge/munged.pid "$MUNGE_MARK"
    fi
}

db_sql() {
    mariadb --no-defaults --protocol=socket --socket="$DB_SOCKET" -uroot --batch
}

db_ping() {
    mariadb-admin --no-defaults --protocol=socket --socket="$DB_SOCKET" -uroot ping \
        >/dev/null 2>&1
}

start_mariadb() {
    if pid_alive "$RUN_DIR/mariadb.pid" mariadbd; then
        wait_for "MariaDB" "$LOG_DIR/mariadb.log" db_ping
        return 0
    fi
    if port_open "$DB_PORT"; then
        die "port $DB_PORT is in use by another process (a dev cluster with another --state?); stop it, or choose another port with --db-port (or RHMSCALE_SLURM_DB_PORT)"
    fi
    if [[ ! -d $DB_DIR/mysql ]]; then
        log "creating the MariaDB data folder $DB_DIR"
        rm -rf "$DB_DIR"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOG_DIR/mariadb-install.log" 2>&1 ||
            {
                log_tail "$LOG_DIR/mariadb-install.log"
                die "mariadb-install-db failed"
            }
    fi
    # Left over from a previous boot: MariaDB refuses to start while the socket lock names a
    # live process (after a restart that pid can belong to anything).
    rm -f "$DB_SOCKET" "$DB_SOCKET.lock" "$RUN_DIR/mariadb.pid"
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    run_daemon "$LOG_DIR/mariadb.out" mariadbd --no-defaults --user=root --datadir="$DB_DIR" \
        --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --pid-file="$RUN_DIR/mariadb.pid" --log-error="$LOG_DIR/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 \
        --max-connections=200 </dev/null >/dev/null 2>&1 &
    # (mariadbd does not fork; the redirection above keeps this background subshell from
    # holding our stdout open, or a caller reading our output would wait for MariaDB to exit.)
    wait_for "MariaDB" "$LOG_DIR/mariadb.log" db_ping
}

setup_db_user() {
    local pass
    pass=$(<"$DB_PASS_FILE")
    db_sql <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

# A SLURM port in use while our daemon is not running: another cluster (or an earlier dev
# cluster with a different state folder) holds it.
check_port_free() {
    local port=$1 name=$2
    if port_open "$port"; then
        die "port $port ($name) is in use by another process - is another SLURM (or a dev cluster with another --state) running? Stop it first."
    fi
}

start_slurmdbd() {
    if pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd; then
        wait_for "slurmdbd on port $DBD_PORT" "$LOG_DIR/slurmdbd.log" port_open "$DBD_PORT"
        return 0
    fi
    check_port_free "$DBD_PORT" slurmdbd
    rm -f "$RUN_DIR/slurmdbd.pid"
    log "starting slurmdbd"
    run_daemon "$LOG_DIR/slurmdbd.out" slurmdbd
    wait_for "slurmdbd on port $DBD_PORT" "$LOG_DIR/slurmdbd.log" port_open "$DBD_PORT"
}

cluster_registered() {
    local out
    out=$(sacctmgr -n -P list cluster format=cluster 2>/dev/null) || return 1
    grep -qx "$CLUSTER_NAME" <<<"$out"
}

register_cluster() {
    if cluster_registered; then
        return 0
    fi
    log "registering cluster '$CLUSTER_NAME' in accounting"
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null ||
        {
            log_tail "$LOG_DIR/slurmdbd.log"
            die "sacctmgr could not add cluster $CLUSTER_NAME"
        }
}

start_slurmctld() {
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        return 0
    fi
    check_port_free "$CTLD_PORT" slurmctld
    rm -f "$RUN_DIR/slurmctld.pid"
    log "starting slurmctld"
    run_daemon "$LOG_DIR/slurmctld.out" slurmctld
}

ctld_ping() {
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

# start_slurmd NODE K: node K's slurmd (K 1-based), unless it runs.
start_slurmd() {
    local node=$1 k=$2 pidfile logfile out
    pidfile=$(slurmd_pidfile "$node")
    logfile=$(slurmd_logfile "$node")
    if pid_alive "$pidfile" slurmd; then
        return 0
    fi
    check_port_free "$(node_port "$k")" "slurmd of $node"
    rm -f "$pidfile"
    log "starting slurmd ($node)"
    out=$LOG_DIR/slurmd.out
    ((NODES == 1)) || out=$LOG_DIR/slurmd-$node.out
    run_daemon "$out" slurmd -N "$node" || {
        log_tail "$logfile"
        die "slurmd ($node) did not start: $(grep -a -h -E 'error|fatal' "$logfile" "$out" 2>/dev/null | tail -n 1)"
    }
}

start_slurmds() {
    local node k=0
    while read -r node; do
        k=$((k + 1))
        start_slurmd "$node" "$k"
    done < <(node_names)
}

# node_states: 'NODE STATE' a line for every node of this configuration (sinfo's words: idle,
# mixed, down* ...).
node_states() {
    sinfo -h -N -n "$(node_names | paste -sd,)" -o '%N %T' 2>/dev/null
}

node_state() { # the nodes' states, one word each, for messages
    node_states | awk '{printf "%s%s=%s", (NR > 1 ? " " : ""), $1, $2}'
}

# Every node answers: idle, or busy with jobs left over from before a stop.
node_usable() {
    local states n
    states=$(node_states) || return 1
    n=$(grep -cE ' (idle|mixed|allocated|completing)$' <<<"$states" || true)
    ((n == NODES))
}

wait_node() {
    local deadline=$((SECONDS + TIMEOUT)) st="" node
    until node_usable; do
        st=$(node_state || true)
        if [[ $st =~ =(drained|draining|drain) ]] || ((SECONDS >= deadline)); then
            log "not every node is idle: '${st:-unknown}' (after $((SECONDS - deadline + TIMEOUT))s)"
            sinfo -R >&2 2>/dev/null || true
            while read -r node; do log_tail "$(slurmd_logfile "$node")"; done < <(node_names)
            log_tail "$LOG_DIR/slurmctld.log"
            die "the nodes did not become idle"
        fi
        sleep 0.2
    done
}

slurmds_up() {
    local node
    while read -r node; do
        pid_alive "$(slurmd_pidfile "$node")" slurmd || return 1
    done < <(node_names)
}

# signal_slurmds: SIGTERM every slurmd of the state folder (also those of nodes that an earlier
# start had); prints their pids.
signal_slurmds() {
    local pidfile
    while read -r pidfile; do
        [[ -n $pidfile ]] && signal_pid "$pidfile" slurmd || true
    done < <(all_slurmd_pidfiles)
}

# kill-node NODE: the node's power fails. Its slurmd and the processes of every job step on it
# (the slurmstepd and all below it: the batch script, python, its helpers) are SIGKILLed at
# once, so that nothing of them writes or holds a lock afterwards; the steps are found by the
# sockets slurmstepd keeps in the node's own spool folder (no slurmctld needed).
cmd_kill_node() {
    require_root
    local node=$KILL_NODE pidfile spool sock job jobs=() pids=() pid
    # (grep -q ends at the first match: reading from a pipe, pipefail would count its SIGPIPE)
    grep -qx -- "$node" < <(node_names) ||
        die "no node '$node' in this cluster (nodes: $(node_names | paste -sd' '))"
    ((NODES > 1)) || die "kill-node needs a cluster of several nodes (start --nodes N)"
    pidfile=$(slurmd_pidfile "$node")
    pid_alive "$pidfile" slurmd && pids+=("$(pid_of "$pidfile")")
    spool=$(node_file "$(slurmd_spool_pattern)" "$node")
    for sock in "$spool/${node}_"*; do
        [[ -S $sock ]] || continue
        job=${sock##*/"${node}"_}
        jobs+=("${job%%.*}")
    done
    mapfile -t jobs < <(printf '%s\n' "${jobs[@]}" | grep . | sort -u)
    for job in "${jobs[@]}"; do
        while read -r pid; do pids+=("$pid"); done < <(job_processes "$job")
    done
    ((${#pids[@]} > 0)) || die "nothing of $node runs (its slurmd is down already)"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    # What the dead steps leave in the node's spool (their sockets, the job's folder with its
    # batch script) goes too, as from a node that boots afresh: else the slurmd started again
    # refuses to launch the requeued job there ("slurm_script: File exists") and SLURM holds it.
    for job in "${jobs[@]}"; do
        rm -rf "$spool/${node}_$job".* "$spool/job$(printf "%05d" "$job")" "$spool/hwloc_topo_$job".*
    done
    rm -f "$pidfile"
    log "killed $node: its slurmd and ${#pids[@]} process(es) of ${#jobs[@]} job(s) (${jobs[*]}); slurmctld marks it DOWN within SlurmdTimeout and requeues its batch jobs; '$PROG start' brings it back"
}

# job_processes JOBID: the pids of the job's slurmstepd processes (its steps: extern, batch)
# and of all their descendants.
job_processes() {
    local top
    top=$(pgrep -f "^slurmstepd: \[$1\." || true)
    [[ -n $top ]] || return 0
    ps -e -o pid=,ppid= | awk -v tops="$top" '
        BEGIN { n = split(tops, t, "\n"); for (i = 1; i <= n; i++) keep[t[i]] = 1 }
        { parent[$1] = $2 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            }
            for (p in keep) print p
        }'
}

accounting_up() {
    [[ $ACCOUNTING == no ]] ||
        { pid_alive "$RUN_DIR/mariadb.pid" mariadbd && pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd; }
}

all_up() {
    munge_ok && accounting_up &&
        pid_alive "$RUN_DIR/slurmctld.pid" slurmctld &&
        slurmds_up
}

# restart_slurm: a changed slurm.conf or gres.conf (say other --gpus) takes effect only when
# slurmctld and slurmd read it again; jobs survive (their slurmstepd runs on).
restart_slurm() {
    local pids=() pid
    log "the configuration changed: restarting slurmctld and slurmd"
    while read -r pid; do [[ -n $pid ]] && pids+=("$pid"); done < <(signal_slurmds)
    pid=$(signal_pid "$RUN_DIR/slurmctld.pid" slurmctld) && pids+=("$pid")
    ((${#pids[@]} == 0)) || wait_gone "slurmd/slurmctld" "${pids[@]}"
}

# What slurmd needs of the machine, checked here so the error says what to do (slurmd's own
# log says only "slurmd initialization failed").
require_host() {
    getent hosts localhost >/dev/null ||
        die "the name 'localhost' does not resolve; add '127.0.0.1 localhost' to /etc/hosts"
    [[ -n $(ls -A /sys/fs/cgroup 2>/dev/null) ]] ||
        die "no cgroup file system at /sys/fs/cgroup (slurmd needs one, even unused): mount -t cgroup2 none /sys/fs/cgroup"
}

# stop_accounting_daemons: slurmdbd, then the database; the names of those it stopped are added
# to the caller's `stopped` array (bash functions see their caller's locals).
stop_accounting_daemons() {
    local pid
    if pid=$(signal_pid "$RUN_DIR/slurmdbd.pid" slurmdbd); then
        wait_gone slurmdbd "$pid"
        stopped+=(slurmdbd)
    fi
    if pid=$(signal_pid "$RUN_DIR/mariadb.pid" mariadbd); then
        wait_gone mariadbd "$pid"
        stopped+=(mariadb)
    fi
}

# stop_accounting: with accounting off, the slurmdbd and MariaDB of an earlier start are of no
# use (slurmctld no longer talks to them): stop them, so the cluster runs what its settings say.
stop_accounting() {
    local stopped=()
    stop_accounting_daemons
    ((${#stopped[@]} == 0)) || log "accounting off: stopped ${stopped[*]}"
}

# cancel_ghost_jobs SINCE: jobs that SLURM shows running since 10 s or more before this start
# but that have no slurmstepd (the saved state of an earlier cluster, say on a machine restored
# from a snapshot: shown running, with no process behind them, until their time limit) are
# cancelled, so the node is free. A job whose slurmstepd runs on (slurmd was stopped, its job
# was not) is left alone.
cancel_ghost_jobs() {
    local since=$1 id start ghosts=() i list
    while read -r id start; do
        [[ -n $id && $start =~ ^[0-9] ]] || continue
        (($(date -d "$start" +%s 2>/dev/null || echo "$since") < since - 10)) || continue
        pgrep -f "^slurmstepd: \[$id\." >/dev/null 2>&1 || ghosts+=("$id")
    done < <(squeue -h -t RUNNING,COMPLETING -o '%A %S' 2>/dev/null || true)
    ((${#ghosts[@]} > 0)) || return 0
    log "cancelling ${#ghosts[@]} job(s) shown running with no process behind them (saved by an earlier cluster): ${ghosts[*]}"
    scancel "${ghosts[@]}" 2>/dev/null || true
    list=$(
        IFS=,
        echo "${ghosts[*]}"
    )
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        [[ -z $(squeue -h -t RUNNING,COMPLETING -j "$list" 2>/dev/null) ]] && return 0
        sleep 0.2
    done
    log "the cancelled jobs are still listed after ${TIMEOUT}s"
}

cmd_start() {
    require_root
    load_settings
    require_binaries
    require_host
    local t0=$SECONDS since
    since=$(date +%s)
    write_config
    if ((CONFIG_CHANGED == 0)) && [[ -f $CONF ]] && all_up && node_usable; then
        [[ $ACCOUNTING == yes ]] || stop_accounting
        log "already running (state $STATE; $(gres_summary))"
        export_line
        return 0
    fi
    # A changed configuration (other --gpus, accounting turned on ...) is read only by a new
    # slurmctld and slurmd: stop running ones first, also when another daemon is down (turning
    # accounting on, slurmdbd is: the old slurmctld would go on without it).
    if ((CONFIG_CHANGED)) && { pid_alive "$RUN_DIR/slurmctld.pid" slurmctld || [[ -n $(all_slurmd_pidfiles) ]]; }; then
        restart_slurm
    fi
    start_munge
    if [[ $ACCOUNTING == yes ]]; then
        start_mariadb
        setup_db_user
        start_slurmdbd
        register_cluster
    fi
    start_slurmctld
    wait_for "slurmctld" "$LOG_DIR/slurmctld.log" ctld_ping
    [[ $ACCOUNTING == yes ]] || stop_accounting
    start_slurmds
    wait_node
    cancel_ghost_jobs "$since"
    log "cluster up in $((SECONDS - t0))s (state $STATE; $(gres_summary)); $(node_state)"
    export_line
}

cmd_stop() {
    require_root
    local stopped=() pids=() pid
    # slurmd and slurmctld together (slurmctld saves its state and flushes to slurmdbd), then
    # slurmdbd, then the database, then munged.
    local slurmds=0
    while read -r pid; do
        [[ -n $pid ]] || continue
        pids+=("$pid")
        slurmds=$((slurmds + 1))
    done < <(signal_slurmds)
    ((slurmds == 0)) || stopped+=("slurmd$( ((slurmds == 1)) || echo " (x$slurmds)")")
    if pid=$(signal_pid "$RUN_DIR/slurmctld.pid" slurmctld); then
        pids+=("$pid")
        stopped+=(slurmctld)
    fi
    ((${#pids[@]} == 0)) || wait_gone "slurmd/slurmctld" "${pids[@]}"
    stop_accounting_daemons
    if [[ -f $MUNGE_MARK ]]; then
        # Only a munged this script started, identified by the pid it recorded.
        if [[ -r /run/munge/munged.pid ]] &&
            [[ $(pid_of /run/munge/munged.pid) == "$(pid_of "$MUNGE_MARK")" ]] &&
            pid=$(signal_pid /run/munge/munged.pid munged); then
            wait_gone munged "$pid"
            stopped+=(munged)
        fi
        rm -f "$MUNGE_MARK"
    fi
    rm -f "$RUN_DIR"/*.pid "$DB_SOCKET" "$DB_SOCKET.lock"
    if ((${#stopped[@]} > 0)); then
        log "stopped ${stopped[*]} (state kept in $STATE)"
    else
        log "nothing was running (state $STATE)"
    fi
}

cmd_status() {
    local ok=0 line node
    updown() {
        if "$@"; then echo up; else
            echo down
            ok=1
        fi
    }
    printf 'state folder: %s (%s)\n' "$STATE" "$(gres_summary)"
    if command -v munge >/dev/null 2>&1; then
        printf '  %-10s %s\n' munged "$(updown munge_ok)"
    else
        printf '  %-10s %s\n' munged "not installed"
        ok=1
    fi
    if [[ $ACCOUNTING == yes ]]; then
        printf '  %-10s %s\n' mariadb "$(updown pid_alive "$RUN_DIR/mariadb.pid" mariadbd)"
        printf '  %-10s %s\n' slurmdbd "$(updown pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd)"
    else
        printf '  %-10s %s\n' accounting "off (no sacct)"
    fi
    printf '  %-10s %s\n' slurmctld "$(updown pid_alive "$RUN_DIR/slurmctld.pid" slurmctld)"
    while read -r node; do
        printf '  %-10s %s\n' "slurmd" "$(updown pid_alive "$(slurmd_pidfile "$node")" slurmd)$( ((NODES == 1)) || echo " ($node)")"
    done < <(node_names)
    # updown runs in a subshell; recompute the verdict here.
    all_up 2>/dev/null || ok=1
    if [[ -f $CONF ]] && command -v sinfo >/dev/null 2>&1 && pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        echo "sinfo:"
        while IFS= read -r line; do printf '  %s\n' "$line"; done < <(sinfo 2>&1 || true)
        node_usable || ok=1
    else
        ok=1
    fi
    if ((ok == 0)); then
        echo "cluster: usable"
        export_line
    else
        echo "cluster: not usable (start it with: $PROG start)"
    fi
    return "$ok"
}

case $COMMAND in
    install) cmd_install ;;
    bundle) cmd_bundle ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status)
        load_settings
        cmd_status
        ;;
    env) export_line ;;
    kill-node)
        load_settings
        cmd_kill_node
        ;;
    *) die "unknown command '$COMMAND'" ;;
esac
