#!/usr/bin/env bash
# sched_probe.sh — where the application's slowest transactions spend their time while a backlog
# is cleared, from the kernel's scheduler events (`perf sched`, Debian's linux-perf).
# The interference.sh set-up (2M rows, half expired, the pgbench session store) runs for 20 s;
# `perf sched` records 4 s before the contender starts and 4 s while it runs. For each window,
# bench/sched_episodes.py splits the app's backends' time into service episodes (a query
# arrives from pgbench ... the backend sleeps awaiting the next) and reports, for the slowest
# 1%, how long they ran, waited for a CPU, and slept on a lock, and who woke them from it; and
# beside it the p99 pgbench saw over the same seconds (the rest is on the client's side).
#
#   bash bench/sched_probe.sh [CONTENDER] [CLIENTS]   # reaper (the defaults) or cpu:B:R; 4
set -euo pipefail
cd "$(dirname "$0")/.."
CONTENDER=${1:-reaper} CLIENTS=${2:-4} ROWS=2000000
[[ $CONTENDER == reaper || $CONTENDER =~ ^cpu:[0-9]+:[0-9]+$ ]] ||
  { echo "unknown contender $CONTENDER: reaper or cpu:BURN_MS:REST_MS" >&2; exit 1; }
command -v perf >/dev/null ||
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }

source scripts/cluster.sh
source bench/sessions.sh
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_sched}" "${BENCH_PORT:-54345}" \
  "${SESSION_STORE_CONF[@]}"
trap cluster_stop EXIT
cluster_psql -q -c "CREATE EXTENSION session_reaper"
cpu_clock_install
burner_calibrate
fill_sessions "$ROWS"
out=$(mktemp -d)
session_store_scripts "$out"

session_store "$out" "$CLIENTS" 20 $((ROWS / 2)) -l --log-prefix="$out/pgbench" >/dev/null 2>&1 &
bench=$!
sleep 3
# Who is who in the scheduler's records: the app's backends, the worker, the other processes.
cluster_psql -At -F ' ' -c "SELECT pid, CASE WHEN application_name = 'pgbench' THEN 'app'
                                            ELSE backend_type END
                              FROM pg_stat_activity" > "$out/pids"
perf sched record -k mono -o "$out/before.data" -- sleep 4 >/dev/null 2>&1
case $CONTENDER in
  reaper) cluster_psql -q -c "SELECT reaper_register('sessions')" >/dev/null ;;
  cpu:*) burn_cpu "$CONTENDER" >/dev/null & ;;
esac
sleep 1
perf sched record -k mono -o "$out/during.data" -- sleep 4 >/dev/null 2>&1
wait "$bench"
wait
echo "$CONTENDER, $CLIENTS clients, $(date -u '+%F %H:%M'):"
cat "$out"/pgbench.* > "$out/pgbench.log"
# The records' clock is CLOCK_MONOTONIC; pgbench logs wall-clock time.
offset=$(python3 -c 'import time; print(time.time() - time.monotonic())')
python3 bench/sched_episodes.py "$out/pids" "$out/pgbench.log" "$offset" "$out/before.data" "$out/during.data"
rm -rf "$out"
