#!/usr/bin/env bash
# drop_partitions.sh — dead rows held in whole partitions: session_reaper's drop_partitions
# action against the same table reaped row by row (action delete), on one throwaway cluster.
#
#   bash bench/drop_partitions.sh [ROWS]     # default 10,000,000 dead rows in 10 daily partitions
#
# Each table is RANGE-partitioned by day on expires_at: 10 past days hold ROWS dead rows between
# them; today's partition holds 10,000 dead and 10,000 live rows. Both are reaped by
# reaper_purge (one call, the caller's transaction), timed by clock_timestamp().
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
source scripts/cluster.sh
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_partitions}" "${BENCH_PORT:-54341}" \
  "shared_buffers = '2GB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'" "autovacuum = off" \
  "reaper.enabled = off"
trap cluster_stop EXIT
cluster_psql -q -c "CREATE EXTENSION session_reaper"

fill() {
  cluster_psql -q <<SQL
CREATE TABLE $1 (id bigint, token text NOT NULL, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at);
DO \$\$ BEGIN FOR d IN -10..1 LOOP
  EXECUTE format('CREATE TABLE %I PARTITION OF $1 FOR VALUES FROM (%L) TO (%L)', '$1_' || (d + 10),
                 date_trunc('day', now()) + d * interval '1 day', date_trunc('day', now()) + (d + 1) * interval '1 day');
END LOOP; END \$\$;
INSERT INTO $1 SELECT g, md5(g::text), date_trunc('day', now()) - interval '10 days' + (g % 864000) * interval '1 second'
  FROM generate_series(1, $ROWS) g;
INSERT INTO $1 SELECT g, md5(g::text), now() - interval '1 hour' + (g % 2) * interval '2 hours'
  FROM generate_series(1, 20000) g;
CREATE INDEX ON $1 (expires_at);
VACUUM ANALYZE $1;
SQL
}

echo "== filling two tables of $ROWS dead rows in 10 daily partitions (+ 20,000 rows today)"
fill by_partition
fill by_row
cluster_psql -q -c "CHECKPOINT" \
  -c "SELECT reaper_register('by_partition', action => 'drop_partitions')" \
  -c "SELECT reaper_register('by_row', batch_size => 10000)" >/dev/null

measure() {
  cluster_psql -At -F ' ' <<SQL
SELECT clock_timestamp() AS t0, pg_current_wal_insert_lsn() AS l0 \gset
SELECT rows_deleted, partitions_dropped FROM reaper_purge('$1');
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz)::numeric, 3),
       pg_size_pretty(pg_current_wal_insert_lsn() - :'l0'::pg_lsn),
       (SELECT count(*) FROM $1 WHERE expires_at >= now()) AS live_left;
SQL
}
echo "== drop_partitions (rows deleted, partitions dropped / seconds, WAL, live rows left)"
measure by_partition
echo "== row by row, batches of 10,000 (rows deleted, partitions dropped / seconds, WAL, live rows left)"
measure by_row
