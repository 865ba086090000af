#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests (issue 14): `test-pg.sh start DIR` creates a cluster in DIR
# (Unix socket in DIR, no TCP) and starts it; `test-pg.sh stop DIR` stops it and deletes DIR.
# The conninfo is "host=DIR user=postgres dbname=postgres". Runs the server as the `postgres` user
# when started as root (PostgreSQL refuses to run as root), else as the current user.
# Binaries absent: exits 0 after saying so, unless CI=true (then 1: CI must run these tests).
set -euo pipefail
cmd=${1:?usage: test-pg.sh start|stop DIR}
dir=${2:?usage: test-pg.sh start|stop DIR}
bin=${MPASS_PG_BIN:-}
if [ -z "$bin" ]; then
  for b in /usr/lib/postgresql/*/bin; do [ -x "$b/pg_ctl" ] && bin=$b; done
fi
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
  echo "test-pg.sh: PostgreSQL binaries not found (apt-get install postgresql)" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    if [ -f "$dir/data/postmaster.pid" ]; then "$0" stop "$dir"; fi
    rm -rf "$dir"; mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2; exit 1; }
    # no TCP; socket in DIR; fsync off: a test cluster is thrown away
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses='' -k $dir -c fsync=off -c max_connections=200" start >/dev/null
    echo "test-pg.sh: PostgreSQL running, conninfo: host=$dir user=postgres dbname=postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true; fi
    rm -rf "$dir"
    ;;
  *) echo "usage: test-pg.sh start|stop DIR" >&2; exit 2 ;;
esac
