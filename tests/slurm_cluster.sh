#!/bin/bash
# A real one-node SLURM cluster for the `slurm` test tier (Debian's slurm-wlm and munge; no systemd, no root-owned
# state outside the state directory, nothing written to /etc).
#
#   tests/slurm_cluster.sh start     # prints `export SLURM_CONF=...`; eval "$(tests/slurm_cluster.sh start)"
#   tests/slurm_cluster.sh status    # exit 0 when the controller answers and the node is up
#   tests/slurm_cluster.sh stop      # stops the daemons this directory started (by their pid files)
#
# State (keys, sockets, slurm.conf, spool, logs, pids) lives in $EAFT_SLURM_DIR (default /tmp/eaft-slurm).
# Install once: apt-get install -y slurm-wlm munge. SLURM's ports are fixed, so there is one cluster per machine:
# `start` on a running cluster only prints its SLURM_CONF, and parallel test workers share it.
set -euo pipefail

DIR=${EAFT_SLURM_DIR:-${TMPDIR:-/tmp}/eaft-slurm}
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket

need_binaries() {
    local b missing=()
    for b in munged mungekey slurmctld slurmd sbatch scontrol sinfo; do
        command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    if ((${#missing[@]})); then
        echo "missing: ${missing[*]} (apt-get install -y slurm-wlm munge)" >&2
        exit 3
    fi
}

up() {
    SLURM_CONF=$CONF timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" &&
        SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)"
}

write_conf() {
    local host node
    host=$(hostname -s)
    # The node's real CPUs and memory, as slurmd itself measures them.
    node=$(/usr/sbin/slurmd -C | head -n 1)
    cat > "$CONF" <<EOF
# Written by tests/slurm_cluster.sh: a one-node test cluster, every path under $DIR.
ClusterName=eaft-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCK,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# Without it every job completion waits ~3 s for the next scheduling pass.
SchedulerParameters=batch_sched_delay=0
# A job whose afterok parent failed is cancelled instead of pending forever (a waiting test would hang).
DependencyParameters=kill_invalid_depend
# Finished jobs stay visible to "scontrol show job" for an hour (there is no accounting database for sacct): the
# rehearsal's chain checks its training job's record after a sweep that outlasts 10 minutes.
MinJobAge=3600
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_binaries
    if [[ -f $CONF ]] && up; then
        echo "export SLURM_CONF=$CONF"
        return
    fi
    stop >/dev/null 2>&1 || true
    rm -rf "$DIR/ctld" "$DIR/spool"
    mkdir -p "$DIR/munge" "$DIR/ctld" "$DIR/spool" "$DIR/log"
    chmod 700 "$DIR/munge"
    [[ -f $DIR/munge/munge.key ]] || /usr/sbin/mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    # --force: munged refuses to run as root, and /tmp is world-writable, without it.
    /usr/sbin/munged --force --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    write_conf
    SLURM_CONF=$CONF /usr/sbin/slurmctld -c -f "$CONF"
    SLURM_CONF=$CONF /usr/sbin/slurmd -f "$CONF"
    for _ in $(seq 60); do
        if up; then
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    echo "the cluster did not come up in 30 s; logs in $DIR/log and $DIR/munge" >&2
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop_pid() {  # the pid in file $1, if that process is still running
    local pid
    [[ -f $1 ]] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop() {
    if [[ -f $CONF ]] && SLURM_CONF=$CONF timeout 5 scontrol ping >/dev/null 2>&1; then
        SLURM_CONF=$CONF scancel --quiet --full "--partition=debug" 2>/dev/null || true
    fi
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    stop_pid "$DIR/munge/munged.pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) up ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
