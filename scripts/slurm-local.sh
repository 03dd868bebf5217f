#!/usr/bin/env bash
# A one-node SLURM cluster on this Debian machine, for trying and testing
# hydra/launcher=slurm. Run as root:
#   scripts/slurm-local.sh start    # install slurm-wlm and munge if missing, configure, start, wait for the node
#   scripts/slurm-local.sh status   # sinfo, or exit 1 when the cluster is down
#   scripts/slurm-local.sh stop     # stop slurmctld, slurmd and munged
# Accounting is disabled (no slurmdbd), so sacct does not work (see docs/cluster.md).
# Idempotent: start on a running cluster only checks it.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

die() { echo "slurm-local: $*" >&2; exit 1; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [[ $EUID -eq 0 ]] || die "slurm-wlm and munge are not installed; run as root to install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq slurm-wlm munge >/dev/null || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }
}

write_config() {
    # CPUs, cores and memory of this machine, as slurmd itself detects them.
    local node
    node=$(slurmd -C | head -n 1)
    local host=${node#NodeName=}; host=${host%% *}
    mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS"
    local new
    new=$(cat <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster on $host.
ClusterName=xilsweep
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again after 5 s instead of the default 120 s.
AuthInfo=cred_expire=5
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups (containers often lack them): processes tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Accounting disabled: no slurmdbd, so sacct reports nothing.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Batch jobs may be requeued (time limit with submitit, preemption, scontrol requeue).
JobRequeue=1
# Short waits so tests see time limits and requeues quickly.
KillWait=2
MinJobAge=60
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$new" ]]; then
        echo "$new" > "$CONF"
        return 0  # changed
    fi
    return 1
}

node_idle() { sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

start() {
    [[ $EUID -eq 0 ]] || die "run as root (it starts system daemons)"
    install_packages
    local changed=false
    write_config && changed=true
    if $changed; then stop_slurm; fi  # restarted below with the new configuration
    if ! alive "$MUNGE_PID"; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged
    fi
    alive "$CTLD_PID" || slurmctld
    alive "$SLURMD_PID" || slurmd
    for _ in $(seq 60); do
        if node_idle; then sinfo; return 0; fi
        # A node left DOWN/DRAINED by an earlier run is put back into service.
        scontrol update nodename="$(slurmd -C | sed -n "s/^NodeName=\([^ ]*\).*/\1/p")" state=resume 2>/dev/null || true
        sleep 0.5
    done
    die "the node did not become idle within 30 s; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

stop_daemon() {  # by the pid in its pid file; waits until it has exited
    alive "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
}

stop_slurm() { stop_daemon "$SLURMD_PID"; stop_daemon "$CTLD_PID"; }

stop() { stop_slurm; stop_daemon "$MUNGE_PID"; }

status() {
    alive "$CTLD_PID" && alive "$SLURMD_PID" && node_idle || die "not running"
    sinfo
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
