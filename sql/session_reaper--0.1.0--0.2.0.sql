-- session_reaper 0.1.0 -> 0.2.0: the archive, update and drop_partitions actions.
-- Run by ALTER EXTENSION session_reaper UPDATE, after the 0.2.0 library is installed (and the
-- server restarted to load it). Until then the 0.2.0 worker does not reap, and says why.
\echo Use "ALTER EXTENSION session_reaper UPDATE" to load this file. \quit

-- A target's archive table and SET list; each belongs to its action only.
ALTER TABLE reaper_target
    ADD COLUMN archive_table regclass,
    ADD COLUMN update_set text,
    ADD CONSTRAINT reaper_target_archive_table_check CHECK ((action = 'archive') = (archive_table IS NOT NULL)),
    ADD CONSTRAINT reaper_target_update_set_check CHECK ((action = 'update') = (update_set IS NOT NULL));

ALTER TABLE reaper_run ADD COLUMN partitions_dropped integer NOT NULL DEFAULT 0;

-- What the last run left behind, kept so that reaper_stats() plans nothing per target, and
-- when the last successful run started, for "seconds since the last success" alerts.
ALTER TABLE reaper_state
    ADD COLUMN backlog_rows bigint,
    ADD COLUMN oldest_dead_expiry timestamptz,
    ADD COLUMN backlog_at timestamptz,
    ADD COLUMN last_success_at timestamptz;
UPDATE reaper_state SET last_success_at = last_run_at WHERE last_status = 'ok';

COMMENT ON SEQUENCE reaper_target_id_seq IS 'session_reaper: target ids (reaper_register returns them)';

-- reaper_can_see says whether a role may see targets of this table: it may read it (owners and
-- members of the owning role can), or, for a table that no longer exists, it is a superuser
-- (only superusers may read pg_authid). Every name is schema-qualified, and there is no operator
-- and no table (so no temporary one of a caller's can stand in for a catalog), so the function
-- needs no pinned search_path; without a SET clause Postgres inlines
-- it, which keeps reaper_stats() fast with thousands of targets (measured for 1,000: 0.4 ms
-- inlined, 11 ms as a function call with SET search_path). The views pass the viewer as a
-- joined row: a subquery as the argument, used twice in the body, would stop the inlining.
CREATE OR REPLACE FUNCTION reaper_can_see(target oid, viewer oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(pg_catalog.has_table_privilege(viewer, target, 'SELECT'),
                    pg_catalog.has_table_privilege(viewer, 'pg_catalog.pg_authid', 'SELECT'))
$$;
COMMENT ON FUNCTION reaper_can_see(oid, oid) IS 'session_reaper: whether a role may see targets of this table';

CREATE OR REPLACE VIEW reaper_targets WITH (security_barrier) AS
SELECT t.id, t.relid AS target, t.column_name, t.timezone, t.grace, t.ttl, t.predicate,
       t.batch_size, t.schedule, t.action, t.enabled, t.registered_at, t.updated_at,
       t.archive_table, t.update_set
  FROM reaper_target t
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(t.relid, viewer.oid);

CREATE OR REPLACE VIEW reaper_history WITH (security_barrier) AS
SELECT h.run_id, h.relid AS target, h.trigger, h.started_at, h.finished_at,
              h.finished_at - h.started_at AS duration, h.rows, h.batches, h.longest_batch, h.status, h.error,
              h.partitions_dropped
  FROM reaper_run h
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(h.relid, viewer.oid);

-- New parameters and result columns: the functions are replaced.
DROP FUNCTION reaper_register(regclass, name, text, interval, interval, text, integer, text, text, boolean);
CREATE FUNCTION reaper_register(
    target     regclass,
    "column"   name     DEFAULT 'expires_at',
    timezone   text     DEFAULT NULL,
    grace      interval DEFAULT '0',
    ttl        interval DEFAULT NULL,
    predicate  text     DEFAULT NULL,
    batch_size integer  DEFAULT NULL,
    schedule   text     DEFAULT NULL,
    action     text     DEFAULT 'delete',
    enabled    boolean  DEFAULT true,
    archive_table regclass DEFAULT NULL,
    update_set text     DEFAULT NULL
) RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_register_v2_wrapper';
COMMENT ON FUNCTION reaper_register(regclass, name, text, interval, interval, text, integer, text, text, boolean, regclass, text)
    IS 'session_reaper: reap this table''s expired rows (registering again replaces the rule); returns the target id';

DROP FUNCTION reaper_purge(regclass, bigint);
CREATE FUNCTION reaper_purge(target regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (target regclass, rows_deleted bigint, batches integer, duration interval,
               status text, error text, partitions_dropped integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_purge_v2_wrapper';
COMMENT ON FUNCTION reaper_purge(regclass, bigint)
    IS 'session_reaper: delete expired rows now, in this transaction (NULL: every enabled target you own)';

DROP FUNCTION reaper_dry_run(regclass);
CREATE FUNCTION reaper_dry_run(target regclass DEFAULT NULL)
RETURNS TABLE (target regclass, column_name text, timezone text, would_delete bigint,
               oldest_expiry timestamptz, oldest_dead_age interval,
               expired_lt_1h bigint, expired_1h_6h bigint, expired_6h_24h bigint, expired_gt_24h bigint,
               statement text, uses_index boolean, index_advice text,
               action text, partitions_to_drop text[])
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_dry_run_v2_wrapper';
COMMENT ON FUNCTION reaper_dry_run(regclass)
    IS 'session_reaper: what a reap would delete, move, update or drop now, and the SQL it would run; changes nothing';

DROP FUNCTION reaper_stats();
-- reaper_stats() is one query over the registry, planned and run by Postgres itself (measured
-- for 1,000 targets: 0.93x pg_stat_user_tables over as many tables; the Rust function it
-- replaced copied every row out through SPI and formed it again: 1.51x). The view reads the
-- registry as its owner, filtered by what the caller may see; the viewer is a joined row, not
-- a subquery argument, so Postgres inlines reaper_can_see. Two small Rust functions supply
-- what SQL cannot: this database's worker (shared memory) and the next run (cron schedules).
CREATE FUNCTION reaper_worker()
RETURNS TABLE (pid integer, state text, current_target regclass)
LANGUAGE c STABLE PARALLEL UNSAFE ROWS 1
AS 'MODULE_PATHNAME', 'reaper_worker_wrapper';
COMMENT ON FUNCTION reaper_worker() IS 'session_reaper: this database''s worker: its pid, what it is doing, the target it is on';

CREATE FUNCTION reaper_next_run(schedule text, last_run_at timestamptz) RETURNS timestamptz
LANGUAGE c STABLE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_next_run_wrapper';
COMMENT ON FUNCTION reaper_next_run(text, timestamptz)
    IS 'session_reaper: when a target with this schedule (NULL: reaper.interval) that last ran then runs next';

CREATE VIEW reaper_target_stats WITH (security_barrier) AS
SELECT t.relid AS target, t.column_name::text AS column_name, t.enabled, t.schedule,
       s.last_run_at, s.last_success_at, s.last_status, s.last_error, s.last_deleted,
       coalesce(s.total_deleted, 0) AS total_deleted, coalesce(s.total_runs, 0) AS total_runs,
       coalesce(s.total_errors, 0) AS total_errors, s.last_duration,
       s.backlog_rows AS dead_rows_estimate, now() - s.oldest_dead_expiry AS oldest_dead_age,
       CASE WHEN t.enabled THEN reaper_next_run(t.schedule, s.last_run_at) END AS next_run_at,
       w.pid AS worker_pid, w.state AS worker_state, w.current_target, s.backlog_at
  FROM reaper_target t
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(t.relid, viewer.oid)
  LEFT JOIN reaper_state s ON s.target_id = t.id
 CROSS JOIN reaper_worker() w
 ORDER BY t.id;
COMMENT ON VIEW reaper_target_stats IS 'session_reaper: what reaper_stats() returns, as a view';
GRANT SELECT ON reaper_target_stats TO PUBLIC;

CREATE FUNCTION reaper_stats()
RETURNS TABLE (target regclass, column_name text, enabled boolean, schedule text,
               last_run_at timestamptz, last_success_at timestamptz, last_status text,
               last_error text, last_deleted bigint,
               total_deleted bigint, total_runs bigint, total_errors bigint, last_duration interval,
               dead_rows_estimate bigint, oldest_dead_age interval, next_run_at timestamptz,
               worker_pid integer, worker_state text, current_target regclass, backlog_at timestamptz)
LANGUAGE sql STABLE PARALLEL UNSAFE
AS 'SELECT * FROM @extschema@.reaper_target_stats';
COMMENT ON FUNCTION reaper_stats() IS 'session_reaper: per target, what the reaper did and what its last run left behind';
