#!/usr/bin/env bash
# majors.sh — the backlog workload on two PostgreSQL majors side by side: one big DELETE, the
# worker with its defaults (batch_size 10,000, batch_delay 75 ms) and flat out, on the same
# table and machine, one major after the other. PostgreSQL 18's asynchronous I/O may change
# what a DELETE and a batch cost; this shows it.
#
#   bash bench/majors.sh [ROWS]                  # default 2,000,000 rows, half expired; 15 and 18
#   MAJORS="15 17" bash bench/majors.sh 500000
#
# Each major gets a release build of session_reaper installed into it (scripts/setup.sh fetches
# the majors other than 15), then bench/batch_strategies.sh with STRATEGIES as below.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
MAJORS=${MAJORS:-15 18}
export STRATEGIES=${STRATEGIES:-single reaper:10000:75 reaper:10000}
PG_MAJORS="$MAJORS" bash scripts/setup.sh
source scripts/majors.sh
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
out=$(mktemp -d)
for major in $MAJORS; do
  pg_config=$(pg_config_of "$major")
  echo "== PostgreSQL $major: release build and install"
  cargo pgrx install --release --pg-config "$pg_config" "${sudo_flag[@]}" >/dev/null
  echo "== PostgreSQL $major: backlog of $ROWS rows ($STRATEGIES)"
  PG_CONFIG=$pg_config PLOT="$out/backlog_$major.png" bash bench/batch_strategies.sh "$ROWS" |
    tee "$out/$major.txt"
done
echo
echo "== side by side (each major's figures relative to its own single DELETE)"
for major in $MAJORS; do
  sed -n '/^Batch strategies/,$p' "$out/$major.txt"
done
