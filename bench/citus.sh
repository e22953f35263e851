#!/usr/bin/env bash
# citus.sh — clearing a distributed backlog on a Citus cluster: a coordinator and two worker
# nodes on this machine (Citus built by scripts/setup.sh). The same rows, ROWS (half expired)
# in `sessions` distributed by user_id over SHARDS shards, cleared by each contender in turn:
#
#   reaper:N:D   session_reaper on each node, batch_size N, batch_delay D ms (10000:75 is the
#                defaults; reaper:10000:0 flat out)
#   single       one DELETE … WHERE expires_at < now() on the coordinator, which Citus pushes
#                down to every shard in parallel: one distributed transaction
#   client       a client loop through the coordinator: primary-key batches of 10,000, a commit
#                each (no ctid: a ctid means nothing outside its shard)
#   local:N:D    for comparison, session_reaper on one plain table holding one worker node's
#                share of the rows (ROWS / 2, half expired) on the coordinator: one node's rate
#
# For each contender and node it prints rows removed, rows/s (over the time that node was at
# work), WAL written, the longest transaction, and the CPU seconds the node's processes used
# (postmaster and its children, exited ones included): on one machine the nodes share its cores.
#
#   bash bench/citus.sh [ROWS]            # default 2,000,000 rows
#   CONTENDERS="reaper:10000:0 single" SHARDS=32 bash bench/citus.sh 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
SHARDS=${SHARDS:-32}
CONTENDERS=${CONTENDERS:-local:10000:0 reaper:10000:0 single client local:10000:75 reaper:10000:75}
source scripts/cluster.sh
[ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] || { echo "citus.sh: Citus is not installed: run scripts/setup.sh" >&2; exit 1; }
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null

ROOT=${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_citus}
PORTS=(54350 54351 54352)
NAMES=(coordinator worker1 worker2)
# on NODE_INDEX CMD...: runs CMD with psql's environment pointing at that node.
on() {
  local i=$1
  shift
  PGHOST=$ROOT/${NAMES[$i]} PGPORT=${PORTS[$i]} "$@"
}
stop_all() {
  for i in 0 1 2; do
    CLUSTER_DIR=$ROOT/${NAMES[$i]} cluster_stop
  done
}
trap stop_all EXIT
for i in 0 1 2; do
  cluster_start "$ROOT/${NAMES[$i]}" "${PORTS[$i]}" "shared_preload_libraries = 'citus,session_reaper'" \
    "citus.local_hostname = '$ROOT/${NAMES[$i]}'" "shared_buffers = '1GB'" "max_wal_size = '8GB'" \
    "checkpoint_timeout = '30min'" "autovacuum = off" "reaper.interval = '1h'" "reaper.analyze_after = 0"
  on "$i" cluster_psql -q -c "CREATE EXTENSION citus"
done
on 0 cluster_psql -q <<SQL >/dev/null
SELECT citus_set_coordinator_host('$ROOT/coordinator', ${PORTS[0]});
SELECT citus_add_node('$ROOT/worker1', ${PORTS[1]});
SELECT citus_add_node('$ROOT/worker2', ${PORTS[2]});
CREATE EXTENSION session_reaper;
CREATE TABLE results (contender text, node text, rows bigint, seconds float8, wal_bytes numeric,
                      longest_ms float8, cpu_s float8);
CREATE PROCEDURE run_batches(stmt text, batch int, OUT rows bigint, OUT longest_ms float8) LANGUAGE plpgsql AS \$\$
DECLARE n bigint; t0 timestamptz;
BEGIN
  rows := 0; longest_ms := 0;
  LOOP
    t0 := clock_timestamp();
    EXECUTE stmt;
    GET DIAGNOSTICS n = ROW_COUNT;
    COMMIT;
    longest_ms := greatest(longest_ms, extract(epoch FROM clock_timestamp() - t0) * 1000);
    rows := rows + n;
    EXIT WHEN n < batch;
  END LOOP;
END \$\$;
SQL

# The sessions table of bench/sessions.sh: ~256 bytes a row, every other row expired.
table_sql() {
  cat <<SQL
CREATE TABLE $1 (id bigserial, user_id bigint NOT NULL, token text NOT NULL, data jsonb NOT NULL,
                 created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL, PRIMARY KEY (user_id, id));
CREATE INDEX ON $1 (expires_at);
SQL
}
rows_sql() {
  cat <<SQL
INSERT INTO $1 (user_id, token, data, created_at, expires_at)
SELECT g % 50000, md5(g::text) || md5((g * 7)::text), jsonb_build_object('ua', repeat('x', 60), 'ip', '10.0.0.1', 'n', g),
       now() - interval '2 days',
       CASE WHEN g % 2 = 0 THEN now() - (g % 86400) * interval '1 second'
            ELSE now() + interval '1 hour' + (g % 86400) * interval '1 second' END
  FROM generate_series(1, $2) g;
SQL
}

# fill: the distributed table (or, for local:*, the plain one) afresh, no target or run left on
# any node, everything vacuumed, cached and checkpointed.
fill() {
  on 0 cluster_psql -q -c "DROP TABLE IF EXISTS sessions, sessions_local" >/dev/null
  for i in 0 1 2; do on "$i" cluster_psql -q -c "DELETE FROM reaper_target" -c "TRUNCATE reaper_run" >/dev/null; done
  if [ "$1" = local ]; then
    { table_sql sessions_local; rows_sql sessions_local $((ROWS / 2)); echo "VACUUM ANALYZE sessions_local;"; } |
      on 0 cluster_psql -q >/dev/null
  else
    { echo "SET citus.shard_count = $SHARDS;"; table_sql sessions
      echo "SELECT create_distributed_table('sessions', 'user_id');"; rows_sql sessions "$ROWS"
      echo "VACUUM ANALYZE sessions; SELECT count(*) FROM sessions;"; } | on 0 cluster_psql -q >/dev/null
  fi
  for i in 0 1 2; do on "$i" cluster_psql -q -c "CHECKPOINT"; done
}

# cpu NODE_INDEX: CPU seconds the node's processes used so far (the postmaster, its children,
# and the children it has reaped).
cpu() {
  local pid ticks
  pid=$(head -n1 "$ROOT/${NAMES[$1]}/data/postmaster.pid")
  ticks=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
  for child in $(pgrep -P "$pid"); do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || echo 0)))
  done
  echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}
declare -A CPU0 WAL0
mark() {
  for i in 0 1 2; do
    CPU0[$i]=$(cpu "$i")
    WAL0[$i]=$(on "$i" cluster_psql -qAt -c "SELECT pg_current_wal_insert_lsn()")
  done
}
# record CONTENDER NODE_INDEX ROWS SECONDS LONGEST_MS: a result row, with the node's WAL and CPU
# since the mark.
record() {
  local wal cpu_s
  wal=$(on "$2" cluster_psql -qAt -c "SELECT pg_current_wal_insert_lsn() - '${WAL0[$2]}'")
  cpu_s=$(echo "$(cpu "$2") - ${CPU0[$2]}" | bc)
  on 0 cluster_psql -q -c "INSERT INTO results VALUES ('$1', '${NAMES[$2]}', $3, $4, $wal, $5, $cpu_s)"
}

# dead_per_node: each worker node's expired rows of `sessions`, by its shard placements.
declare -A DEAD
dead_per_node() {
  for i in 1 2; do
    DEAD[$i]=$(on 0 cluster_psql -qAt -c "SELECT count(*) FROM sessions s
       WHERE expires_at < now() AND get_shard_id_for_distribution_column('sessions', s.user_id) IN
             (SELECT shardid FROM pg_dist_shard_placement WHERE nodeport = ${PORTS[$i]})")
  done
}

# reaper_on CONTENDER TABLE NODES...: registers TABLE on the coordinator (batch_delay set
# before) and waits until each node's runs removed its dead rows (DEAD), then records them.
reaper_on() {
  local contender=$1 table=$2
  shift 2
  mark
  on 0 cluster_psql -q -c "SELECT reaper_register('$table', batch_size => $size)" >/dev/null
  for i in "$@"; do
    on "$i" cluster_wait_for "(SELECT coalesce(sum(rows), 0) FROM reaper_run) >= ${DEAD[$i]}"
  done
  for i in "$@"; do
    read -r rows seconds longest < <(on "$i" cluster_psql -qAt -F ' ' -c "
      SELECT sum(rows), extract(epoch FROM max(finished_at) - min(started_at)),
             extract(epoch FROM max(longest_batch)) * 1000 FROM reaper_run WHERE rows > 0")
    record "$contender" "$i" "$rows" "$seconds" "$longest"
  done
}

# through_coordinator CONTENDER STATEMENT BATCH: runs the statement on the coordinator until it
# removes fewer than BATCH rows, a commit each, and records each worker node's share of the rows
# over the whole time, with the longest statement as its longest transaction.
through_coordinator() {
  local started seconds rows ms
  mark
  started=$(date +%s.%N)
  read -r rows ms < <(on 0 cluster_psql -qAt -F ' ' -c "CALL run_batches(\$\$$2\$\$, $3, NULL, NULL)")
  seconds=$(echo "$(date +%s.%N) - $started" | bc)
  for i in 1 2; do record "$1" "$i" "${DEAD[$i]}" "$seconds" "$ms"; done
}

for contender in $CONTENDERS; do
  IFS=: read -r kind size delay <<<"$contender"
  table=sessions
  if [ "$kind" = local ]; then
    table=sessions_local
    fill local
    DEAD[0]=$(on 0 cluster_psql -qAt -c "SELECT count(*) FROM sessions_local WHERE expires_at < now()")
  else
    fill distributed
    dead_per_node
  fi
  for i in 0 1 2; do
    on "$i" cluster_psql -q -c "ALTER SYSTEM SET reaper.batch_delay = ${delay:-0}" -c "SELECT pg_reload_conf()" >/dev/null
  done
  case $kind in
    reaper) reaper_on "$contender" sessions 1 2 ;;
    local) reaper_on "$contender" sessions_local 0 ;;
    single) through_coordinator single "DELETE FROM sessions WHERE expires_at < now()" 2147483647 ;;
    client) through_coordinator client "DELETE FROM sessions WHERE (user_id, id) IN
      (SELECT user_id, id FROM sessions WHERE expires_at < now() LIMIT 10000)" 10000 ;;
  esac
  left=$(on 0 cluster_psql -qAt -c "SELECT count(*) FROM $table WHERE expires_at < now() - interval '1 minute'")
  [ "$left" -eq 0 ] || { echo "$contender left $left expired rows" >&2; exit 1; }
done

echo
echo "Clearing $((ROWS / 2)) expired of $ROWS rows over $SHARDS shards on 2 Citus worker nodes (coordinator + 2 workers on $(nproc) cores), $("$PG_CONFIG" --version):"
echo "(single and client: each node's share of the rows over the whole statement or loop; local: one plain table with one node's share, on the coordinator)"
on 0 cluster_psql -P footer=off -c "
  SELECT contender, node, rows, round(seconds::numeric, 2) AS seconds, round((rows / nullif(seconds, 0))::numeric) AS rows_per_s,
         pg_size_pretty(wal_bytes) AS wal, round(longest_ms::numeric, 1) AS longest_txn_ms, cpu_s
    FROM results ORDER BY contender, node"
