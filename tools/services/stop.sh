#!/usr/bin/env bash
# Stops what tools/services/start.sh DIR started: PostgreSQL (pg_ctl stop -m fast) and moto (by its pid file).
# Safe to run twice, and after a start that failed halfway. Leaves DIR in place (the caller removes it).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir="$1"
rc=0

# --- moto: only the process the pid file names, and only while it is still moto_server.
if [ -f "$dir/moto.pid" ]; then
  pid="$(cat "$dir/moto.pid")"
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/moto.pid"
fi

# --- PostgreSQL: running while DIR/pg/postmaster.pid exists.
if [ -f "$dir/pg/postmaster.pid" ]; then
  pg_bin="" pg_run_user=""
  if [ -f "$dir/services.conf" ]; then
    # shellcheck source=/dev/null
    . "$dir/services.conf"
  fi
  if [ -z "$pg_bin" ]; then
    pg_bin="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  fi
  run_pg=()
  if [ -n "$pg_run_user" ] && [ "$(id -u)" -eq 0 ]; then
    run_pg=(runuser -u "$pg_run_user" --)
  fi
  if ! "${run_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -m fast -w -t 60 stop >/dev/null 2>&1; then
    # Not running after all (a stale pid file), or it would not stop: say so, without failing a second call.
    if "${run_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then
      echo "stop.sh: PostgreSQL in $dir/pg did not stop" >&2
      rc=1
    fi
  fi
fi
exit $rc
