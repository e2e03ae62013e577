#!/usr/bin/env bash
# A throwaway one-node Slurm cluster (munged + slurmctld + slurmd, all as root) for tests.
#
#   scripts/slurm-cluster.sh start DIR   # config, key, state, logs all under DIR; prints
#                                        # "export SLURM_CONF=DIR/slurm.conf" (also in DIR/env.sh)
#   source DIR/env.sh                    # now sbatch, squeue, scontrol, scancel talk to it
#   sbatch --array=0-3 --wait --parsable --output=DIR/out-%A_%a.txt --wrap '...'
#   scripts/slurm-cluster.sh stop DIR    # cancels jobs, stops the daemons; safe to repeat
#
# Needs root and Debian's packages: apt-get install -y --no-install-recommends slurmctld slurmd
# slurm-client munge (Slurm 22.05 on bookworm; slurm-wlm is only a metapackage over these).
# The node is NodeName=localhost at 127.0.0.1 with the CPUs and memory `slurmd -C` reports;
# SlurmctldHost is this machine's short hostname (slurmctld insists) with address 127.0.0.1.
# Ports are picked free at each start, so clusters in two DIRs run side by side. munged runs
# with its own key and socket in DIR (slurm.conf: AuthInfo=socket=...), ignoring any system
# munge. DIR must be short: the socket path must fit a Unix socket (< 100 bytes).
# OverSubscribe=FORCE:4 runs all 4 tasks of a 4-task array at once on 2 CPUs.
#
# Proof that Slurm ran a job: the output files (%A = array job id, %a = task id; the task sees
# SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_JOB_ID), and
# DIR/log/jobcomp.txt (jobcomp/filetxt): one line per finished run, e.g. "JobId=3 ...
# JobState=COMPLETED ... ArrayJobId=1 ArrayTaskId=1 ... ExitCode=0:0". There is no slurmdbd:
# plain `sacct` says "Slurm accounting storage is disabled"; `sacct -c` (--completion) reads
# jobcomp.txt but shows the tasks' own job ids, not 1_0 style, and prints "Unknown type
# ArrayJobId" errors on stderr. squeue/scontrol show finished jobs only 4 to ~64 s
# (MinJobAge=4, purged every 60 s): `squeue -h -r -t all -o '%i %A %T'` gives "1_2 4 FAILED".
# `sbatch --wait` exits with the largest exit code of the tasks (1 for a task killed by a signal).
#
# Kill and requeue one task (verified; the rerun keeps its SLURM_JOB_ID and sees
# SLURM_RESTART_COUNT=1, unset on a first run; `sbatch --wait` returns only after the rerun):
#   scontrol requeue ARRAYJOB_1          # kills the running task 1 (TERM, KILL after 2 s) and
#                                        # queues it again; jobcomp.txt gets JobState=PENDING
#   kill -9 WORKERPID                    # or: a worker child of the batch script is killed,
#                                        # the script exits 137, RequeueExit=137 requeues it
#   scancel --signal=KILL ARRAYJOB_1; scontrol requeue ARRAYJOB_1
#                                        # or: cancel, then requeue the CANCELLED task (only
#                                        # while its record lives and other tasks still run)
# A requeued task may start again cred_expire + 1 = 6 s later (AuthInfo cred_expire=5; the
# default 120 s). Its output file is truncated on the rerun unless sbatch has
# --open-mode=append. `scontrol listpids TASKJOBID` (the task's own job id, from
# `squeue -h -j ARRAYJOB_1 -o %A`) lists its processes.
#
# Timings here (2 CPUs): start 0.1 to 1.6 s; a 4-task array of `sleep 2` with --wait 4.0 s end
# to end (sbatch --wait polls every 2 s); the same with task 1 requeued at 1 s, 10.0 s; stop
# 0.2 to 0.4 s. Daemons that exit linger as zombies until the container's init reaps them (~2 s).
set -euo pipefail

die() { echo "slurm-cluster.sh: $*" >&2; exit 1; }

usage() { echo "usage: $0 start DIR | stop DIR" >&2; exit 2; }

# Two distinct free TCP ports on 127.0.0.1 (bound together, then released).
free_ports() {
  /usr/bin/python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Whether PID runs (a zombie does not: kill -0 succeeds on one until its parent reaps it).
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ -n $stat && $stat != Z* ]]
}

# The pid in pid FILE (DIR/run/NAME.pid) if that process is alive and named NAME, else nothing.
live_pid() {
  local file=$1 pid
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
    [[ $(ps -o comm= -p "$pid" 2>/dev/null) == "$(basename "$file" .pid)" ]] && echo "$pid"
}

# Sends TERM to the daemons in the pid FILEs, waits up to SECONDS for them to exit, then KILL.
stop_daemons() {
  local secs=$1 file pid i pids=()
  shift
  for file in "$@"; do
    if pid=$(live_pid "$file"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < secs * 10; i++)); do
    local alive=()
    for pid in ${pids[@]+"${pids[@]}"}; do
      alive "$pid" && alive+=("$pid")
    done
    pids=(${alive[@]+"${alive[@]}"})
    [[ ${#pids[@]} -eq 0 ]] && break
    sleep 0.1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    echo "slurm-cluster.sh: pid $pid ignored TERM for $secs s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$@"
}

# The pids of all descendants of PID.
descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do
    echo "$child"
    descendants "$child"
  done
}

show_logs() {
  local dir=$1 f
  for f in "$dir"/log/munged.log "$dir"/log/slurmctld.log "$dir"/log/slurmd.log; do
    [[ -f $f ]] || continue
    echo "----- $f (last 60 lines) -----" >&2
    tail -n 60 "$f" >&2
  done
}

# A slurmstepd outlives slurmd. Ours carry our SLURM_CONF in their environment: kill them and
# their descendants (the job scripts).
kill_steps() {
  local dir=$1 pid env
  for pid in $(pgrep -x slurmstepd || true); do
    alive "$pid" || continue
    env=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" || true)
    grep -qxF "SLURM_CONF=$dir/slurm.conf" <<<"$env" || continue
    echo "slurm-cluster.sh: killing leftover slurmstepd $pid" >&2
    kill -KILL "$pid" $(descendants "$pid") 2>/dev/null || true
  done
}

cmd_stop() {
  local dir=$1
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  # Cancel what is still queued or running while the controller can, so no job outlives us.
  local i slurmd_secs=20
  if live_pid "$dir/run/slurmctld.pid" >/dev/null; then
    SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user=root 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h -t PD,R,CG,S,CF -o %i 2>/dev/null) ]] && break
      sleep 0.1
    done
  else
    slurmd_secs=3 # Without a controller slurmd spends ~30 s on its way out, for nothing.
  fi
  # Steps scancel did not end (say slurmctld had died).
  kill_steps "$dir"
  # The Slurm daemons together, then munge, which they talk to.
  stop_daemons "$slurmd_secs" "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid"
  stop_daemons 20 "$dir/run/munged.pid"
  kill_steps "$dir"
  return 0
}

cmd_start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  for pidf in slurmd slurmctld munged; do
    if live_pid "$dir/run/$pidf.pid" >/dev/null; then
      die "$pidf from an earlier start is still running in $dir; run '$0 stop $dir' first"
    fi
  done
  for prog in munged slurmctld slurmd sinfo; do
    command -v "$prog" >/dev/null ||
      die "$prog not found: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
  done
  local sock=$dir/munge/munge.socket
  ((${#sock} < 100)) || die "DIR is too long for a Unix socket path ($sock); use a shorter one"
  # From here on, a failure prints the logs and stops whatever did start.
  START_DIR=$dir
  trap 'rc=$?; if ((rc)); then show_logs "$START_DIR"; cmd_stop "$START_DIR"; fi; exit $rc' EXIT
  rm -rf "$dir"/{munge,state,spool,log,run}
  mkdir -p "$dir"/{munge,state,spool,log,run}
  chmod 755 "$dir/munge"

  # MUNGE: own key, socket, pid, log and seed file, so a system munged does not matter.
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force \
    --socket="$sock" --key-file="$dir/munge/munge.key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
    die "munged failed to start"

  # Node size as slurmd sees it.
  local cpus mem
  read -r cpus mem < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p') || true
  [[ -n $cpus && -n $mem ]] || die "could not read CPUs/RealMemory from 'slurmd -C'"

  local ports ctld_port slurmd_port
  ports=$(free_ports)
  read -r ctld_port slurmd_port <<<"$ports"
  local host
  host=$(hostname -s)

  cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm-cluster.sh start $dir
ClusterName=lastlayer
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also is how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$sock,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
# Schedule every few seconds (defaults: backfill every 30 s, main loop every 60 s), so a
# requeued task starts soon after it becomes eligible.
SchedulerParameters=bf_interval=1,sched_interval=2
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
# sbatch --wait polls every 2 s only while MinJobAge <= 4 (else 2, 8, 32, 32 ... s). Finished
# jobs stay in squeue/scontrol for 4 to ~64 s (the purge runs every 60 s); log/jobcomp.txt keeps them.
MinJobAge=4
# A task whose batch script exits 137 (its worker child was SIGKILLed) is requeued by Slurm itself.
RequeueExit=137
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
# OverSubscribe=FORCE:4 lets up to 4 one-CPU jobs share a core, so a 4-task array runs at once.
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

  cat >"$dir/env.sh" <<EOF
export SLURM_CONF=$dir/slurm.conf
EOF

  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i -f "$dir/slurm.conf" >>"$dir/log/slurmctld.out" 2>&1 ||
    die "slurmctld failed to start"
  slurmd -f "$dir/slurm.conf" -N localhost >>"$dir/log/slurmd.out" 2>&1 ||
    die "slurmd failed to start"

  local i state=
  for ((i = 0; i < 120; i++)); do
    state=$(sinfo -h -N -n localhost -o '%T' 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.5
  done
  if [[ $state != idle ]]; then
    die "node not idle after 60 s (state: '${state:-no answer}')"
  fi
  trap - EXIT
  echo "export SLURM_CONF=$dir/slurm.conf"
}

[[ $# -eq 2 ]] || usage
case $1 in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  *) usage ;;
esac
