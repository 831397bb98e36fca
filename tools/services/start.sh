#!/usr/bin/env bash
# Starts the throwaway services that the cluster tests (crates/ember-cli/tests/cluster.rs) need, all under DIR:
# a PostgreSQL cluster (data in DIR/pg, listening on 127.0.0.1 at a free port with scram-sha-256 password auth for
# TCP, its unix socket in DIR with trust auth) and moto's S3-compatible server (a venv in DIR/venv, pid in
# DIR/moto.pid) with the bucket `ember-test`. Writes DIR/env, `export` lines for the tests:
#   source DIR/env && cargo test --workspace --test cluster -- --ignored --test-threads=1
# tools/services/stop.sh DIR stops both (also after a start that failed halfway). As root (CI), PostgreSQL runs as
# the user `postgres` (created if missing), since initdb and postgres refuse to run as root.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
dir="$(cd "$1" && pwd)"

moto_version=5.1.18
pg_user_name=ember
pg_password=ember-test
bucket=ember-test

# On failure: show the services' logs and stop what did start.
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "start.sh: failed (exit $rc); logs under $dir:" >&2
    for log in "$dir/pg.log" "$dir/moto.log"; do
      if [ -f "$log" ]; then
        echo "--- $log" >&2
        tail -n 40 "$log" >&2 || true
      fi
    done
    bash "$here/stop.sh" "$dir" || true
  fi
}
trap on_exit EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- PostgreSQL -----------------------------------------------------------------------------------------------
# Debian's server binaries are not on PATH (/usr/lib/postgresql/VERSION/bin); prefer an initdb that is, else the
# newest version there, else install Debian's server package (root only).
find_pg_bin() {
  if command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return
    fi
  done
}
pg_bin="$(find_pg_bin)"
if [ -z "$pg_bin" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: no PostgreSQL server (initdb) found; install Debian's postgresql package" >&2
    exit 1
  fi
  echo "start.sh: installing PostgreSQL" >&2
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null
  pg_bin="$(find_pg_bin)"
  if [ -z "$pg_bin" ]; then
    echo "start.sh: PostgreSQL installed but no initdb under /usr/lib/postgresql/*/bin" >&2
    exit 1
  fi
fi

# As root, run the server as an unprivileged user that owns DIR (root keeps access anyway).
run_pg=()
pg_run_user=""
if [ "$(id -u)" -eq 0 ]; then
  pg_run_user=postgres
  if ! id -u "$pg_run_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_run_user"
  fi
  chown "$pg_run_user" "$dir"
  run_pg=(runuser -u "$pg_run_user" --)
  if ! "${run_pg[@]}" test -w "$dir"; then
    echo "start.sh: $dir is not writable by the user $pg_run_user (is a parent folder closed to it?)" >&2
    exit 1
  fi
fi
# What stop.sh needs to know.
{
  printf 'pg_bin=%q\n' "$pg_bin"
  printf 'pg_run_user=%q\n' "$pg_run_user"
} >"$dir/services.conf"

pwfile="$dir/pg.pw"
printf '%s\n' "$pg_password" >"$pwfile"
if [ -n "$pg_run_user" ]; then chown "$pg_run_user" "$pwfile"; fi
"${run_pg[@]}" "$pg_bin/initdb" -D "$dir/pg" -U "$pg_user_name" --pwfile="$pwfile" --auth-local=trust \
  --auth-host=scram-sha-256 -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
  cat "$dir/initdb.log" >&2
  exit 1
}
rm -f "$pwfile"
cat >>"$dir/pg/postgresql.conf" <<CONF

# tools/services/start.sh: a throwaway test server.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
password_encryption = 'scram-sha-256'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF

# A free port can be taken between the check and the start: try a few.
pg_port=""
for _ in 1 2 3 4 5; do
  port="$(free_port)"
  if "${run_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -o "-p $port" -w -t 60 start >/dev/null; then
    pg_port=$port
    break
  fi
done
if [ -z "$pg_port" ]; then
  echo "start.sh: PostgreSQL did not start" >&2
  exit 1
fi
echo "$pg_port" >"$dir/pg.port"
# The scram password is checked over TCP, as the tests connect.
if command -v psql >/dev/null 2>&1; then
  PGPASSWORD="$pg_password" psql -X -q -w -h 127.0.0.1 -p "$pg_port" -U "$pg_user_name" -d postgres \
    -c 'select 1' >/dev/null
fi
echo "start.sh: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port" >&2

# --- S3 (moto) ------------------------------------------------------------------------------------------------
# Debian's python3 needs python3-venv for ensurepip.
if ! python3 -m venv "$dir/venv" >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: python3 -m venv failed; install python3-venv" >&2
    exit 1
  fi
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null
  rm -rf "$dir/venv"
  python3 -m venv "$dir/venv"
fi
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "moto[server]==$moto_version"

s3_port=""
for _ in 1 2 3 4 5; do
  port="$(free_port)"
  # Its own session and no inherited descriptors: the caller's pipes close when the caller is done.
  setsid "$dir/venv/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
      s3_port=$port
      break
    fi
    if ! kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  if [ -n "$s3_port" ]; then break; fi
  kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
  rm -f "$dir/moto.pid"
done
if [ -z "$s3_port" ]; then
  echo "start.sh: moto_server did not answer" >&2
  exit 1
fi
echo "$s3_port" >"$dir/s3.port"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$dir/venv/bin/python" - "http://127.0.0.1:$s3_port" "$bucket" <<'PY'
import sys
import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
s3.create_bucket(Bucket=bucket)
assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
PY
echo "start.sh: S3 (moto $moto_version) on 127.0.0.1:$s3_port, bucket $bucket" >&2

cat >"$dir/env" <<ENV
export EMBER_TEST_POSTGRES=postgres://$pg_user_name:$pg_password@127.0.0.1:$pg_port/postgres
export EMBER_TEST_S3_BUCKET=$bucket
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
ENV
echo "start.sh: services up; source $dir/env" >&2
