#!/usr/bin/env bash
# demo.sh — session_reaper on a throwaway cluster: builds and installs the extension, starts a
# Postgres (15 by default; `PG_MAJOR=18 bash scripts/demo.sh` for another major) with it preloaded, fills a sessions table with expired, soon-to-expire and live
# rows, and lets the background worker empty the expired ones after
# `ALTER SYSTEM SET reaper.interval = '2s'` and a reload. Shows the dry run, reaper_stats(),
# the run history and the worker's log lines, then stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR=${PG_MAJOR:-15}
PG_MAJORS=$PG_MAJOR bash scripts/setup.sh
source scripts/majors.sh
PG_CONFIG=$(pg_config_of "$PG_MAJOR")
export PG_CONFIG

sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
echo "== building and installing session_reaper"
cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null

source scripts/cluster.sh
cluster_start "${DEMO_DIR:-${SR_TMP:-/tmp}/session_reaper_demo}" "${DEMO_PORT:-54330}"
trap cluster_stop EXIT
echo "== cluster up: psql -h $PGHOST -p $PGPORT -U postgres"

expired() { cluster_psql -qAt -c "SELECT count(*) FROM sessions WHERE expires_at < now()"; }

cluster_psql --echo-queries <<'SQL'
CREATE EXTENSION session_reaper;
CREATE TABLE sessions (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,
    token      text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ON sessions (expires_at);
-- 30,000 sessions that expired over the last 30 hours, 2,000 that expire within the next
-- 10 seconds, and 18,000 live ones.
INSERT INTO sessions (user_id, token, expires_at)
SELECT g % 1000, md5(g::text), now() - g * interval '3.6 seconds' FROM generate_series(1, 30000) g;
INSERT INTO sessions (user_id, token, expires_at)
SELECT g % 1000, md5(g::text), now() + g * interval '5 milliseconds' FROM generate_series(1, 2000) g;
INSERT INTO sessions (user_id, token, expires_at)
SELECT g % 1000, md5(g::text), now() + interval '1 day' FROM generate_series(1, 18000) g;
ANALYZE sessions;

-- Register it switched off first, to look before anything is deleted.
SELECT reaper_register('public.sessions', 'expires_at', enabled => false);
\x on
SELECT * FROM reaper_dry_run('public.sessions');
\x off

ALTER SYSTEM SET reaper.interval = '2s';
SELECT pg_reload_conf();
SELECT reaper_enable('public.sessions', true);
SQL

echo "== waiting for the worker (no purge is called)"
for _ in $(seq 1 300); do
  [ "$(expired)" -eq 0 ] && break
  sleep 0.1
done
[ "$(expired)" -eq 0 ] || { echo "the worker did not empty the expired rows" >&2; exit 1; }
# Let the rows that expire during the next few seconds go too, run by run.
sleep 12

cluster_psql --echo-queries <<'SQL'
SELECT count(*) FILTER (WHERE expires_at < now()) AS expired, count(*) AS total FROM sessions;
\x on
SELECT * FROM reaper_stats();
\x off
SELECT trigger, rows, batches, status, duration FROM reaper_history WHERE rows > 0 ORDER BY started_at;
SQL
echo "== the worker's lines in the server log:"
grep 'session_reaper:' "$CLUSTER_DIR/server.log" | sed 's/^/   /'
