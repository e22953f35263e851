# sessions.sh — the MEASUREMENTS.md sessions table, for the benchmarks. Sourced after
# scripts/cluster.sh has started a cluster.
#
#   fill_sessions ROWS   # (re)creates `sessions`: ROWS rows, ~256 bytes each, every other one
#                        # expired (even ids) and the rest live for an hour or more (odd ids);
#                        # indexed on expires_at and user_id, analyzed, cached, checkpointed.
#                        # Forgets every session_reaper target and run, so a contender that
#                        # reads the history reads only its own.
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
