#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the tests of the SLURM scripts (as root).
#   tools/slurm_local.sh [start]   install Debian's slurmctld, slurmd, slurm-client and munge if
#                                  missing; write a configuration in $SLURM_LOCAL (default
#                                  /tmp/caffe-transfer-slurm), start munged (unless running),
#                                  slurmctld and slurmd on ports 16817/16818
#   tools/slurm_local.sh stop      stop what start started
# The machine's own /etc/slurm is never touched: clients find this cluster through
# SLURM_CONF=$SLURM_LOCAL/slurm.conf (start prints it).
set -euo pipefail
STATE=${SLURM_LOCAL:-/tmp/caffe-transfer-slurm}
CONF=$STATE/slurm.conf
MUNGED_PID=/run/munge/caffe-transfer-munged.pid  # only a munged this script started

stop() {
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$MUNGED_PID"; do
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
}
if [ "${1:-start}" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "slurm_local.sh: run as root (it starts daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  echo "[slurm] installing slurmctld slurmd slurm-client munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$STATE/state" "$STATE/spool"
cat > "$CONF.tmp" <<CONFEOF
# Written by caffe-transfer tools/slurm_local.sh: one node, localhost, for tests.
ClusterName=caffe-transfer
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONFEOF
mv "$CONF.tmp" "$CONF"
export SLURM_CONF=$CONF

if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 0400 /etc/munge/munge.key
  # munged runs as munge, which may not reach $STATE: its pid file goes to its own /run/munge.
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGED_PID"
fi
pgrep -f "slurmctld -f $CONF" >/dev/null || slurmctld -f "$CONF" -i
pgrep -f "slurmd -f $CONF" >/dev/null || slurmd -f "$CONF"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "[slurm] one-node cluster up on $host ($cpus CPUs): export SLURM_CONF=$CONF" >&2
    exit 0
  fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "[slurm] the node did not come up; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
sinfo >&2 || true
exit 1
