#!/usr/bin/env bash
# run.sh — issue 5's benchmark in one command: the four workloads, one after another (never
# two at once: on this 2-core machine they would measure each other), each on its own
# throwaway cluster, with session_reaper built in release mode and installed first.
#
#   bash bench/run.sh            # about 90 minutes on 2 cores
#   QUICK=1 bash bench/run.sh    # about 35 minutes: one round of each interference run, 2
#                                # minutes of steady state, 2 flat-out pairs; noisier figures
#   STEPS="realistic_load citus" bash bench/run.sh   # some of the steps only
#   BUSY=0.4 RL_CONTENDERS="none reaper" STEPS=realistic_load bash bench/run.sh
#                                # the realistic load's CPU share (its rate is found to keep
#                                # that share of the machine busy) and contenders
#   SAT_CONTENDERS="none reaper" STEPS=saturation bash bench/run.sh   # saturation's contenders
#   ROUNDS=N STEADY_MINUTES=M bash bench/run.sh   # either set by hand
#
# Writes into OUT_DIR (default bench/latest), each workload's printed output and its plots:
#   backlog.txt, backlog.png            bench/batch_strategies.sh: one DELETE, pg_cron, two
#                                       client loops, session_reaper's defaults and flat out
#   interference.txt, interference_*.png  bench/interference.sh: the same under a pgbench
#                                       session store (ROUNDS rounds, default 3; medians)
#   steady_state.txt, steady_state.png  bench/steady_state.sh: rows expiring at a constant rate
#   idle_and_scale.txt                  bench/idle_and_scale.sh: 1,000 targets, 10 databases
#   realistic_load.txt                  bench/interference.sh with RATE=auto: the store at the
#                                       rate that keeps BUSY (default 0.5) of the CPU busy,
#                                       each contender clearing the backlog
#   saturation.txt                      bench/interference.sh with SAMPLE=1: none, the CPU
#                                       burner, the worker and the worker on a table the app
#                                       never reads, with the app's waits and the WAL
#   flat_out.txt, flat_out_20m.txt      bench/flat_out.sh: flat out against one DELETE, PAIRS
#                                       interleaved pairs (default 5; QUICK: 2) on 2M and 20M rows
#   citus.txt                           bench/citus.sh: a distributed backlog on a 3-node Citus
#                                       cluster (skipped without Citus)
# and run.txt: when each began and ended, the build and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-bench/latest}
if [ -n "${QUICK:-}" ]; then ROUNDS=${ROUNDS:-1} STEADY_MINUTES=${STEADY_MINUTES:-2} PAIRS=${PAIRS:-2}; fi
ROUNDS=${ROUNDS:-3} STEADY_MINUTES=${STEADY_MINUTES:-10} PAIRS=${PAIRS:-5}
STEPS=${STEPS:-backlog interference steady_state idle_and_scale realistic_load saturation flat_out flat_out_20m citus}
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
mkdir -p "$OUT_DIR"

bash scripts/setup.sh
# The plots (bench/plots.py, bench/interference_report.py); the tables print without it.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
echo "== building (release) and installing session_reaper into $("$PG_CONFIG" --bindir)"
cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null

# The build, read before this run writes its own files into the tree.
build="$(git log -1 --format='%h %s' | cut -c1-100)$(git diff --quiet HEAD -- . ":!$OUT_DIR" || echo ' (+ local changes)')"
log=$OUT_DIR/run.txt
{
  echo "bash bench/run.sh${QUICK:+ (QUICK=1)}, ROUNDS=$ROUNDS, steady state $STEADY_MINUTES min"
  echo "build: $build"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo), $("$PG_CONFIG" --version)"
} | tee "$log"

# step NAME COMMAND...: runs one workload (when STEPS names it), its output into
# OUT_DIR/NAME.txt, and logs its times.
step() {
  local name=$1
  shift
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name: $* (from $(date -u '+%F %H:%M') UTC)" | tee -a "$log"
  "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
  echo "   $name done at $(date -u '+%H:%M') UTC" | tee -a "$log"
}

step backlog env PLOT="$OUT_DIR/backlog.png" bash bench/batch_strategies.sh
# The report is in what interference.sh prints; its plots go beside it.
# A fresh OUT: interference.sh keeps the other contenders' lines of an earlier run's rounds.
step interference env ROUNDS="$ROUNDS" REPORT=/dev/null PLOTS="$OUT_DIR" \
  OUT="$(mktemp -d "${SR_TMP:-/tmp}/session_reaper_interference.XXXXXX")" bash bench/interference.sh
step steady_state env PLOT="$OUT_DIR/steady_state.png" bash bench/steady_state.sh "$STEADY_MINUTES"
step idle_and_scale bash bench/idle_and_scale.sh
step realistic_load env RATE=auto BUSY="${BUSY:-0.5}" CONTENDERS="${RL_CONTENDERS:-none cpu:15:75 delete cron loop reaper}" ROUNDS="$ROUNDS" REPORT=/dev/null \
  PLOTS="$(mktemp -d)" OUT="$(mktemp -d "${SR_TMP:-/tmp}/session_reaper_realistic.XXXXXX")" bash bench/interference.sh
step saturation env SAMPLE=1 CONTENDERS="${SAT_CONTENDERS:-none cpu:15:75 reaper other}" ROUNDS="$ROUNDS" REPORT=/dev/null \
  PLOTS="$(mktemp -d)" OUT="$(mktemp -d "${SR_TMP:-/tmp}/session_reaper_saturation.XXXXXX")" bash bench/interference.sh
step flat_out bash bench/flat_out.sh 2000000 "$PAIRS"
step flat_out_20m bash bench/flat_out.sh 20000000 "$PAIRS"
if [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
  step citus bash bench/citus.sh
fi
