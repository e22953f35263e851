#!/usr/bin/env bash
# steady_state.sh — rows expiring at a constant rate for a long time: does the backlog stay
# bounded, does the table stop growing, and what does the worker cost?
#
#   bash bench/steady_state.sh [MINUTES] [RATE]    # default 10 minutes, 2,000 new sessions/s
#
# pgbench inserts RATE sessions a second (each expiring 30 s later) into a table that starts
# with 200,000 live rows, while session_reaper runs with its defaults and reaper.interval = 10s.
# Every SAMPLE_EVERY seconds (default 2: a fifth of the reaper's interval, so the plot shows
# each run's sawtooth; sampling every 10 s aliased with the runs) it samples the expired rows
# waiting, the table's size and the worker's CPU time; prints the samples and a summary line,
# and draws them (bench/plots.py; PLOT=FILE, default bench/steady_state.png).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10} RATE=${2:-2000} SAMPLE_EVERY=${SAMPLE_EVERY:-2}
source scripts/cluster.sh
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_steady}" "${BENCH_PORT:-54344}" \
  "reaper.interval = '10s'"
trap cluster_stop EXIT
cluster_psql -q <<'SQL'
CREATE EXTENSION session_reaper;
CREATE TABLE sessions (id bigserial PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions (token, expires_at) SELECT md5(g::text), now() + interval '1 day' FROM generate_series(1, 200000) g;
VACUUM ANALYZE sessions;
SELECT reaper_register('sessions');
SQL
script=$(mktemp)
chmod 644 "$script"
echo "INSERT INTO sessions (token, expires_at) VALUES (md5(random()::text), now() + interval '30 seconds');" > "$script"
as_pg "$PG_BIN/pgbench" -h "$PGHOST" -p "$PGPORT" -n -c 2 -j 2 -R "$RATE" -T $((MINUTES * 60)) -f "$script" postgres \
  > "$CLUSTER_DIR/pgbench.out" 2>&1 &
bench=$!

worker=$(cluster_psql -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'")
ticks() { awk '{print $14 + $15}' "/proc/$worker/stat"; }
t0=$(ticks) hz=$(getconf CLK_TCK) started=$(date +%s)
samples=$CLUSTER_DIR/samples.txt
printf "%6s %10s %12s %10s\n" "second" "expired" "table size" "worker cpu" | tee "$samples"
max=0 sum=0 n=0
while kill -0 "$bench" 2>/dev/null; do
  sleep "$SAMPLE_EVERY"
  read -r expired size < <(cluster_psql -At -F ' ' -c "SELECT count(*) FILTER (WHERE expires_at < now()),
                                                          pg_size_pretty(pg_table_size('sessions')) FROM sessions")
  cpu=$(awk -v d=$(($(ticks) - t0)) -v hz="$hz" -v s=$(($(date +%s) - started)) 'BEGIN {printf "%.2f%%", 100 * d / hz / s}')
  printf "%6d %10d %12s %10s\n" $(($(date +%s) - started)) "$expired" "$size" "$cpu" | tee -a "$samples"
  max=$((expired > max ? expired : max)) sum=$((sum + expired)) n=$((n + 1))
done
wait "$bench" || true
echo "summary: $MINUTES min at $RATE inserts/s (each expiring 30 s later), reaper.interval 10s:" \
     "expired rows waiting averaged $((sum / (n > 0 ? n : 1))), peaked at $max; worker cpu $cpu of one core;" \
     "$(cluster_psql -At -c "SELECT count(*) || ' runs, ' || sum(rows) || ' rows reaped' FROM reaper_history")"
python3 bench/plots.py steady "$samples" "${PLOT:-bench/steady_state.png}"
