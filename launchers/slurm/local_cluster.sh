#!/usr/bin/env bash
# A real single-node Slurm on localhost (Debian's slurm-wlm + munge), for tests and for trying the
# launchers without a cluster. Runs as root; everything lives in one state folder, on its own ports
# and its own munge socket, so it never touches a system Slurm or munge.
#
#   launchers/slurm/local_cluster.sh install          # apt-get install slurm-wlm munge (Debian)
#   launchers/slurm/local_cluster.sh start            # writes slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/hebatron-slurm/slurm.conf  # then sbatch / squeue / scontrol use it
#   launchers/slurm/local_cluster.sh status
#   launchers/slurm/local_cluster.sh stop
#
# Environment: HEBATRON_SLURM_DIR (state folder, default /tmp/hebatron-slurm), HEBATRON_SLURM_PORT
# (slurmctld port; slurmd uses the next one; default 16817), HEBATRON_SLURM_CPUS (default 2).
# The node is cgroup-free (proctrack/linuxproc, task/none), so it also works inside containers.
set -euo pipefail

DIR=${HEBATRON_SLURM_DIR:-/tmp/hebatron-slurm}
PORT=${HEBATRON_SLURM_PORT:-16817}
CPUS=${HEBATRON_SLURM_CPUS:-2}
# the node's memory, so jobs that ask for memory (--mem, --mem-per-cpu: datatrove's arrays) can run
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
# the node is this machine's short hostname: job scripts find the rendezvous host by node name
NODE=$(hostname -s)
CONF=$DIR/slurm.conf

die() { echo "local_cluster: $*" >&2; exit 1; }

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat >"$CONF" <<EOF
# written by launchers/slurm/local_cluster.sh
ClusterName=hebatron-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$DIR/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
# requeue (scontrol requeue, --requeue) is what the preemption tests exercise
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd launches jobs as their users)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    die "slurm-wlm and munge are not installed: run '$0 install' (Debian)"
  fi
  write_conf
  if [ ! -f "$DIR/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    chmod 600 "$DIR/munge.key"
  fi
  chmod 700 "$DIR"
  if ! running "$DIR/munged.pid"; then
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munged.seed"
  fi
  getent hosts "$NODE" >/dev/null || die "the hostname '$NODE' does not resolve (add it to /etc/hosts)"
  export SLURM_CONF=$CONF
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
  for _ in $(seq 1 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      echo "local Slurm up: export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  die "the node did not come up within 30 s (logs above)"
}

stop_one() {  # stop_one PIDFILE: TERM, then wait up to 10 s
  local pidfile=$1 pid
  running "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  stop_one "$DIR/slurmd.pid"
  stop_one "$DIR/slurmctld.pid"
  stop_one "$DIR/munged.pid"
  echo "local Slurm stopped ($DIR)"
}

status() {
  export SLURM_CONF=$CONF
  for d in munged slurmctld slurmd; do
    if running "$DIR/$d.pid"; then echo "$d: running (pid $(cat "$DIR/$d.pid"))"; else echo "$d: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

install() {
  command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge with your package manager"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  install) install ;;
  conf) write_conf; echo "$CONF" ;;
  *) echo "usage: $0 install|start|stop|status|conf" >&2; exit 2 ;;
esac
