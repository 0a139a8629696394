# shellcheck shell=bash
# Start Ray across a batch allocation, run one candle-ray command on it, stop Ray on every node.
#
# Sourced by cluster/slurm/candle-ray.sbatch and cluster/pbs/candle-ray.pbs, after they set
# CR_SCHEDULER=slurm|pbs; then `cr_main EXPERIMENT [candle-ray tune options...]`.
#
# The first node of the allocation (where the batch script runs) is the Ray head and the driver;
# every node, head included, runs one `ray start ... --block` through the per-node launcher.
#
# Settings (environment; all optional):
#   CANDLE_RAY_COMMAND   tune (default), ensemble or cv
#   LAUNCHER             how a command reaches one node: srun (Slurm default), pbsdsh (PBS default),
#                        mpiexec, ssh, or local (every "node" is this machine: for tests and laptops)
#   GPUS_PER_NODE        default from the scheduler (SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE,
#                        NGPUS, CUDA_VISIBLE_DEVICES; PBS also nvidia-smi), else 0
#   CPUS_PER_NODE        default from the scheduler (SLURM_CPUS_ON_NODE, NCPUS), else nproc
#   RAY_PORT             head port (default 6379; LAUNCHER=local picks free ports)
#   RAY_HEAD_IP          the head's address as the other nodes reach it (default: resolved)
#   RAY_JOIN_TIMEOUT     seconds to wait for every node to join (default 300)
#   CR_NODE_RESTARTS     times a worker node whose Ray stopped is started again in the job (default 3)
#   CR_LOG_DIR           per-node `ray start` logs (default ./candle-ray-logs/<job id>)
#   CANDLE_RAY_HOSTFILE  one host per line, instead of the scheduler's node list
#   SRUN_ARGS            extra srun options for the per-node steps (e.g. "--gpus-per-task=4")

set -o pipefail  # not -u: bash 4.2 (RHEL 7) treats empty arrays as unset

CR_PIDS=()
CR_RETRIED=()
CR_RESTARTS=()
CR_DOWN=()
CR_NODES=()
CR_STOPPED=0
CR_DRIVER=

cr_log() { echo "candle-ray batch: $*" >&2; }
cr_die() { local code=$1; shift; echo "error: $*" >&2; exit "$code"; }

cr_job_id() {
  case "${CR_SCHEDULER:-}" in
    slurm) echo "${SLURM_JOB_ID:-$$}" ;;
    pbs) echo "${PBS_JOBID:-$$}" | cut -d. -f1 ;;
    *) echo "$$" ;;
  esac
}

# ------------------------------------------------------------------------------ the allocation

cr_discover_nodes() {
  local list=()
  if [[ -n "${CANDLE_RAY_HOSTFILE:-}" ]]; then
    [[ -r "$CANDLE_RAY_HOSTFILE" ]] || cr_die 2 "CANDLE_RAY_HOSTFILE $CANDLE_RAY_HOSTFILE cannot be read"
    mapfile -t list < <(awk 'NF && !seen[$1]++ {print $1}' "$CANDLE_RAY_HOSTFILE")
  elif [[ "${CR_SCHEDULER:-}" == slurm ]]; then
    [[ -n "${SLURM_JOB_NODELIST:-}" ]] || cr_die 2 "SLURM_JOB_NODELIST is not set: submit with sbatch (or set CANDLE_RAY_HOSTFILE)"
    if command -v scontrol >/dev/null 2>&1; then
      mapfile -t list < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    elif [[ "$SLURM_JOB_NODELIST" == *[\[\]]* ]]; then
      cr_die 2 "cannot expand SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST without scontrol"
    else
      IFS=, read -r -a list <<< "$SLURM_JOB_NODELIST"  # a plain list: Slurm never repeats a node
    fi
  elif [[ "${CR_SCHEDULER:-}" == pbs ]]; then
    [[ -r "${PBS_NODEFILE:-}" ]] || cr_die 2 "PBS_NODEFILE is not set or unreadable: submit with qsub (or set CANDLE_RAY_HOSTFILE)"
    # PBS lists a host once per MPI rank / CPU: keep the first occurrence of each.
    mapfile -t list < <(awk 'NF && !seen[$1]++ {print $1}' "$PBS_NODEFILE")
  else
    cr_die 2 "CR_SCHEDULER must be slurm or pbs (set by the batch script)"
  fi
  ((${#list[@]} > 0)) || cr_die 2 "the allocation lists no nodes"
  CR_NODES=("${list[@]}")
}

cr_count_devices() {  # "0,1,3" -> 3; "", "NoDevFiles" -> 0
  local devices=$1
  [[ -z "$devices" || "$devices" == NoDevFiles || "$devices" == -1 ]] && { echo 0; return; }
  awk -F, '{print NF}' <<< "$devices"
}

cr_gpus_per_node() {
  if [[ -n "${GPUS_PER_NODE:-}" ]]; then echo "$GPUS_PER_NODE"; return; fi
  if [[ "${CR_SCHEDULER:-}" == slurm ]]; then
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
    if [[ -n "${SLURM_GPUS_PER_NODE:-}" ]]; then echo "${SLURM_GPUS_PER_NODE##*:}" | tr -dc '0-9'; echo; return; fi
  else
    for var in NGPUS PBS_NGPUS; do
      if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
    done
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then cr_count_devices "$CUDA_VISIBLE_DEVICES"; return; fi
  if [[ "${CR_SCHEDULER:-}" == pbs ]] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    return
  fi
  echo 0
}

cr_cpus_per_node() {
  if [[ -n "${CPUS_PER_NODE:-}" ]]; then echo "$CPUS_PER_NODE"; return; fi
  if [[ "${CR_SCHEDULER:-}" == slurm && -n "${SLURM_CPUS_ON_NODE:-}" ]]; then echo "$SLURM_CPUS_ON_NODE"; return; fi
  if [[ "${CR_SCHEDULER:-}" == pbs && -n "${NCPUS:-}" ]]; then echo "$NCPUS"; return; fi
  nproc
}

# The trial size from the candle-ray options: --workers-per-trial N, --cpus-per-worker X, --cpu.
cr_trial_size() {
  CR_WORKERS=1 CR_CPUS_PER_WORKER=1 CR_FORCE_CPU=0
  while (($#)); do
    case "$1" in
      --workers-per-trial) CR_WORKERS=${2:-1}; shift ;;
      --workers-per-trial=*) CR_WORKERS=${1#*=} ;;
      --cpus-per-worker) CR_CPUS_PER_WORKER=${2:-1}; shift ;;
      --cpus-per-worker=*) CR_CPUS_PER_WORKER=${1#*=} ;;
      --cpu) CR_FORCE_CPU=1 ;;
    esac
    shift
  done
  [[ "$CR_WORKERS" =~ ^[1-9][0-9]*$ ]] || cr_die 2 "--workers-per-trial must be a positive integer, got $CR_WORKERS"
}

# Refuse an allocation that cannot hold one trial: a trial's workers spread over nodes, each node
# holding GPUS_PER_NODE one-GPU workers (CPU runs: CPUS_PER_NODE / --cpus-per-worker).
cr_check_allocation() {
  local nodes=${#CR_NODES[@]} per_node unit
  if ((CR_GPUS > 0 && CR_FORCE_CPU == 0)); then
    per_node=$CR_GPUS unit="$CR_GPUS GPU(s) per node, one per worker"
  else
    per_node=$(awk -v c="$CR_CPUS" -v w="$CR_CPUS_PER_WORKER" 'BEGIN {print int(c / w + 1e-9)}')
    unit="$CR_CPUS CPU(s) per node, $CR_CPUS_PER_WORKER per worker"
    ((per_node > 0)) || cr_die 2 "a worker needs $CR_CPUS_PER_WORKER CPUs but a node has $CR_CPUS; lower --cpus-per-worker"
  fi
  CR_NODES_NEEDED=$(((CR_WORKERS + per_node - 1) / per_node))
  if ((nodes < CR_NODES_NEEDED)); then
    cr_die 2 "one trial needs $CR_WORKERS worker(s) = $CR_NODES_NEEDED node(s) at $unit, but the allocation has $nodes node(s); ask for $CR_NODES_NEEDED nodes (sbatch --nodes / qsub -l select) or lower --workers-per-trial"
  fi
}

# ------------------------------------------------------------------------------ per-node launch

cr_free_ports() {  # N distinct free loopback ports (LAUNCHER=local only)
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

cr_head_ip() {
  if [[ -n "${RAY_HEAD_IP:-}" ]]; then echo "$RAY_HEAD_IP"; return; fi
  if [[ "$LAUNCHER" == local ]]; then echo 127.0.0.1; return; fi
  local ip
  ip=$(getent ahostsv4 "${CR_NODES[0]}" 2>/dev/null | awk '$1 !~ /^127\./ {print $1; exit}')
  [[ -n "$ip" ]] || ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  [[ -n "$ip" ]] || cr_die 1 "cannot resolve the head node ${CR_NODES[0]}'s address; set RAY_HEAD_IP"
  echo "$ip"
}

# The environment a remote shell needs to find this venv and candle-ray's settings (pbsdsh, ssh and
# some mpiexec do not forward it).
cr_env_prefix() {
  local name out="cd $(printf %q "$PWD") &&"
  while IFS= read -r name; do
    out+=" export $name=$(printf %q "${!name}");"
  done < <(compgen -e | grep -E '^(PATH|VIRTUAL_ENV|PYTHONPATH|LD_LIBRARY_PATH|CANDLE_RAY_[A-Z_]*|RAY_[A-Z_]*|MLFLOW_[A-Z_]*|AWS_[A-Z_]*)$')
  echo "$out"
}

# cr_on_node INDEX HOST CMD... : run CMD on that node in the background; its pid is CR_PIDS[INDEX].
cr_on_node() {
  local index=$1 host=$2; shift 2
  local log="$CR_LOG_DIR/node-$index-$host.log"
  case "$LAUNCHER" in
    local)
      setsid "$@" > "$log" 2>&1 < /dev/null &
      ;;
    srun)
      # shellcheck disable=SC2086
      srun --nodes=1 --ntasks=1 -w "$host" ${SRUN_ARGS:-} "$@" > "$log" 2>&1 < /dev/null &
      ;;
    pbsdsh)
      local vnode
      vnode=$(awk -v h="$host" '$1 == h {print NR - 1; exit}' "${PBS_NODEFILE}")
      pbsdsh -n "$vnode" -- /bin/bash -c "$(cr_env_prefix) exec $(printf '%q ' "$@")" > "$log" 2>&1 < /dev/null &
      ;;
    mpiexec)
      mpiexec -n 1 -host "$host" /bin/bash -c "$(cr_env_prefix) exec $(printf '%q ' "$@")" > "$log" 2>&1 < /dev/null &
      ;;
    ssh)
      ssh -o BatchMode=yes "$host" "$(cr_env_prefix) exec $(printf '%q ' "$@")" > "$log" 2>&1 < /dev/null &
      ;;
    *) cr_die 2 "LAUNCHER must be srun, pbsdsh, mpiexec, ssh or local, got $LAUNCHER" ;;
  esac
  CR_PIDS[$index]=$!
}

# cr_ray_start INDEX HOST [--head] : one `ray start --block` on that node.
cr_ray_start() {
  local index=$1 host=$2 role=${3:-}
  local args=(ray start --block --disable-usage-stats --num-cpus="$CR_CPUS" --num-gpus="$CR_GPUS")
  if [[ "$role" == --head ]]; then
    args+=(--head --node-ip-address="$CR_HEAD_IP" --port="$RAY_PORT" --dashboard-host=127.0.0.1)
  else
    args+=(--address="$CR_HEAD_IP:$RAY_PORT")
    [[ "$LAUNCHER" == local ]] && args+=(--node-ip-address=127.0.0.1)
  fi
  if [[ "$LAUNCHER" == local ]]; then
    # Several raylets on one machine: each its own temp dir and ports.
    local p
    read -r -a p <<< "$(cr_free_ports 6)"
    args+=(--temp-dir="$CR_TEMP_ROOT/n$index" --node-manager-port="${p[0]}" --object-manager-port="${p[1]}"
           --dashboard-agent-listen-port="${p[2]}" --dashboard-agent-grpc-port="${p[3]}"
           --metrics-export-port="${p[4]}" --runtime-env-agent-port="${p[5]}")
    [[ "$role" == --head ]] && { read -r -a p <<< "$(cr_free_ports 2)"; args+=(--dashboard-port="${p[0]}" --ray-client-server-port="${p[1]}"); }
    mkdir -p "$CR_TEMP_ROOT/n$index"
  fi
  cr_on_node "$index" "$host" "${args[@]}"
}

# cr_start_again INDEX : a worker node whose `ray start` exited during start-up (its raylet not registered
# within Ray's 30 s: a busy GCS, or a free port taken meanwhile) is started once more, with fresh ports under
# LAUNCHER=local; the failed try's log is kept beside it. `--block` took that try's processes down with it
# (Ray's fate-sharing). A node that had started is cr_restart_node's; the head (the others point at its port) is
# not retried.
cr_start_again() {
  local i=$1 log="$CR_LOG_DIR/node-$1-${CR_NODES[$1]}.log"
  ((i > 0)) && [[ -z "${CR_RETRIED[$i]:-}" ]] || return 1
  grep -qs "Ray runtime started" "$log" && return 1
  CR_RETRIED[$i]=1
  mv "$log" "$log.first-try"
  cr_log "ray start on node $i (${CR_NODES[$i]}) exited during start-up ($(tail -n 1 "$log.first-try" | cut -c1-160)); starting it once more"
  cr_ray_start "$i" "${CR_NODES[$i]}"
}

# Which of a stopped `ray start --block`'s processes ended, from its log ("raylet [exit code=-9]"), else its last line.
cr_why_stopped() {
  local why
  why=$(grep -A1 "exited unexpectedly" "$1" 2>/dev/null | tail -n 1 | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^.* -- //')
  [[ -n "$why" ]] || why=$(tail -n 1 "$1")
  echo "${why:0:160}"
}

# cr_restart_node INDEX : a worker node whose Ray stopped after its start-up (its raylet died: out of memory,
# a crashed agent, a rebooted node) is started again, up to CR_NODE_RESTARTS times in the job; each stopped
# run's log is kept beside the new one. Tune retries the trials it held (--max-failures) and places waiting
# ones on it again. The head is not restarted: the driver and every node's link to Ray end with it.
cr_restart_node() {
  local i=$1 log="$CR_LOG_DIR/node-$1-${CR_NODES[$1]}.log" n=$((${CR_RESTARTS[$1]:-0} + 1))
  ((i > 0 && n <= ${CR_NODE_RESTARTS:-3})) || return 1
  CR_RESTARTS[$i]=$n
  mv "$log" "$log.stopped-$n"
  cr_log "Ray on node $i (${CR_NODES[$i]}) stopped ($(cr_why_stopped "$log.stopped-$n")); starting it again ($n of ${CR_NODE_RESTARTS:-3})"
  cr_ray_start "$i" "${CR_NODES[$i]}"
}

# While candle-ray runs: start again each worker node whose Ray stopped. One that has used up its restarts
# stays down, said once; the sweep goes on with the other nodes.
cr_watch_nodes() {
  local i
  for ((i = 1; i < ${#CR_NODES[@]}; i++)); do
    if [[ -n "${CR_DOWN[$i]:-}" ]] || kill -0 "${CR_PIDS[$i]}" 2>/dev/null || cr_restart_node "$i"; then
      continue
    fi
    CR_DOWN[$i]=1
    cr_log "Ray on node $i (${CR_NODES[$i]}) stopped, with its restarts used up (CR_NODE_RESTARTS=${CR_NODE_RESTARTS:-3}); it stays down and the sweep goes on with the other nodes; see $CR_LOG_DIR"
  done
}

cr_alive_nodes() {
  timeout 60 python3 - "$CR_HEAD_IP:$RAY_PORT" <<'EOF' 2>/dev/null
import logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
}

# Every node counted alive by the GCS (one Python driver per look, 1.2-1.5 s here). It looks as soon as every
# node's log says its runtime started, and at least every 4 s whatever the logs say (a launcher may hold
# the line in a buffer); between looks it checks each launcher is still running, twice a second.
cr_wait_for_nodes() {
  local want=${#CR_NODES[@]} have=0 deadline=$((SECONDS + ${RAY_JOIN_TIMEOUT:-300})) next_look=$((SECONDS + 4))
  while ((SECONDS < deadline)); do
    local i started=0
    for i in "${!CR_PIDS[@]}"; do
      kill -0 "${CR_PIDS[$i]}" 2>/dev/null || cr_start_again "$i" || cr_restart_node "$i" ||
        cr_die 1 "ray start on node $i (${CR_NODES[$i]}) exited; see $CR_LOG_DIR/node-$i-${CR_NODES[$i]}.log"
      grep -qs "Ray runtime started" "$CR_LOG_DIR/node-$i-${CR_NODES[$i]}.log" && started=$((started + 1))
    done
    if ((started >= want || SECONDS >= next_look)); then
      have=$(cr_alive_nodes) || have=0
      [[ "$have" =~ ^[0-9]+$ ]] || have=0
      if ((have >= want)); then cr_log "all $want node(s) joined"; return 0; fi
      next_look=$((SECONDS + 4))
    fi
    sleep 0.5
  done
  cr_die 1 "only $have of $want node(s) joined Ray within ${RAY_JOIN_TIMEOUT:-300} s; see the logs in $CR_LOG_DIR"
}

# SIGTERM to these launcher pids (`ray start --block` drains its node through the GCS and stops its
# processes; srun forwards the signal), up to 60 s, then SIGKILL (a local node: its process group).
cr_term_wait() {
  local pid deadline=$((SECONDS + 60))
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    [[ "$LAUNCHER" == local ]] && kill -KILL -- "-$pid" 2>/dev/null
    kill -KILL "$pid" 2>/dev/null
  done
  return 0
}

# Stop Ray on every node (trap EXIT): SIGTERM to each `ray start --block` (it stops its node's
# processes), then `ray stop` through the launcher where the launcher cannot forward signals.
cr_stop_all() {
  ((CR_STOPPED)) && return 0
  CR_STOPPED=1
  if [[ -n "${CR_DRIVER:-}" ]] && kill -0 "$CR_DRIVER" 2>/dev/null; then
    cr_log "interrupting candle-ray (the sweep's state is saved; continue it with --resume --name <sweep>)"
    kill -INT "$CR_DRIVER" 2>/dev/null
    local deadline=$((SECONDS + ${CR_DRIVER_GRACE:-120}))
    while kill -0 "$CR_DRIVER" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    kill -TERM "$CR_DRIVER" 2>/dev/null && sleep 2  # still running past the grace period
    kill -KILL -- "-$CR_DRIVER" 2>/dev/null  # whatever it left in its process group
  fi
  ((${#CR_PIDS[@]})) || return 0
  cr_log "stopping Ray on ${#CR_PIDS[@]} node(s)"
  local i pid
  if [[ "$LAUNCHER" == pbsdsh || "$LAUNCHER" == mpiexec || "$LAUNCHER" == ssh ]]; then
    for ((i = ${#CR_NODES[@]} - 1; i >= 0; i--)); do  # workers first, the head last
      case "$LAUNCHER" in
        pbsdsh) timeout 60 pbsdsh -n "$(awk -v h="${CR_NODES[$i]}" '$1 == h {print NR - 1; exit}' "$PBS_NODEFILE")" -- /bin/bash -c "$(cr_env_prefix) ray stop" ;;
        mpiexec) timeout 60 mpiexec -n 1 -host "${CR_NODES[$i]}" /bin/bash -c "$(cr_env_prefix) ray stop" ;;
        ssh) timeout 60 ssh -o BatchMode=yes "${CR_NODES[$i]}" "$(cr_env_prefix) ray stop" ;;
      esac >> "$CR_LOG_DIR/stop.log" 2>&1
    done
  fi
  # Workers first (a worker drains through the head's GCS), then the head.
  cr_term_wait "${CR_PIDS[@]:1}"
  cr_term_wait "${CR_PIDS[0]}"
  wait 2>/dev/null
  cr_log "Ray stopped"
}

# ------------------------------------------------------------------------------ the whole run

cr_main() {
  (($# >= 1)) || cr_die 2 "usage: $0 EXPERIMENT [candle-ray ${CANDLE_RAY_COMMAND:-tune} options...]"
  local experiment=$1; shift
  [[ -f "$experiment" ]] || cr_die 2 "experiment file not found: $experiment (paths are relative to $PWD)"
  command -v ray >/dev/null 2>&1 || cr_die 2 "ray is not on PATH; activate the venv that has candle-ray installed"
  command -v candle-ray >/dev/null 2>&1 || cr_die 2 "candle-ray is not on PATH; activate the venv that has it installed"

  if [[ -z "${LAUNCHER:-}" ]]; then
    case "$CR_SCHEDULER" in slurm) LAUNCHER=srun ;; pbs) LAUNCHER=pbsdsh ;; esac
  fi
  cr_discover_nodes
  CR_GPUS=$(cr_gpus_per_node); CR_GPUS=${CR_GPUS:-0}
  CR_CPUS=$(cr_cpus_per_node)
  [[ "$CR_GPUS" =~ ^[0-9]+$ ]] || cr_die 2 "GPUs per node must be a whole number, got '$CR_GPUS'; set GPUS_PER_NODE"
  [[ "$CR_CPUS" =~ ^[0-9]+$ ]] || cr_die 2 "CPUs per node must be a whole number, got '$CR_CPUS'; set CPUS_PER_NODE"
  cr_trial_size "$@"
  cr_check_allocation

  local job
  job=$(cr_job_id)
  CR_LOG_DIR=${CR_LOG_DIR:-$PWD/candle-ray-logs/$job}
  mkdir -p "$CR_LOG_DIR"
  CR_TEMP_ROOT=${CR_TEMP_ROOT:-${RAY_TMPDIR:-/tmp}/crb-$job}
  if [[ "$LAUNCHER" == local && -z "${RAY_PORT:-}" ]]; then RAY_PORT=$(cr_free_ports 1); fi
  RAY_PORT=${RAY_PORT:-6379}
  CR_HEAD_IP=$(cr_head_ip) || exit $?

  trap cr_stop_all EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 138' USR1  # Slurm's --signal=B:USR1@300: walltime is near
  cr_log "${#CR_NODES[@]} node(s) (${CR_NODES[*]}), $CR_CPUS CPU + $CR_GPUS GPU each; head $CR_HEAD_IP:$RAY_PORT; launcher $LAUNCHER; logs $CR_LOG_DIR"
  local i
  cr_ray_start 0 "${CR_NODES[0]}" --head
  for ((i = 1; i < ${#CR_NODES[@]}; i++)); do
    cr_ray_start "$i" "${CR_NODES[$i]}"
  done
  cr_wait_for_nodes

  cr_log "candle-ray ${CANDLE_RAY_COMMAND:-tune} $experiment $* --address $CR_HEAD_IP:$RAY_PORT"
  # In the background (its own process group, SIGINT not ignored), so that a signal to this script
  # is handled at once: the EXIT trap then interrupts the driver as Ctrl-C would (Tune saves the
  # sweep's state: `--resume` continues it) and stops the nodes.
  set -m
  candle-ray "${CANDLE_RAY_COMMAND:-tune}" "$experiment" "$@" --address "$CR_HEAD_IP:$RAY_PORT" < /dev/null &
  CR_DRIVER=$!
  set +m
  while kill -0 "$CR_DRIVER" 2>/dev/null; do
    cr_watch_nodes
    sleep 1 & wait $!  # `wait`, unlike a foreground sleep, lets a signal's trap run at once
  done
  wait "$CR_DRIVER"
  local rc=$?
  CR_DRIVER=
  cr_stop_all
  return $rc
}
