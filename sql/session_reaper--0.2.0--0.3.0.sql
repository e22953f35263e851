-- session_reaper 0.2.0 -> 0.3.0: targets run when their schedules say, reaper_wake names what
-- it runs, and runs cut short by a shutdown or crash are recorded.
-- Run by ALTER EXTENSION session_reaper UPDATE, after the 0.3.0 library is installed (and the
-- server restarted to load it). Until then the 0.3.0 worker does not reap, and says why.
\echo Use "ALTER EXTENSION session_reaper UPDATE" to load this file. \quit

-- A new run status: 'interrupted', a worker's run cut short by a shutdown or a crash.
ALTER TABLE reaper_state DROP CONSTRAINT reaper_state_last_status_check,
    ADD CONSTRAINT reaper_state_last_status_check
        CHECK (last_status IN ('ok', 'error', 'timeout', 'skipped', 'interrupted'));
ALTER TABLE reaper_run DROP CONSTRAINT reaper_run_status_check,
    ADD CONSTRAINT reaper_run_status_check
        CHECK (status IN ('ok', 'error', 'timeout', 'skipped', 'interrupted'));

-- The worker's run in progress, written with each batch it commits, so a run cut short by a
-- shutdown or crash is recorded ('interrupted') when the worker starts again; and a run asked
-- for by reaper_wake(), cleared by the run that serves it.
ALTER TABLE reaper_state
    ADD COLUMN run_started_at timestamptz,
    ADD COLUMN run_noted_at timestamptz,
    ADD COLUMN run_rows bigint,
    ADD COLUMN run_batches integer,
    ADD COLUMN run_partitions integer,
    ADD COLUMN wake_requested_at timestamptz;

-- A cron target's first run is its first cron time after registration: the next run depends
-- on when the target was registered. A wake request makes a target due now.
CREATE FUNCTION reaper_next_run(schedule text, last_run_at timestamptz, registered_at timestamptz)
RETURNS timestamptz
LANGUAGE c STABLE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_next_run_v3_wrapper';
COMMENT ON FUNCTION reaper_next_run(text, timestamptz, timestamptz)
    IS 'session_reaper: when a target with this schedule (NULL: reaper.interval), registered then, that last ran then runs next';

CREATE OR REPLACE VIEW reaper_target_stats WITH (security_barrier) AS
SELECT t.relid AS target, t.column_name::text AS column_name, t.enabled, t.schedule,
       s.last_run_at, s.last_success_at, s.last_status, s.last_error, s.last_deleted,
       coalesce(s.total_deleted, 0) AS total_deleted, coalesce(s.total_runs, 0) AS total_runs,
       coalesce(s.total_errors, 0) AS total_errors, s.last_duration,
       s.backlog_rows AS dead_rows_estimate, now() - s.oldest_dead_expiry AS oldest_dead_age,
       CASE WHEN NOT t.enabled THEN NULL
            WHEN s.wake_requested_at IS NOT NULL THEN s.wake_requested_at
            ELSE reaper_next_run(t.schedule, s.last_run_at, t.registered_at) END AS next_run_at,
       w.pid AS worker_pid, w.state AS worker_state, w.current_target, s.backlog_at
  FROM reaper_target t
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(t.relid, viewer.oid)
  LEFT JOIN reaper_state s ON s.target_id = t.id
 CROSS JOIN reaper_worker() w
 ORDER BY t.id;

DROP FUNCTION reaper_next_run(text, timestamptz);

-- reaper_wake runs targets now through the worker, with its per-batch commits. A caller may
-- wake only the targets it may manage (the table's owner, a member of the owning role, or a
-- superuser): waking another role's target is refused like purging it.
DROP FUNCTION reaper_wake();
CREATE FUNCTION reaper_wake(target regclass DEFAULT NULL) RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_wake_v3_wrapper';
COMMENT ON FUNCTION reaper_wake(regclass)
    IS 'session_reaper: ask this database''s worker to run this target now (NULL: every enabled target you may manage); returns how many it will run';
