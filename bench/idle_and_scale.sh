#!/usr/bin/env bash
# idle_and_scale.sh — what session_reaper costs when there is nothing to do, and how its stats
# scale: TARGETS tables registered in one database plus DATABASES more databases with the
# extension, on one throwaway cluster.
#
#   bash bench/idle_and_scale.sh [TARGETS] [DATABASES] [SECONDS]   # default 1000 10 60
#
# Prints: reaper_stats() latency (pgbench, 200 calls; and pg_stat_user_tables' over the same
# tables, as a yardstick; STATS_ROUNDS rounds, default 5, and their medians), the CPU the
# reaper's processes use over SECONDS when nothing is due (from /proc/<pid>/stat), and one
# reaper_wake() round over every target with nothing to delete (time until all runs are
# recorded).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${1:-1000} DATABASES=${2:-10} SECONDS_IDLE=${3:-60} STATS_ROUNDS=${STATS_ROUNDS:-5}
source scripts/cluster.sh
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_idle}" "${BENCH_PORT:-54342}" \
  "reaper.interval = '1h'" "max_worker_processes = 32"
trap cluster_stop EXIT

echo "== $TARGETS targets in database scale, $DATABASES more databases with the extension"
cluster_psql -q -c "CREATE DATABASE scale"
cluster_psql -q -d scale <<SQL
CREATE EXTENSION session_reaper;
DO \$\$ BEGIN FOR i IN 1..$TARGETS LOOP
  EXECUTE format('CREATE TABLE s%s (id bigint, expires_at timestamptz NOT NULL)', i);
  EXECUTE format('CREATE INDEX ON s%s (expires_at)', i);
  EXECUTE format('INSERT INTO s%s SELECT g, now() + interval ''1 day'' FROM generate_series(1, 10) g', i);
  PERFORM reaper_register(format('s%s', i)::regclass);
END LOOP; END \$\$;
SQL
for d in $(seq 1 "$DATABASES"); do
  cluster_psql -q -c "CREATE DATABASE idle$d"
  cluster_psql -q -d "idle$d" -c "CREATE EXTENSION session_reaper"
done

# Every target runs once when first seen (it has never run); wait for that round to end.
# Polled over one connection (cluster_wait_for): a psql per poll would cost the processes
# measured here their CPU.
runs_sql="SELECT count(*) FROM reaper_history"
cluster_wait_for "($runs_sql) >= $TARGETS" -d scale ||
  { echo "the first round did not finish"; exit 1; }

# Against a yardstick of the same run, since this machine's speed varies from day to day (and
# from minute to minute: the two alternate, STATS_ROUNDS times): the core statistics view over
# the same tables.
echo "== reaper_stats() latency with $TARGETS targets (pgbench, 200 calls, one client), and pg_stat_user_tables' over them, $STATS_ROUNDS rounds"
latency() {
  echo "$1;" > "$CLUSTER_DIR/stats.sql"
  as_pg "$PG_BIN/pgbench" -h "$PGHOST" -p "$PGPORT" -n -c 1 -t 200 -f "$CLUSTER_DIR/stats.sql" scale 2>/dev/null |
    awk '/latency average/ {print $4}'
}
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
stats=() yardstick=()
for round in $(seq 1 "$STATS_ROUNDS"); do
  stats+=("$(latency "SELECT * FROM reaper_stats()")")
  yardstick+=("$(latency "SELECT * FROM pg_stat_user_tables")")
  echo "round $round: reaper_stats() ${stats[-1]} ms, pg_stat_user_tables ${yardstick[-1]} ms"
done
s=$(printf '%s\n' "${stats[@]}" | median) y=$(printf '%s\n' "${yardstick[@]}" | median)
awk -v s="$s" -v y="$y" 'BEGIN {printf "median: reaper_stats() %.3f ms, pg_stat_user_tables %.3f ms, ratio %.2f\n", s, y, s / y}'

echo "== CPU of the reaper's processes over ${SECONDS_IDLE}s with nothing due"
pids=$(cluster_psql -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'session_reaper%'")
ticks() { for p in $pids; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
t0=$(ticks); sleep "$SECONDS_IDLE"; t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "processes: $(echo "$pids" | wc -w) (launcher + $((DATABASES + 1)) database workers)"
awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$SECONDS_IDLE" \
  'BEGIN {printf "cpu: %.3f%% of one core (%d ticks in %d s)\n", 100 * d / hz / s, d, s}'

echo "== one reaper_wake() round over $TARGETS targets with nothing to delete"
before=$(cluster_psql -At -d scale -c "$runs_sql")
start=$(date +%s.%N)
cluster_psql -q -d scale -c "SELECT reaper_wake()" >/dev/null
POLL_EVERY=0.05 cluster_wait_for "($runs_sql) >= $((before + TARGETS))" -d scale
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$TARGETS" \
  'BEGIN {printf "round: %.2f s, %.2f ms per target\n", e - s, 1000 * (e - s) / n}'
