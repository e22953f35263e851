# sessions.sh — the MEASUREMENTS.md sessions table and the pgbench session store that runs on
# it, for the benchmarks. Sourced after scripts/cluster.sh; its functions need the cluster started.
#
#   cluster_start DIR PORT "${SESSION_STORE_CONF[@]}" ...   # the settings the store runs under
#   fill_sessions ROWS   # (re)creates `sessions`: ROWS rows, ~256 bytes each, every other one
#                        # expired (even ids) and the rest live for an hour or more (odd ids);
#                        # indexed on expires_at and user_id, analyzed, cached, checkpointed.
#                        # Forgets every session_reaper target and run, so a contender that
#                        # reads the history reads only its own.
#   session_store_scripts DIR                    # writes the store's pgbench scripts into DIR
#   session_store DIR CLIENTS SECONDS LIVE [PGBENCH_ARGS...]
#                        # runs the store: 85% lookups, 10% refreshes, 5% inserts, all on the
#                        # LIVE live rows (odd ids), 2 pgbench threads
#   cpu_clock_install    # creates bench_cpu_seconds(PID): a process's CPU time so far
#   burner_calibrate     # sets BURN_LOOPS_PER_MS: the burner's loop rate, measured before any load
#   burn_cpu cpu:B:R     # a backend that does B ms of CPU work, then sleeps R ms, for 10 s;
#                        # prints the CPU seconds it used
#   pg_cron_install      # pg_cron in the Postgres under test (before cluster_start, with
#                        # pg_cron in shared_preload_libraries and "${PG_CRON_CONF[@]}")
#   cron_delete_once     # pg_cron runs the cron scripts' DELETE once (at the next minute);
#                        # prints "start end rows" (Unix seconds; stamped and counted by the
#                        # job itself)
# The table and its indexes fit in shared_buffers, no checkpoint or autovacuum runs while the
# store does, and the worker runs only when a contender registers a target.
SESSION_STORE_CONF=("shared_buffers = '2GB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'"
  "autovacuum = off" "reaper.interval = '1h'" "reaper.analyze_after = 0")
PG_CRON_CONF=("cron.database_name = 'postgres'" "cron.use_background_workers = on")
pg_cron_install() {
  [ -f "$("$PG_CONFIG" --pkglibdir)/pg_cron.so" ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  dpkg-query -W -f='${Status}' postgresql-15-cron 2>/dev/null | grep -q 'install ok installed' ||
    { "${sudo[@]}" apt-get update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-cron >/dev/null; }
  # A private copy of Postgres (scripts/sandbox.sh) gets the package's files.
  if [ ! -f "$("$PG_CONFIG" --pkglibdir)/pg_cron.so" ]; then
    "${sudo[@]}" cp /usr/lib/postgresql/15/lib/pg_cron.so "$("$PG_CONFIG" --pkglibdir)/"
    "${sudo[@]}" cp /usr/share/postgresql/15/extension/pg_cron* "$("$PG_CONFIG" --sharedir)/extension/"
  fi
}

# The job stamps its own start and end: cron.job_run_details' times come from pg_cron's
# launcher, which looks at its jobs about once a second (under load the same DELETE showed
# exactly 1.00 s there, and 2-3 s in the app's own log). One statement (a DO block): given
# several, pg_cron marks the job done after the first one's result. It counts its own rows:
# counting the expired rows left afterwards read the table and so pruned every page the
# DELETE left, the app's reads' work.
cron_delete_once() {
  cluster_psql -q -c "CREATE TABLE IF NOT EXISTS cron_clock (at timestamptz NOT NULL, rows bigint)" -c "TRUNCATE cron_clock" \
    -c "SELECT cron.schedule('reap', '* * * * *', 'DO \$\$ DECLARE n bigint; BEGIN
          INSERT INTO cron_clock VALUES (clock_timestamp(), 0);
          DELETE FROM sessions WHERE expires_at < now(); GET DIAGNOSTICS n = ROW_COUNT;
          INSERT INTO cron_clock VALUES (clock_timestamp(), n); END \$\$')" >/dev/null
  cluster_wait_for "EXISTS (SELECT FROM cron.job_run_details WHERE status IN ('succeeded', 'failed'))"
  local status
  status=$(cluster_psql -At -c "SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details")
  [ "${status%%:*}" = succeeded ] || { echo "pg_cron's job: $status" >&2; return 1; }
  cluster_psql -At -F ' ' -c "SELECT extract(epoch FROM min(at)), extract(epoch FROM max(at)), max(rows) FROM cron_clock"
  cluster_psql -q -c "SELECT cron.unschedule('reap')" -c "DELETE FROM cron.job_run_details" >/dev/null
}

fill_sessions() {
  cluster_psql -q <<SQL >/dev/null
DROP TABLE IF EXISTS sessions;
DELETE FROM reaper_target;
TRUNCATE reaper_run;
CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id bigint NOT NULL, token text NOT NULL,
                       data jsonb NOT NULL, created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
INSERT INTO sessions (user_id, token, data, created_at, expires_at)
SELECT g % 50000, md5(g::text) || md5((g * 7)::text),
       jsonb_build_object('ua', repeat('x', 60), 'ip', '10.0.0.1', 'n', g),
       now() - interval '2 days',
       CASE WHEN g % 2 = 0 THEN now() - (g % 86400) * interval '1 second'
            ELSE now() + interval '1 hour' + (g % 86400) * interval '1 second' END
  FROM generate_series(1, $1) g;
CREATE INDEX ON sessions (expires_at);
CREATE INDEX ON sessions (user_id);
VACUUM ANALYZE sessions;
SELECT count(*) FROM sessions;  -- warm the cache
CHECKPOINT;
SQL
}

session_store_scripts() {
  chmod 755 "$1"
  [ "$(id -u)" -ne 0 ] || chown postgres "$1"   # pgbench runs as postgres and may log here
  cat > "$1/lookup.sql" <<'PGB'
\set id 2 * random(1, :live) - 1
SELECT token, data FROM sessions WHERE id = :id;
PGB
  cat > "$1/refresh.sql" <<'PGB'
\set id 2 * random(1, :live) - 1
UPDATE sessions SET expires_at = now() + interval '1 hour' WHERE id = :id;
PGB
  cat > "$1/insert.sql" <<'PGB'
\set u random(1, 50000)
INSERT INTO sessions (user_id, token, data, created_at, expires_at)
VALUES (:u, md5(random()::text), '{"ua": "bench"}', now(), now() + interval '1 hour');
PGB
}

session_store() {
  local dir=$1 clients=$2 seconds=$3 live=$4
  shift 4
  as_pg "$PG_BIN/pgbench" -h "$PGHOST" -p "$PGPORT" -n -c "$clients" -j 2 -T "$seconds" -D live="$live" "$@" \
    -f "$dir/lookup.sql@85" -f "$dir/refresh.sql@10" -f "$dir/insert.sql@5" postgres
}

# The burner does a fixed amount of work per cycle, as a reaper batch does: a loop bounded by
# the clock instead (burn until B ms have passed) got only 0.10 of a core when the worker's
# batches took 0.15, since under load it spends much of its B ms waiting for a CPU. Its loop
# rate is measured here, on the idle cluster, so that B is milliseconds of CPU.
burner_calibrate() {
  local out
  out=$(cluster_psql -q -c "DO \$\$
    DECLARE t0 timestamptz := clock_timestamp();
    BEGIN
      FOR i IN 1..2000000 LOOP END LOOP;
      RAISE NOTICE 'loops per ms %', round(2000 / extract(epoch FROM clock_timestamp() - t0));
    END \$\$" 2>&1) || { echo "burner_calibrate: $out" >&2; return 1; }
  BURN_LOOPS_PER_MS=$(sed -n 's/.*loops per ms \([0-9]*\).*/\1/p' <<< "$out")
  [ -n "$BURN_LOOPS_PER_MS" ] || { echo "burner_calibrate: no rate in: $out" >&2; return 1; }
}
# The server reads a process's CPU time: /proc/PID/stat's utime + stime (a superuser may).
cpu_clock_install() {
  cluster_psql -q -c "CREATE OR REPLACE FUNCTION bench_cpu_seconds(pid int DEFAULT pg_backend_pid())
    RETURNS numeric LANGUAGE sql AS \$\$SELECT sum(t::bigint) / $(getconf CLK_TCK)::numeric
      FROM unnest((string_to_array(split_part(pg_read_file(format('/proc/%s/stat', pid)), ') ', 2),
                                   ' '))[12:13]) t\$\$"
}
# In a backend, so in the server's scheduling group, where the worker's CPU time is: with
# autogroup (kernel.sched_autogroup_enabled) Linux shares the CPU between sessions first, and every
# Postgres process is a session of its own. It reads its own CPU time (cpu_clock_install).
burn_cpu() {
  local burn rest out
  IFS=: read -r _ burn rest <<< "$1"
  [[ $burn =~ ^[0-9]+$ && $rest =~ ^[0-9]+$ ]] || { echo "bad contender $1: cpu:BURN_MS:REST_MS" >&2; exit 1; }
  : "${BURN_LOOPS_PER_MS:?call burner_calibrate before the load starts}"
  out=$(cluster_psql -q 2>&1 <<SQL
DO \$\$
DECLARE stop timestamptz := clock_timestamp() + interval '10 s';
        cpu0 numeric := bench_cpu_seconds();
BEGIN
  WHILE clock_timestamp() < stop LOOP
    FOR i IN 1..$((burn * BURN_LOOPS_PER_MS)) LOOP END LOOP;
    PERFORM pg_sleep($rest / 1000.0);
  END LOOP;
  RAISE NOTICE 'cpu seconds %', round(bench_cpu_seconds() - cpu0, 2);
END \$\$;
SQL
) || { echo "burn_cpu: $out" >&2; return 1; }
  sed -n 's/.*cpu seconds \([0-9.]*\).*/\1/p' <<< "$out"
}
