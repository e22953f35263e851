#!/usr/bin/env bash
# demo.sh — session_reaper on a throwaway cluster: builds and installs the extension, starts a
# Postgres 15 with it preloaded, fills a sessions table with expired and live rows, and shows
# the dry run, a purge and reaper_stats(). Stops the cluster at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
echo "== building and installing session_reaper"
cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config "${sudo_flag[@]}" >/dev/null

source scripts/cluster.sh
cluster_start "${DEMO_DIR:-/tmp/session_reaper_demo}" "${DEMO_PORT:-54330}"
trap cluster_stop EXIT
echo "== cluster up: psql -h $PGHOST -p $PGPORT -U postgres"

cluster_psql --echo-queries <<'SQL'
CREATE EXTENSION session_reaper;
CREATE TABLE sessions (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,
    token      text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ON sessions (expires_at);
-- 30,000 sessions that expired over the last 30 hours, 20,000 that are still live.
INSERT INTO sessions (user_id, token, expires_at)
SELECT g % 1000, md5(g::text), now() - g * interval '3.6 seconds' FROM generate_series(1, 30000) g;
INSERT INTO sessions (user_id, token, expires_at)
SELECT g % 1000, md5(g::text), now() + g * interval '3.6 seconds' FROM generate_series(1, 20000) g;
ANALYZE sessions;

SELECT reaper_register('public.sessions', 'expires_at');
\x on
SELECT * FROM reaper_dry_run('public.sessions');
\x off
SELECT count(*) FILTER (WHERE expires_at < now()) AS expired, count(*) AS total FROM sessions;
SELECT * FROM reaper_purge('public.sessions');
SELECT count(*) FILTER (WHERE expires_at < now()) AS expired, count(*) AS total FROM sessions;
\x on
SELECT * FROM reaper_stats();
SQL
echo "== the server log's line for that run:"
grep 'session_reaper:' "$CLUSTER_DIR/server.log" | sed 's/^/   /'
