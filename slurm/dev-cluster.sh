#!/usr/bin/env bash
# dev-cluster.sh - a real single-node SLURM cluster for tests and laptops.
#
# munge + MariaDB + slurmdbd + slurmctld + slurmd on this machine, every file of the cluster
# (config, logs, pid files, spool, database) in one state folder. Runs as root; needs no systemd
# and no cgroups. See slurm/README.md.
set -euo pipefail

PROG=$(basename "$0")

usage() {
    cat <<EOF
Usage: $PROG [--state DIR] [--db-port PORT] [--timeout SECONDS] COMMAND

A single-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for tests and laptops.
All its state lives in one folder. Must run as root.

Commands:
  install   apt-get install slurm-wlm munge slurmdbd mariadb-server (skipped when installed)
  start     write the config and start every daemon that is not running; wait until the node
            is idle (idempotent; also after a machine restart with stale pid files)
  stop      stop the daemons this script started (the state folder is kept)
  status    show which daemons are up and the sinfo output; exit 0 if the cluster is usable
  env       print the export line, for: eval "\$($PROG env)"

Options:
  --state DIR        state folder (env RHMSCALE_SLURM_STATE; default \$HOME/.rhmscale-slurm)
  --db-port PORT     MariaDB TCP port on 127.0.0.1 (env RHMSCALE_SLURM_DB_PORT; default 3307)
  --timeout SECONDS  how long start waits for each daemon and for the node
                     (env RHMSCALE_SLURM_TIMEOUT; default 60)
  -h, --help         this help

Ports: slurmctld 6817, slurmd 6818, slurmdbd 6819 (the SLURM defaults), so one dev cluster runs
per machine. Every SLURM command needs SLURM_CONF=<state>/slurm.conf (start and env print it).
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
        --timeout)
            (($# >= 2)) || die "--timeout needs a number of seconds"
            TIMEOUT=$2
            shift 2
            ;;
        --timeout=*)
            TIMEOUT=${1#--timeout=}
            shift
            ;;
        install | start | stop | status | env)
            [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
            COMMAND=$1
            shift
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
    local b missing=()
    for b in munged munge unmunge slurmctld slurmd slurmdbd sacctmgr sinfo mariadbd \
        mariadb-install-db mariadb mariadb-admin; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    ((${#missing[@]} == 0)) ||
        die "not installed: ${missing[*]} (run: $PROG install)"
}

# ---------------------------------------------------------------- install

cmd_install() {
    require_root
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

# ---------------------------------------------------------------- configuration

real_memory_mb() {
    local mem=""
    mem=$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p' | head -n 1) || true
    if [[ ! $mem =~ ^[0-9]+$ ]]; then
        mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    fi
    # Leave 5% (at least 256 MB) below what slurmd measures, or the node is drained
    # ("Low RealMemory") when the kernel reports a little less after a restart.
    local margin=$((mem / 20))
    ((margin >= 256)) || margin=256
    ((mem > margin)) || die "cannot determine the memory of this machine"
    echo $((mem - margin))
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
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
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
NodeName=localhost CPUs=$(nproc) RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
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
# Written by slurm/dev-cluster.sh. The dev cluster uses no cgroup plugin
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none); nothing here is read.
EOF
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
    install -d -m 700 "$STATE/spool/slurmctld" "$STATE/spool/slurmd"
    if [[ ! -s $DB_PASS_FILE ]]; then
        (
            umask 077
            tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$DB_PASS_FILE" || true
        )
    fi
    chmod 600 "$DB_PASS_FILE"
    local changed=0
    write_file "$CONF" 644 "$(slurm_conf_text)" && changed=1
    write_file "$DBD_CONF" 600 "$(slurmdbd_conf_text)" && changed=1
    write_file "$CGROUP_CONF" 644 "$(cgroup_conf_text)" || true
    if ((changed)) && pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        log "warning: the configuration changed while the cluster runs; to apply it: $PROG stop && $PROG start"
    fi
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

start_slurmd() {
    if pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
        return 0
    fi
    check_port_free "$SLURMD_PORT" slurmd
    rm -f "$RUN_DIR/slurmd.pid"
    log "starting slurmd"
    run_daemon "$LOG_DIR/slurmd.out" slurmd -N localhost
}

node_state() {
    sinfo -h -N -n localhost -o %T 2>/dev/null | head -n 1
}

# A node that answers: idle, or busy with jobs left over from before a stop.
node_usable() {
    local st
    st=$(node_state) || return 1
    [[ $st =~ ^(idle|mixed|allocated|completing)$ ]]
}

wait_node() {
    local deadline=$((SECONDS + TIMEOUT)) st=""
    until node_usable; do
        st=$(node_state || true)
        if [[ $st =~ ^(drained|draining|drain) ]] || ((SECONDS >= deadline)); then
            log "the node is '${st:-unknown}', not idle (after $((SECONDS - deadline + TIMEOUT))s)"
            sinfo -R >&2 2>/dev/null || true
            log_tail "$LOG_DIR/slurmd.log"
            log_tail "$LOG_DIR/slurmctld.log"
            die "the node did not become idle"
        fi
        sleep 0.2
    done
}

all_up() {
    munge_ok &&
        pid_alive "$RUN_DIR/mariadb.pid" mariadbd &&
        pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd &&
        pid_alive "$RUN_DIR/slurmctld.pid" slurmctld &&
        pid_alive "$RUN_DIR/slurmd.pid" slurmd
}

cmd_start() {
    require_root
    require_binaries
    local t0=$SECONDS
    if [[ -f $CONF ]] && all_up && node_usable; then
        write_config
        log "already running (state $STATE)"
        export_line
        return 0
    fi
    write_config
    start_munge
    start_mariadb
    setup_db_user
    start_slurmdbd
    register_cluster
    start_slurmctld
    wait_for "slurmctld" "$LOG_DIR/slurmctld.log" ctld_ping
    start_slurmd
    wait_node
    log "cluster up in $((SECONDS - t0))s (state $STATE); node: $(node_state)"
    export_line
}

cmd_stop() {
    require_root
    local stopped=() pids=() pid
    # slurmd and slurmctld together (slurmctld saves its state and flushes to slurmdbd), then
    # slurmdbd, then the database, then munged.
    if pid=$(signal_pid "$RUN_DIR/slurmd.pid" slurmd); then
        pids+=("$pid")
        stopped+=(slurmd)
    fi
    if pid=$(signal_pid "$RUN_DIR/slurmctld.pid" slurmctld); then
        pids+=("$pid")
        stopped+=(slurmctld)
    fi
    ((${#pids[@]} == 0)) || wait_gone "slurmd/slurmctld" "${pids[@]}"
    if pid=$(signal_pid "$RUN_DIR/slurmdbd.pid" slurmdbd); then
        wait_gone slurmdbd "$pid"
        stopped+=(slurmdbd)
    fi
    if pid=$(signal_pid "$RUN_DIR/mariadb.pid" mariadbd); then
        wait_gone mariadbd "$pid"
        stopped+=(mariadb)
    fi
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
    local ok=0 line
    updown() {
        if "$@"; then echo up; else
            echo down
            ok=1
        fi
    }
    printf 'state folder: %s\n' "$STATE"
    if command -v munge >/dev/null 2>&1; then
        printf '  %-10s %s\n' munged "$(updown munge_ok)"
    else
        printf '  %-10s %s\n' munged "not installed"
        ok=1
    fi
    printf '  %-10s %s\n' mariadb "$(updown pid_alive "$RUN_DIR/mariadb.pid" mariadbd)"
    printf '  %-10s %s\n' slurmdbd "$(updown pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd)"
    printf '  %-10s %s\n' slurmctld "$(updown pid_alive "$RUN_DIR/slurmctld.pid" slurmctld)"
    printf '  %-10s %s\n' slurmd "$(updown pid_alive "$RUN_DIR/slurmd.pid" slurmd)"
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
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) export_line ;;
    *) die "unknown command '$COMMAND'" ;;
esac
