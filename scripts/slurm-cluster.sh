#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for suanli's tests and benchmarks (issue 12): munged,
# a private MariaDB, slurmdbd, slurmctld, two slurmd and slurmrestd (JWT), every file under one
# directory, loopback only, nothing under /etc touched.
#
#   scripts/slurm-cluster.sh install      # Debian's packages (apt-get; root)
#   scripts/slurm-cluster.sh up DIR       # start it; prints the environment to use it
#   scripts/slurm-cluster.sh down DIR     # stop it (reverse order)
#   scripts/slurm-cluster.sh env DIR      # the environment again (SLURM_CONF, REST URL, user,
#                                         # token, JWT key, work dir)
#
# Daemons run in the background with their pids in DIR/run/*.pid; their logs are DIR/log/*.log.
set -euo pipefail

readonly PACKAGES=(slurmctld slurmd slurm-client slurmdbd slurmrestd slurm-wlm-jwt-plugin munge
  mariadb-server)
readonly DB_PORT=3307 CTLD_PORT=6817 DBD_PORT=6819 REST_PORT=6820 NODE_BASE_PORT=17001
readonly USER_NAME=nobody

fail() {
  echo "slurm-cluster: $*" >&2
  exit 1
}

start() { # name, command…: background, pid recorded
  local name="$1"
  shift
  "$@" >"$lab/log/$name.log" 2>&1 &
  echo $! >"$lab/run/$name.pid"
}

running() { # name
  local pid
  pid="$(cat "$lab/run/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

wait_for() { # what, seconds, command…
  local what="$1" seconds="$2"
  shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "$what did not come up within ${seconds}s (logs in $lab/log)"
}

write_config() {
  local host
  host="$(hostname -s)"
  cat >"$lab/etc/slurm.conf" <<EOF
ClusterName=suanli
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$lab/state/ctld
SlurmdSpoolDir=$lab/state/d-%n
SlurmctldPidFile=$lab/run/slurmctld.ctld.pid
SlurmdPidFile=$lab/run/slurmd-%n.d.pid
SlurmctldLogFile=$lab/log/slurmctld.daemon.log
SlurmdLogFile=$lab/log/slurmd-%n.daemon.log
AuthType=auth/munge
AuthInfo=socket=$lab/run/munge.sock
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$lab/etc/jwt.key
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$lab/run/munge.sock
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
NodeName=n1 NodeAddr=127.0.0.1 Port=$NODE_BASE_PORT CPUs=2 RealMemory=2000
NodeName=n2 NodeAddr=127.0.0.1 Port=$((NODE_BASE_PORT + 1)) CPUs=2 RealMemory=2000
PartitionName=mesh Nodes=n1,n2 Default=YES MaxTime=60 State=UP
EOF
  cat >"$lab/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$lab/run/munge.sock
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$lab/etc/jwt.key
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$lab/log/slurmdbd.daemon.log
PidFile=$lab/run/slurmdbd.dbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$lab/etc/slurmdbd.conf"
}

cluster_env() {
  local token
  token="$(SLURM_CONF="$lab/etc/slurm.conf" scontrol token username="$USER_NAME" lifespan=86400 \
    2>/dev/null | sed -n 's/^SLURM_JWT=//p')"
  echo "export SLURM_CONF=$lab/etc/slurm.conf"
  echo "export SUANLI_SLURMRESTD=http://127.0.0.1:$REST_PORT"
  echo "export SUANLI_SLURM_USER=$USER_NAME"
  echo "export SUANLI_SLURM_TOKEN=$token"
  echo "export SUANLI_SLURM_JWT_KEY=$lab/etc/jwt.key"
  # Shared by the compute nodes and writable by the job user: a node's slurm.work_dir.
  echo "export SUANLI_SLURM_WORK_DIR=$lab/jobs"
}

up() {
  mkdir -p "$lab"/{etc,run,log,state/ctld,state/d-n1,state/d-n2,db,jobs}
  chmod 777 "$lab/jobs"
  export SLURM_CONF="$lab/etc/slurm.conf"
  [[ -f "$lab/etc/munge.key" ]] || dd if=/dev/urandom of="$lab/etc/munge.key" bs=1024 count=1 2>/dev/null
  [[ -f "$lab/etc/jwt.key" ]] || dd if=/dev/urandom of="$lab/etc/jwt.key" bs=32 count=1 2>/dev/null
  chmod 600 "$lab/etc/munge.key" "$lab/etc/jwt.key"
  write_config

  running munged || start munged munged --foreground --force --socket="$lab/run/munge.sock" \
    --key-file="$lab/etc/munge.key" --pid-file="$lab/run/munged.daemon.pid" \
    --seed-file="$lab/run/munge.seed" --log-file="$lab/log/munged.daemon.log"
  wait_for munged 10 test -S "$lab/run/munge.sock"

  if [[ ! -d "$lab/db/mysql" ]]; then
    mariadb-install-db --no-defaults --datadir="$lab/db" --auth-root-authentication-method=normal \
      --skip-test-db >"$lab/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
  fi
  running mariadb || start mariadb mariadbd --no-defaults --datadir="$lab/db" --port=$DB_PORT \
    --bind-address=127.0.0.1 --socket="$lab/run/mariadb.sock" --user=root \
    --pid-file="$lab/run/mariadb.daemon.pid"
  wait_for mariadb 30 mariadb --no-defaults --socket="$lab/run/mariadb.sock" -uroot -e 'select 1'

  # slurmdbd reads slurmdbd.conf beside $SLURM_CONF.
  running slurmdbd || start slurmdbd slurmdbd -D
  wait_for slurmdbd 30 sacctmgr -i show cluster
  sacctmgr -i add cluster suanli >/dev/null 2>&1 || true
  sacctmgr -i add account mesh Cluster=suanli >/dev/null 2>&1 || true
  sacctmgr -i add user "$USER_NAME" Account=mesh DefaultAccount=mesh >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=mesh >/dev/null 2>&1 || true

  running slurmctld || start slurmctld slurmctld -D -i
  wait_for slurmctld 30 scontrol ping
  for node in n1 n2; do
    running "slurmd-$node" || start "slurmd-$node" slurmd -D -N "$node"
  done
  wait_for "both slurmd" 30 bash -c "[[ \$(sinfo -h -t idle -o '%D' | paste -sd+ | bc) == 2 ]]"

  running slurmrestd || start slurmrestd env SLURM_JWT=daemon slurmrestd -u "$(id -u "$USER_NAME")" \
    -g "$(id -g "$USER_NAME")" -a rest_auth/jwt "127.0.0.1:$REST_PORT"
  # Every request to slurmrestd needs a token, even for its OpenAPI description.
  local token
  token="$(scontrol token username="$USER_NAME" lifespan=600 | sed -n 's/^SLURM_JWT=//p')"
  wait_for slurmrestd 30 curl -sf -o /dev/null -H "X-SLURM-USER-NAME: $USER_NAME" \
    -H "X-SLURM-USER-TOKEN: $token" "http://127.0.0.1:$REST_PORT/openapi/v3"
  cluster_env
}

down() {
  local name pid
  for name in slurmrestd slurmd-n2 slurmd-n1 slurmctld slurmdbd mariadb munged; do
    pid="$(cat "$lab/run/$name.pid" 2>/dev/null)" || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$name" || break; sleep 0.1; done
    running "$name" && kill -9 "$pid" 2>/dev/null
    rm -f "$lab/run/$name.pid"
  done
}

case "${1:-}" in
  install)
    missing=()
    for package in "${PACKAGES[@]}"; do
      dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && exit 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || fail "apt-get update failed"
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 || fail "apt-get install failed"
    ;;
  up | down | env)
    [[ -n "${2:-}" ]] || fail "usage: $0 $1 DIR"
    mkdir -p "$2"
    lab="$(cd "$2" && pwd)"
    case "$1" in
      up) up ;;
      down) down ;;
      env) cluster_env ;;
    esac
    ;;
  *) fail "usage: $0 install | up DIR | down DIR | env DIR" ;;
esac
