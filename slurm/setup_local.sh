#!/usr/bin/env bash
# A single-node Slurm on this machine, for lokal's Slurm tests and for trying `hydra/launcher=slurm`
# and the sbatch templates before a real cluster. Debian/Ubuntu, as root. Idempotent: run it again
# and it only does what is missing (installs, config, key, daemons), then waits for the node.
#
#   sudo bash slurm/setup_local.sh        # CI runs this before `pytest -m slurm`
#
# Not for a real cluster: one node that is also the controller, no accounting database, no cgroups
# (proctrack/linuxproc and task/none work in containers where cgroups are not delegated).
set -euo pipefail

CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
HOST=$(hostname -s)
PARTITION=debug
say() { echo "setup_local: $*"; }

[[ $(id -u) == 0 ]] || { echo "setup_local: run as root (sudo bash $0)" >&2; exit 1; }

install_packages() {
  if command -v sbatch >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    say "slurm-wlm and munge already installed ($(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null))"
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
  say "installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm)"
}

munge_key() {
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    say "creating $key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key"
    else dd if=/dev/urandom bs=1 count=1024 of="$key" status=none; fi
  fi
  chown munge:munge "$key" && chmod 400 "$key"
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munged already running"; return; fi
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.5; done
  echo "setup_local: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1
}

# The node line from slurmd itself: the real CPUs, sockets, cores, threads and memory. A RealMemory
# above what slurmd finds would drain the node, so it is taken as measured.
node_line() {
  slurmd -C | head -n1 | sed -E "s/^NodeName=[^ ]+/NodeName=$HOST/"
}

write_conf() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<CONF
# Written by lokal's slurm/setup_local.sh: a single-node test cluster ($HOST), not for production.
ClusterName=lokal
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups: containers rarely delegate them, and a test cluster needs no enforcement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# Cores are allocated, memory is not: two 1-CPU jobs share the node without asking for --mem.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Requeue-friendly: a preempted or signalled job can be put back in the queue (sbatch --requeue,
# scontrol requeue) and keeps its job id, so its run directory slurm-\$SLURM_JOB_ID stays the same.
JobRequeue=1
# A job no node can ever run (more CPUs than the node has) is refused by sbatch, not left pending.
EnforcePartLimits=ALL
ReturnToService=2
# Short waits: a test cluster should notice finished and cancelled jobs quickly.
KillWait=5
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
$(node_line) State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  mkdir -p "$(dirname "$CONF")"
  if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"; say "$CONF unchanged"; return 1
  fi
  mv "$tmp" "$CONF" && chmod 644 "$CONF"
  say "wrote $CONF: $(grep ^NodeName "$CONF")"
  return 0
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # by its own pid file, never by name: other users' processes are not ours to stop
  if running "$1"; then say "stopping $(basename "$1" .pid) (config changed)"; kill "$(cat "$1")"; sleep 2; fi
}

start_slurm() {
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  if running /run/slurmctld.pid; then say "slurmctld already running"
  else say "starting slurmctld"; slurmctld; fi
  if running /run/slurmd.pid; then say "slurmd already running"
  else say "starting slurmd"; slurmd; fi
}

wait_idle() {
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true)
    case $state in
      idle|mixed|allocated) say "node $HOST is $state in partition $PARTITION"; sinfo; return ;;
      down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
  done
  echo "setup_local: node $HOST not idle after 60 s (state '${state}'); see /var/log/slurm/*.log" >&2
  exit 1
}

install_packages
munge_key
start_munge
if write_conf; then stop_daemon /run/slurmctld.pid; stop_daemon /run/slurmd.pid; fi
start_slurm
wait_idle
