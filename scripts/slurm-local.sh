#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the scripts in slurm/ and for CI.
# No systemd: munged, slurmctld and slurmd run as plain background processes. Everything Slurm
# writes (config, spool, state, logs, PID files) lives in DIR; /etc/slurm is not touched.
#
#   scripts/slurm-local.sh start DIR    start the daemons, wait until the node is idle
#   scripts/slurm-local.sh stop DIR     stop the daemons this script started (by PID)
#   scripts/slurm-local.sh env DIR      print the export line that points sbatch/squeue at DIR
#
# Needs root (slurmd starts job steps as the submitting user) and Debian's slurm-wlm and munge
# (scripts/setup.sh --slurm installs them). munged uses the system's key and socket: if one is
# already running it is used and left alone; if this script starts it, `stop` stops it.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop|env DIR" >&2
  exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

# Ports away from Slurm's defaults (6817/6818), so a site's own daemons are not disturbed.
ctld_port=${TESSERA_SLURM_CTLD_PORT:-16817}
slurmd_port=${TESSERA_SLURM_SLURMD_PORT:-16818}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

stop_pid() { # name pidfile
  local name=$1 file=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm-local: $name (PID $pid) did not stop; killing it" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

case "$cmd" in
env)
  echo "export SLURM_CONF=$conf"
  ;;

stop)
  stop_pid slurmd "$dir/slurmd.pid"
  stop_pid slurmctld "$dir/slurmctld.pid"
  stop_pid munged "$dir/munged.started.pid"
  echo "slurm-local: stopped"
  ;;

start)
  for tool in munged munge unmunge slurmctld slurmd sbatch sinfo; do
    command -v "$tool" >/dev/null || { echo "slurm-local: $tool not found (run scripts/setup.sh --slurm)" >&2; exit 1; }
  done
  if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-local: needs root (slurmd runs job steps as the submitting user)" >&2
    exit 1
  fi
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    echo "slurm-local: already running in $dir (stop it first)" >&2
    exit 1
  fi

  for port in "$ctld_port" "$slurmd_port"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "slurm-local: port $port is in use (another cluster from this script?);" \
        "set TESSERA_SLURM_CTLD_PORT / TESSERA_SLURM_SLURMD_PORT" >&2
      exit 1
    fi
  done

  # munge: the authentication service every Slurm message goes through.
  if ! munge_ok; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    [ -f /etc/munge/munge.key ] || { echo "slurm-local: /etc/munge/munge.key missing (reinstall munge)" >&2; exit 1; }
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { echo "slurm-local: munged did not come up (see /var/log/munge/munged.log)" >&2; exit 1; }
    cp /run/munge/munged.pid "$dir/munged.started.pid"
  fi

  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log"
  cat >"$conf" <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster on $host.
ClusterName=tessera-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool/d
StateSaveLocation=$dir/spool/ctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

  # -i: ignore state from an earlier run of this cluster; both daemons write their PID files.
  slurmctld -i -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    [ "$state" = "idle" ] && break
    sleep 0.2
  done
  if [ "${state:-}" != "idle" ]; then
    echo "slurm-local: node $host is '${state:-unreachable}', not idle; logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    "$0" stop "$dir" >/dev/null
    exit 1
  fi
  echo "slurm-local: one-node cluster up ($host, $cpus CPUs); export SLURM_CONF=$conf"
  ;;

*)
  echo "usage: $0 start|stop|env DIR" >&2
  exit 2
  ;;
esac
