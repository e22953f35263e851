-- A dry run, a purge and the stats, as psql shows them.
CREATE EXTENSION IF NOT EXISTS session_reaper;
CREATE TABLE user_sessions (id bigserial PRIMARY KEY, token text, expires_at timestamptz NOT NULL);
INSERT INTO user_sessions (token, expires_at)
SELECT 'expired-' || g, now() - g * interval '1 minute' FROM generate_series(1, 1000) g;
INSERT INTO user_sessions (token, expires_at)
SELECT 'live-' || g, now() + g * interval '1 minute' FROM generate_series(1, 500) g;
SELECT reaper_register('user_sessions', batch_size => 300);

\x on
SELECT target, column_name, would_delete, expired_lt_1h, expired_1h_6h, expired_6h_24h, expired_gt_24h,
       statement, uses_index, index_advice
  FROM reaper_dry_run('user_sessions');
\x off
SELECT count(*) AS still_there FROM user_sessions;

SELECT target, rows_deleted, batches, status, error FROM reaper_purge('user_sessions');
SELECT count(*) FILTER (WHERE token LIKE 'live-%') AS live, count(*) FILTER (WHERE token LIKE 'expired-%') AS expired
  FROM user_sessions;

SELECT target, column_name, enabled, last_status, last_deleted, total_deleted, total_runs, total_errors,
       last_run_at IS NOT NULL AS has_run, oldest_dead_age
  FROM reaper_stats();
SELECT target, trigger, rows, batches, status FROM reaper_history;
-- reaper_stats() also works as a plain function call.
SELECT count(*) FROM (SELECT reaper_stats()) s;
