#!/usr/bin/env bash
# batch_strategies.sh — the backlog workload: how fast, and at what cost, does each way of
# clearing a backlog go? On one throwaway cluster and the same data: one big DELETE (what cron
# scripts do), pg_cron running it, two client-side batch loops (a commit per batch) and
# session_reaper's own worker, throttled by its defaults and flat out. Prints rows/s, WAL and
# the longest transaction, each relative to the single DELETE, and the table's size after (and
# after VACUUM); draws them (bench/plots.py, PLOT=FILE, default bench/backlog.png).
#
#   bash bench/batch_strategies.sh [ROWS]      # default 2,000,000 rows, half expired
#   STRATEGIES="single reaper:10000 reaper:40000" bash bench/batch_strategies.sh   # a subset
#
# Strategies: single (one DELETE), cron (that DELETE as a pg_cron job; it waits for the next
# minute), skip_locked (ctid batches of 10,000 + FOR UPDATE SKIP LOCKED), pk_cte (primary-key
# CTE batches + SKIP LOCKED), reaper:N (the worker, batch_size N, batch_delay 0: flat out),
# reaper:N:D (batch_size N, batch_delay D ms; reaper:10000:75 is the defaults).
# The table is the one MEASUREMENTS.md describes: sessions(id, user_id, token, data jsonb,
# created_at, expires_at), ~256 bytes a row, indexed on expires_at and user_id, in cache.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
source scripts/cluster.sh
source bench/sessions.sh
STRATEGIES=${STRATEGIES:-single cron skip_locked pk_cte reaper:10000:75 reaper:10000 reaper:30000}
# pg_cron only when its strategy runs.
cron_conf=("shared_preload_libraries = 'session_reaper'")
if [[ " $STRATEGIES " == *" cron "* ]]; then
  pg_cron_install
  cron_conf=("shared_preload_libraries = 'session_reaper,pg_cron'" "${PG_CRON_CONF[@]}")
fi
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench}" "${BENCH_PORT:-54340}" "${cron_conf[@]}" \
  "shared_buffers = '2GB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'" "autovacuum = off" \
  "reaper.interval = '1h'" "reaper.batch_delay = 0" "reaper.analyze_after = 0" \
  ${BATCH_LOG:+"log_min_messages = debug1"}
trap cluster_stop EXIT

cluster_psql -q <<'SQL'
CREATE EXTENSION session_reaper;
CREATE TABLE results (strategy text, rows bigint, batches int, seconds float8, wal_bytes numeric, longest_ms float8,
                      table_after bigint, indexes_after bigint, table_vacuumed bigint, indexes_vacuumed bigint);
-- run_batches executes one batch statement until it deletes fewer rows than a full batch,
-- committing after each, and records rows, batches and the longest batch.
CREATE PROCEDURE run_batches(strategy text, stmt text, batch int) LANGUAGE plpgsql AS $$
DECLARE n bigint; total bigint := 0; batches int := 0; t0 timestamptz; longest float8 := 0;
        started timestamptz := clock_timestamp(); lsn pg_lsn := pg_current_wal_insert_lsn();
BEGIN
  LOOP
    t0 := clock_timestamp();
    EXECUTE stmt;
    GET DIAGNOSTICS n = ROW_COUNT;
    COMMIT;
    longest := greatest(longest, extract(epoch FROM clock_timestamp() - t0) * 1000);
    total := total + n; batches := batches + 1;
    EXIT WHEN n < batch;
  END LOOP;
  INSERT INTO results VALUES (strategy, total, batches, extract(epoch FROM clock_timestamp() - started),
                              pg_current_wal_insert_lsn() - lsn, longest);
END $$;
SQL


[ "${#cron_conf[@]}" -eq 1 ] || cluster_psql -q -c "CREATE EXTENSION pg_cron"
single="DELETE FROM sessions WHERE expires_at < now()"
skip_locked="DELETE FROM sessions WHERE ctid = ANY (ARRAY(SELECT ctid FROM sessions WHERE expires_at < now() LIMIT 10000 FOR UPDATE SKIP LOCKED))"
pk_cte="WITH b AS (SELECT id FROM sessions WHERE expires_at < now() LIMIT 10000 FOR UPDATE SKIP LOCKED) DELETE FROM sessions s USING b WHERE s.id = b.id"

# wal_mark notes the WAL position; wal_since prints the SQL for the WAL written since.
wal_mark() {
  cluster_psql -q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS mark" -c "CREATE TABLE mark AS SELECT pg_current_wal_insert_lsn() AS lsn"
}
wal_since="pg_current_wal_insert_lsn() - (SELECT lsn FROM mark)"

# With WAIT_SAMPLES set, sample_waits NAME CONDITION samples the wait event of the processes
# of pg_stat_activity that CONDITION picks every 10 ms into $CLUSTER_DIR/waits.tsv (NAME,
# time, wait; CPU when it waits for nothing), over one connection: where the time that is
# neither on a CPU nor waiting for one goes. It costs a few percent of a core, so the
# figures of a sampled run are not the headline ones.
sample_waits() {
  [ -n "${WAIT_SAMPLES:-}" ] || return 0
  echo "SELECT '$1', to_char(clock_timestamp() AT TIME ZONE current_setting('log_timezone'), 'HH24:MI:SS.MS'),
               coalesce(wait_event_type || ':' || wait_event, 'CPU')
          FROM pg_stat_activity WHERE $2
        \\watch 0.01" | "$PG_BIN/psql" -X -At -F $'\t' >> "$CLUSTER_DIR/waits.tsv" 2>/dev/null &
  SAMPLER=$!
}
stop_sampling() {
  [ -z "${SAMPLER:-}" ] || { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }
  SAMPLER=
}

# reaper_run N D lets session_reaper's worker clear the backlog (registering wakes it) with
# batch_size N and batch_delay D ms, and records its run from the history, which has the run's
# longest batch (= longest transaction). Waited for over one connection (cluster_wait_for): a
# psql per poll would take the worker's CPU.
reaper_run() {
  local name="reaper batch $1"
  [ "$2" -eq 0 ] || name="reaper batch $1, pause $2 ms"
  cluster_psql -q -c "ALTER SYSTEM SET reaper.batch_delay = $2" -c "SELECT pg_reload_conf()" >/dev/null
  wal_mark
  # The worker while it reaps: idle, it waits on its latch (Extension).
  sample_waits "$name" "backend_type = 'session_reaper worker' AND wait_event IS DISTINCT FROM 'Extension'"
  cluster_psql -q -c "SELECT reaper_register('sessions', batch_size => $1)" >/dev/null
  cluster_wait_for "EXISTS (SELECT FROM reaper_history WHERE trigger = 'worker' AND rows > 0)" ||
    { echo "the worker did not finish within 10 minutes" >&2; exit 1; }
  stop_sampling
  cluster_psql -q -c "INSERT INTO results SELECT '$name', rows, batches, extract(epoch FROM duration),
      $wal_since, extract(epoch FROM longest_batch) * 1000
    FROM reaper_history WHERE trigger = 'worker' AND rows > 0" \
    -c "ALTER SYSTEM RESET reaper.batch_delay" -c "SELECT pg_reload_conf()" >/dev/null
}

# cron_run lets pg_cron run the DELETE once; its job is one transaction, so its time is the
# longest transaction. The WAL includes the job's two time stamps and pg_cron's own rows.
cron_run() {
  local start end rows
  wal_mark
  read -r start end rows < <(cron_delete_once)
  [ -n "$rows" ] || exit 1
  cluster_psql -q -c "INSERT INTO results VALUES ('pg_cron', $rows, 1, $end - $start, $wal_since, ($end - $start) * 1000)"
}

for strategy in $STRATEGIES; do
  fill_sessions "$ROWS"
  case $strategy in
    single)
      sample_waits single "query LIKE 'CALL run_batches%' AND state = 'active'"
      cluster_psql -q -c "CALL run_batches('single', \$\$$single\$\$, 2147483647)"
      stop_sampling ;;
    skip_locked) cluster_psql -q -c "CALL run_batches('skip_locked', \$\$$skip_locked\$\$, 10000)" ;;
    pk_cte) cluster_psql -q -c "CALL run_batches('pk_cte', \$\$$pk_cte\$\$, 10000)" ;;
    cron) cron_run ;;
    reaper:*)
      IFS=: read -r _ size delay <<< "$strategy"
      reaper_run "$size" "${delay:-0}" ;;
  esac
  left=$(cluster_psql -qAt -c "SELECT count(*) FROM sessions WHERE expires_at < now() - interval '1 minute'")
  [ "$left" -eq 0 ] || { echo "$strategy left $left expired rows" >&2; exit 1; }
  # What the table and its indexes weigh right after, and after a plain VACUUM.
  cluster_psql -q -c "UPDATE results SET table_after = pg_table_size('sessions'), indexes_after = pg_indexes_size('sessions')
                       WHERE table_after IS NULL" -c "VACUUM sessions" \
    -c "UPDATE results SET table_vacuumed = pg_table_size('sessions'), indexes_vacuumed = pg_indexes_size('sessions')
         WHERE table_vacuumed IS NULL"
done

echo
echo "Batch strategies on $ROWS rows ($((ROWS / 2)) expired), $("$PG_CONFIG" --version), cached:"
cluster_psql -P footer=off <<'SQL'
SELECT r.strategy, r.rows, r.batches, round((r.rows / r.seconds)::numeric) AS rows_per_s,
       round(((r.rows / r.seconds) / (s.rows / s.seconds))::numeric, 2) AS rows_per_s_vs_delete,
       pg_size_pretty(r.wal_bytes) AS wal, round(r.wal_bytes / s.wal_bytes, 2) AS wal_vs_delete,
       round(r.longest_ms::numeric, 1) AS longest_txn_ms,
       pg_size_pretty(r.table_after) || ' + ' || pg_size_pretty(r.indexes_after) AS size_after,
       pg_size_pretty(r.table_vacuumed) || ' + ' || pg_size_pretty(r.indexes_vacuumed) AS after_vacuum
  FROM results r, results s WHERE s.strategy = 'single' ORDER BY r.strategy <> 'single', r.strategy;
SQL

# The plot: the same figures as bars (bench/plots.py; skipped without matplotlib).
cluster_psql -At -F $'\t' -c "SELECT strategy, rows, seconds, wal_bytes, longest_ms FROM results" > "$CLUSTER_DIR/backlog.tsv"
python3 bench/plots.py backlog "$CLUSTER_DIR/backlog.tsv" "${PLOT:-bench/backlog.png}"
