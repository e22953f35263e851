# cluster.sh — start and stop a throwaway Postgres cluster (that of $PG_CONFIG, default Debian's
# 15) for the demo and the tests.
# Sourced, not run. The cluster has its own data directory, port and socket directory, runs as
# the `postgres` user when we are root (initdb refuses root), and loads session_reaper.
#
#   source scripts/cluster.sh
#   cluster_start /tmp/some_dir 54329 [extra postgresql.conf lines...]
#   cluster_psql -c 'SELECT 1'
#   cluster_stop

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)

# as_pg runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

# cluster_start DIR PORT [CONF_LINE...] creates DIR (data in DIR/data, socket in DIR) and starts it.
cluster_start() {
  CLUSTER_DIR=$1 CLUSTER_PORT=$2
  shift 2
  rm -rf "$CLUSTER_DIR"
  mkdir -p "$CLUSTER_DIR"
  chmod 755 "$CLUSTER_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$CLUSTER_DIR"
  as_pg "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres -A trust --no-sync >"$CLUSTER_DIR/initdb.log" 2>&1 ||
    { cat "$CLUSTER_DIR/initdb.log"; return 1; }
  {
    echo "port = $CLUSTER_PORT"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$CLUSTER_DIR'"
    echo "shared_preload_libraries = 'session_reaper'"
    echo "fsync = off"
    for line in "$@"; do echo "$line"; done
  } | as_pg tee -a "$CLUSTER_DIR/data/postgresql.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start >/dev/null ||
    { cat "$CLUSTER_DIR/server.log"; return 1; }
  export PGHOST=$CLUSTER_DIR PGPORT=$CLUSTER_PORT PGUSER=postgres PGDATABASE=postgres
}

# cluster_psql runs psql against the cluster, stopping at the first error.
cluster_psql() {
  "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 "$@"
}

# cluster_wait_for CONDITION [PSQL_ARG...] waits until the SQL condition holds, polling every
# POLL_EVERY seconds (default 0.2) for at most POLL_FOR seconds (default 600), over one
# connection. Not a psql per poll: a new connection costs about 55 ms of CPU on a small
# machine, so 4-5 polls a second took a fifth of a core from the app a benchmark measures
# (found with a per-process CPU sampler, 2026-12-01). Not a loop inside one statement either:
# its snapshot would hold back the pruning of the rows being deleted.
cluster_wait_for() {
  local condition=$1 answer='' deadline to from pid
  shift
  deadline=$(($(date +%s) + ${POLL_FOR:-600}))
  coproc POLL { cluster_psql -At "$@" 2>&1; }
  # Copies: bash unsets POLL when psql exits (an error ends it, under ON_ERROR_STOP).
  to=${POLL[1]} from=${POLL[0]} pid=$POLL_PID
  # Polls while the answer is false; an error's text, a psql gone or one silent for a minute
  # ends the wait as the deadline does.
  while [ "$(date +%s)" -lt "$deadline" ] && echo "SELECT ($condition);" >&"$to" 2>/dev/null &&
    read -r -t 60 answer <&"$from" && [ "$answer" = f ]; do
    sleep "${POLL_EVERY:-0.2}"
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ "$answer" = t ] || { echo "cluster_wait_for: $condition: ${answer:-no answer}" >&2; return 1; }
}

# cluster_stop stops the cluster; the directory stays for its log.
cluster_stop() {
  [ -n "${CLUSTER_DIR:-}" ] && [ -f "$CLUSTER_DIR/data/postmaster.pid" ] &&
    as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null
  return 0
}
