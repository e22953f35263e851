#!/usr/bin/env bash
# interference.sh — what each way of clearing a backlog does to the application's traffic.
# A pgbench session-store workload (4 clients: 85% lookups, 10% refreshes, 5% inserts, all on
# live rows) runs for DURATION seconds on the MEASUREMENTS.md sessions table (ROWS rows, half
# expired); START seconds in, one contender starts clearing the expired half. Prints, per
# contender, the clearing time and rate, and the foreground's tps and p50/p99/max latency
# before and during the clearing, each against the same run's "before" and the no-cleanup
# baseline, the CPU the worker or the burner used, and how many WAL records the app's lookups
# wrote per 1,000 lookups (a read writes WAL only when it prunes a page that a delete or an
# update left dead row versions on); draws per-second plots (bench/interference_report.py).
#
#   bash bench/interference.sh [ROWS] [DURATION]          # default 2,000,000 rows, 40 s
#   CONTENDERS="none reaper" bash bench/interference.sh   # a subset
#   ROUNDS=3 bash bench/interference.sh                   # every contender 3 times, in turn;
#                                                         # the report adds the medians
#   EXTRA_CONF="full_page_writes = off" bash bench/interference.sh   # one more postgresql.conf
#                                                         # line, for an A/B of a setting
#   RATE=auto bash bench/interference.sh                  # a realistic load: the store at the
#                                                         # fixed rate (pgbench --rate) that keeps
#                                                         # BUSY (default 0.5) of the machine's CPU
#                                                         # busy (found first, in 10 s probes), or
#                                                         # RATE=N tps; latencies then count the
#                                                         # schedule lag, and the report adds the
#                                                         # rate held and the machine's busy share
#   SAMPLE=1 bash bench/interference.sh                   # evidence for the cost beyond CPU:
#                                                         # the app's wait events, sampled every
#                                                         # 10 ms during each clearing, and the
#                                                         # WAL each run wrote (records, full-page
#                                                         # images, writes, syncs and their time)
#   PHASES=1 bash bench/interference.sh                   # the worker logs its batches and
#                                                         # prunes (DEBUG1); the report adds where
#                                                         # the app's slowest 1% fell against them
#                                                         # (bench/batch_phases.py)
#
# Contenders: none (baseline), delete (one DELETE from psql, as cron scripts do), cron (the same
# DELETE run by pg_cron, Debian's postgresql-15-cron), loop (ctid batches of 10,000 with FOR
# UPDATE SKIP LOCKED, a commit each, as careful apps write), reaper (session_reaper's worker
# with its defaults), reaper_fast (batch_delay 0, batch_size 40000), reaper:N:D (batch_size N,
# batch_delay D ms), cpu:B:R (no database work at all: a backend that does B ms of CPU work, then
# sleeps R ms, for 10 s, to tell what the CPU time alone costs the foreground on this machine;
# cpu:15:75 takes 0.12-0.16 of a core here, about what the worker takes),
# reaper_nice (the defaults with the worker's autogroup at nice 19; needs root),
# other (reaper's defaults on a copy of the table the app never reads: its work without
# touching the app's pages), scan (the pages of reaper's batches read at its pace, nothing
# deleted).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000} DURATION=${2:-40} START=10 ROUNDS=${ROUNDS:-1} CLIENTS=${CLIENTS:-4}
CONTENDERS=${CONTENDERS:-none delete cron loop reaper reaper_fast}
OUT=${OUT:-${SR_TMP:-/tmp}/session_reaper_interference}
mkdir -p "$OUT"
source scripts/cluster.sh
source bench/sessions.sh
pg_cron_install
cluster_start "${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench_interference}" "${BENCH_PORT:-54343}" \
  "shared_preload_libraries = 'session_reaper,pg_cron,pg_stat_statements'" "${PG_CRON_CONF[@]}" \
  "${SESSION_STORE_CONF[@]}" ${EXTRA_CONF:+"$EXTRA_CONF"} ${PHASES:+"log_min_messages = debug1"} ${PHASES:+"log_timezone = 'UTC'"} \
  ${SAMPLE:+"track_wal_io_timing = on"}
trap cluster_stop EXIT
cluster_psql -q -c "CREATE EXTENSION session_reaper" -c "CREATE EXTENSION pg_cron" \
  -c "CREATE EXTENSION pg_stat_statements"
cpu_clock_install
burner_calibrate
if [ -n "${SAMPLE:-}" ]; then
  # A sample is what each of the app's active backends waits on (CPU: nothing); a commit per
  # sample, so the sampler holds no snapshot back from pruning.
  cluster_psql -q <<'SQL'
CREATE UNLOGGED TABLE bench_waits (round int, contender text, at timestamptz, wait text);
CREATE UNLOGGED TABLE bench_windows (round int, contender text, started timestamptz, ended timestamptz);
CREATE UNLOGGED TABLE bench_wal (round int, contender text, records bigint, fpi bigint, bytes numeric,
                                 writes bigint, syncs bigint, write_ms float8, sync_ms float8);
CREATE PROCEDURE bench_sample(r int, c text, seconds int) LANGUAGE plpgsql AS $$
DECLARE stop timestamptz := clock_timestamp() + seconds * interval '1 second';
BEGIN
  WHILE clock_timestamp() < stop LOOP
    INSERT INTO bench_waits SELECT r, c, clock_timestamp(), coalesce(wait_event_type || ':' || wait_event, 'CPU')
      FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active';
    COMMIT;
    PERFORM pg_stat_clear_snapshot();
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
CREATE VIEW bench_wal_now AS SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync, wal_write_time, wal_sync_time FROM pg_stat_wal;
SQL
fi


# The foreground: live rows have odd ids.
scripts=$(mktemp -d)
session_store_scripts "$scripts"
# busy_ticks: the machine's CPU ticks so far, "busy total" (/proc/stat: idle and iowait are
# not busy).
busy_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
# busy_at RATE: the machine's busy share while the store runs 10 s at RATE tps.
busy_at() {
  local b0 t0 b1 t1
  read -r b0 t0 < <(busy_ticks)
  session_store "$scripts" "$CLIENTS" 10 $((ROWS / 2)) --rate="$1" >/dev/null 2>&1
  read -r b1 t1 < <(busy_ticks)
  awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.3f", b / t}'
}
# RATE=auto: the rate that keeps BUSY of the machine busy, found from the flat-out tps by
# scaling the rate by the busy share it gave (busy time grows about in proportion to it).
if [ "${RATE:-}" = auto ]; then
  BUSY=${BUSY:-0.5}
  fill_sessions "$ROWS"
  flat=$(session_store "$scripts" "$CLIENTS" 15 $((ROWS / 2)) 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  RATE=$(awk -v t="$flat" -v s="$BUSY" 'BEGIN {printf "%d", t * s * 0.6}')
  for probe in 1 2 3 4; do
    busy=$(busy_at "$RATE")
    echo "probe $probe: $RATE tps kept $busy of the machine busy"
    [ "$probe" -eq 4 ] || RATE=$(awk -v r="$RATE" -v b="$busy" -v s="$BUSY" 'BEGIN {printf "%d", r * s / b}')
  done
  echo "the store flat out: $flat tps; it runs at $RATE tps, which kept $busy of the machine busy (asked: $BUSY)"
fi
export RATE

now_s() { date +%s.%N; }
# WAL records the foreground's lookups wrote since the last pg_stat_statements_reset().
lookup_wal() {
  cluster_psql -At -c "SELECT coalesce(sum(wal_records), 0) FROM pg_stat_statements
                        WHERE query LIKE 'SELECT token, data FROM sessions%'"
}
worker_pid_sql="SELECT pid FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'"
# The CPU seconds this database's worker has used so far.
worker_cpu() {
  local cpu
  cpu=$(cluster_psql -At -c "SELECT bench_cpu_seconds(pid) FROM ($worker_pid_sql) w")
  [ -n "$cpu" ] || { echo "worker_cpu: no session_reaper worker" >&2; return 1; }
  echo "$cpu"
}
# first_reaping_run SQL: runs the SQL that registers the target, waits for the worker's first
# run that deleted rows; prints "start end rows cpu", cpu being the CPU seconds the worker used
# from the registration to the end of that run.
first_reaping_run() {
  local cpu0
  cpu0=$(worker_cpu)
  cluster_psql -q -c "$1" >/dev/null
  cluster_wait_for "EXISTS (SELECT FROM reaper_history WHERE rows > 0)"
  cluster_psql -At -F ' ' -c "SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at), rows
                               FROM reaper_history WHERE rows > 0" | tr '\n' ' '
  echo "$(worker_cpu) $cpu0" | awk '{printf "%.2f\n", $1 - $2}'
}
dead() { cluster_psql -At -c "SELECT count(*) FROM sessions WHERE expires_at < now()"; }

# clear CONTENDER: clears the expired rows; prints "start end rows cpu" (Unix seconds; cpu: the
# CPU seconds of the worker or the burner, - for the others).
clear() {
  local start rows cpu
  case $1 in
    none) start=$(now_s); echo "$start $start 0 -" ;;
    delete)
      start=$(now_s)
      rows=$(cluster_psql -At -c "WITH d AS (DELETE FROM sessions WHERE expires_at < now() RETURNING 1) SELECT count(*) FROM d")
      echo "$start $(now_s) $rows -" ;;
    cron)
      # A command substitution would hide a failed wait from set -e.
      read -r start end rows < <(cron_delete_once)
      [ -n "$rows" ] || return 1
      echo "$start $end $rows -" ;;
    loop)
      # One session, as an app's loop keeps its connection; a commit per batch.
      start=$(now_s)
      rows=$(cluster_psql -q -c "DO \$\$
        DECLARE n bigint; total bigint := 0;
        BEGIN
          LOOP
            WITH d AS (DELETE FROM sessions WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM sessions WHERE expires_at < now() LIMIT 10000 FOR UPDATE SKIP LOCKED)) RETURNING 1)
              SELECT count(*) INTO n FROM d;
            total := total + n;
            COMMIT;
            EXIT WHEN n < 10000;
          END LOOP;
          RAISE NOTICE 'deleted %', total;
        END \$\$" 2>&1 | sed -n 's/.*deleted \([0-9]*\).*/\1/p')
      echo "$start $(now_s) ${rows:-0} -" ;;
    cpu:*)
      start=$(now_s)
      cpu=$(burn_cpu "$1")
      echo "$start $(now_s) 0 $cpu" ;;
    other)
      # The reaper's defaults on a copy of the table that the app never reads.
      first_reaping_run "SELECT reaper_register('other')" ;;
    scan)
      # The pages of the reaper's batches read at its pace, nothing deleted: 700 pages (about
      # 10,000 dead rows here) every 90 ms.
      start=$(now_s)
      cluster_psql -q <<'SQL'
DO $$
DECLARE first int := 0; pages int := (SELECT relpages FROM pg_class WHERE relname = 'sessions');
BEGIN
  WHILE first < pages LOOP
    PERFORM count(*) FROM sessions
      WHERE ctid >= format('(%s,0)', first)::tid AND ctid < format('(%s,0)', first + 700)::tid;
    first := first + 700;
    PERFORM pg_sleep(0.09);
  END LOOP;
END $$;
SQL
      echo "$start $(now_s) 0 -" ;;
    reaper_nice)
      # The defaults with the worker's scheduling group (Linux autogroup: each Postgres process
      # is a session of its own) at nice 19 for the run: does a smaller CPU share help the app?
      local worker
      worker=$(cluster_psql -At -c "$worker_pid_sql")
      echo 19 > "/proc/$worker/autogroup"
      first_reaping_run "SELECT reaper_register('sessions')"
      echo 0 > "/proc/$worker/autogroup" ;;
    reaper*)
      # reaper: the defaults; reaper:N:D: batch_size N and batch_delay D ms; reaper_fast: 40000:0.
      local spec=${1#reaper}
      [ "$1" = reaper_fast ] && spec=:40000:0
      if [ -n "$spec" ]; then
        IFS=: read -r _ size delay <<< "$spec"
        cluster_psql -q -c "ALTER SYSTEM SET reaper.batch_delay = $delay" -c "SELECT pg_reload_conf()" >/dev/null
        first_reaping_run "SELECT reaper_register('sessions', batch_size => $size)"
      else
        first_reaping_run "SELECT reaper_register('sessions')"
      fi
      cluster_psql -q -c "ALTER SYSTEM RESET reaper.batch_delay" -c "SELECT pg_reload_conf()" >/dev/null
      ;;
  esac
}

# Each round in its own directory; in a round, one line per contender (running some contenders
# again replaces their lines only).
for round in $(seq 1 "$ROUNDS"); do
  dir=$OUT/round$round
  mkdir -p "$dir"
  # A directory of a run before the cpu column (2026-12-01 16:25) starts afresh.
  head -1 "$dir/clearing.tsv" 2>/dev/null | grep -q 'cpu$' || rm -f "$dir/clearing.tsv"
  head -1 "$dir/clearing.tsv" 2>/dev/null | grep -q 'busy$' || rm -f "$dir/clearing.tsv"
  [ -f "$dir/clearing.tsv" ] || echo -e "contender\tstart\tend\trows\tbegan\tlookup_wal\tcpu\tbusy" > "$dir/clearing.tsv"
  for contender in $CONTENDERS; do
    echo "== round $round: $contender"
    fill_sessions "$ROWS"
    if [ "$contender" = other ]; then
      cluster_psql -q -c "DROP TABLE IF EXISTS other" -c "CREATE TABLE other AS SELECT * FROM sessions" \
        -c "CREATE INDEX ON other (expires_at)" -c "VACUUM ANALYZE other" -c "CHECKPOINT" >/dev/null
    fi
    cluster_psql -q -c "SELECT pg_stat_statements_reset()" >/dev/null
    rm -f "$scripts"/pgb_"$contender".*
    if [ "$contender" = cron ]; then
      # pg_cron fires on the minute: begin the workload START seconds before the next one.
      sleep $(( (120 - 10#$(date +%S) - START) % 60 ))
    fi
    if [ -n "${SAMPLE:-}" ]; then
      cluster_psql -q -c "DROP TABLE IF EXISTS wal_mark" -c "CREATE TABLE wal_mark AS SELECT * FROM bench_wal_now" >/dev/null
      cluster_psql -q -c "CALL bench_sample($round, '$contender', $DURATION)" >/dev/null &
      sampler=$!
    fi
    read -r busy0 total0 < <(busy_ticks)
    session_store "$scripts" "$CLIENTS" "$DURATION" $((ROWS / 2)) ${RATE:+--rate=$RATE} -l \
      --log-prefix="$scripts/pgb_$contender" >/dev/null 2>&1 &
    bench=$!
    began=$(now_s)
    [ "$contender" = cron ] || sleep "$START"
    read -r start end rows cpu < <(clear "$contender")
    wait "$bench"
    read -r busy1 total1 < <(busy_ticks)
    if [ -n "${SAMPLE:-}" ]; then
      wait "$sampler"
      cluster_psql -q -c "INSERT INTO bench_windows VALUES ($round, '$contender', to_timestamp($start), to_timestamp(greatest($end, $start + 1)))" \
        -c "INSERT INTO bench_wal SELECT $round, '$contender', n.wal_records - m.wal_records, n.wal_fpi - m.wal_fpi,
              n.wal_bytes - m.wal_bytes, n.wal_write - m.wal_write, n.wal_sync - m.wal_sync,
              n.wal_write_time - m.wal_write_time, n.wal_sync_time - m.wal_sync_time FROM bench_wal_now n, wal_mark m" >/dev/null
    fi
    busy=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) 'BEGIN {printf "%.2f", b / t}')
    cat "$scripts"/pgb_"$contender".* > "$dir/pgbench_$contender.log"
    grep -v "^$contender	" "$dir/clearing.tsv" > "$dir/clearing.tmp" || true
    echo -e "$contender\t$start\t$end\t$rows\t$began\t$(lookup_wal)\t$cpu\t$busy" >> "$dir/clearing.tmp"
    mv "$dir/clearing.tmp" "$dir/clearing.tsv"
    left=$(dead)
    case $contender in none | cpu:* | other | scan) ;; *) [ "$left" -lt 1000 ] || echo "   ($left expired rows left)" ;; esac
  done
done

REPORT=${REPORT:-$OUT/report.txt}
python3 bench/interference_report.py "$OUT" "$DURATION" "$ROUNDS" "$CLIENTS" | tee "$REPORT"
cp "$OUT"/interference_*.png "${PLOTS:-$(dirname "$REPORT")}/" 2>/dev/null || true

# SAMPLE=1: where the app's transactions waited while each contender cleared (share of the
# samples of its active backends, over all rounds), and the WAL of each whole run (medians).
if [ -n "${SAMPLE:-}" ]; then
  {
    echo -e "\nThe app's active backends during the clearing: share of samples per wait (CPU: none), all rounds"
    cluster_psql -P footer=off -c "
      SELECT * FROM (
        SELECT w.contender, w.wait, round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY w.contender), 1) AS pct
          FROM bench_waits w JOIN bench_windows x USING (round, contender)
         WHERE w.at BETWEEN x.started AND x.ended
         GROUP BY 1, 2) s
       WHERE pct >= 1 ORDER BY 1, 3 DESC"
    echo "The WAL of each whole run (store and clearing), median over the rounds"
    cluster_psql -P footer=off -c "
      SELECT contender, percentile_cont(0.5) WITHIN GROUP (ORDER BY records)::bigint AS records,
             percentile_cont(0.5) WITHIN GROUP (ORDER BY fpi)::bigint AS full_page_images,
             pg_size_pretty(percentile_cont(0.5) WITHIN GROUP (ORDER BY bytes)::numeric) AS bytes,
             percentile_cont(0.5) WITHIN GROUP (ORDER BY writes)::bigint AS writes,
             percentile_cont(0.5) WITHIN GROUP (ORDER BY syncs)::bigint AS syncs,
             round(percentile_cont(0.5) WITHIN GROUP (ORDER BY write_ms)::numeric) AS write_ms,
             round(percentile_cont(0.5) WITHIN GROUP (ORDER BY sync_ms)::numeric) AS sync_ms
        FROM bench_wal GROUP BY 1 ORDER BY 1"
  } | tee -a "$REPORT"
fi

# PHASES=1: the worker logged each batch and prune at DEBUG1; line the app's transactions up
# against them, per reaping contender and round.
if [ -n "${PHASES:-}" ]; then
  for tsv in "$OUT"/round*/clearing.tsv; do
    while IFS=$'\t' read -r contender start end _; do
      case $contender in reaper* | other) ;; *) continue ;; esac
      echo -e "\n$(basename "$(dirname "$tsv")") $contender: the app's transactions against the worker's steps"
      python3 bench/batch_phases.py "$CLUSTER_DIR/server.log" "$(dirname "$tsv")/pgbench_$contender.log" \
        "$start" "$end" || echo "(not lined up: a round of an earlier run?)"
    done < <(tail -n +2 "$tsv")
  done | tee -a "$REPORT"
fi
