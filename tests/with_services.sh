#!/usr/bin/env bash
# Run a command with the servers the tests need, started on loopback for its duration:
#   * a real Ray head (2 CPUs), exported as RAY_ADDRESS, unless RAY_ADDRESS is already set;
#   * a real PostgreSQL server in a temporary directory, exported as MOESCHED_TEST_PG_URL,
#     unless that is already set. PostgreSQL comes from the distribution's packages and is
#     installed when missing (CI runs as root on a fresh machine).
# Usage: tests/with_services.sh COMMAND [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin"
work=$(mktemp -d /tmp/ms.XXXXXX)
chmod 755 "$work"
cleanup() {
  # Only this script's Ray (its own process group), never another run's on the machine.
  if [ -n "${ray_pid:-}" ]; then
    kill -TERM -- "-$ray_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- "-$ray_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$ray_pid" 2>/dev/null || true
  fi
  if [ -n "${pg_ctl:-}" ]; then runuser -u postgres -- "$pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ -z "${MOESCHED_TEST_PG_URL:-}" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/pg_ctl" ]; then
    echo "with_services: installing PostgreSQL from the distribution's packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  pg_ctl="$pg_bin/pg_ctl"
  mkdir -p "$work/pg"; chown postgres "$work/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
  pg_port=$(free_port)
  runuser -u postgres -- "$pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work/pg -c fsync=on" start >/dev/null
  runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres moesched_test
  export MOESCHED_TEST_PG_URL="postgresql://postgres@127.0.0.1:$pg_port/moesched_test"
  echo "with_services: PostgreSQL at $MOESCHED_TEST_PG_URL" >&2
fi

if [ -z "${RAY_ADDRESS:-}" ]; then
  ray_port=$(free_port)
  export RAY_USAGE_STATS_ENABLED=0
  # Keep Ray on loopback: without this it advertises the machine's interface address.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  # Token authentication on, with a fresh token shared by the head and the tests' drivers.
  export RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=$("$bin/python" -c 'import secrets; print(secrets.token_hex(32))')
  export RAY_AUTH_TOKEN
  setsid "$bin/ray" start --head --block --node-ip-address=127.0.0.1 --port="$ray_port" \
    --num-cpus=2 --object-store-memory=200000000 --include-dashboard=false \
    --disable-usage-stats --temp-dir="$work/ray" >"$work/ray.log" 2>&1 &
  ray_pid=$!
  disown "$ray_pid"
  export RAY_ADDRESS="127.0.0.1:$ray_port"
  for _ in $(seq 1 240); do
    "$bin/ray" status --address "$RAY_ADDRESS" >/dev/null 2>&1 && break
    kill -0 "$ray_pid" 2>/dev/null || { cat "$work/ray.log" >&2; echo "with_services: ray start failed" >&2; exit 1; }
    sleep 0.5
  done
  echo "with_services: Ray head at $RAY_ADDRESS" >&2
fi

"$@"
