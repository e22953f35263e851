-- session_reaper 0.2.0 -> 0.3.0: targets run when their schedules say, reaper_wake names what
-- it runs, and runs cut short by a shutdown or crash are recorded.
-- Run by ALTER EXTENSION session_reaper UPDATE, after the 0.3.0 library is installed (and the
-- server restarted to load it). Until then the 0.3.0 worker does not reap, and says why.
\echo Use "ALTER EXTENSION session_reaper UPDATE" to load this file. \quit

-- pg_dump dumps the targets (pg_extension_config_dump): the database's owner may read them,
-- so it can back up its own database without a superuser.
GRANT SELECT ON reaper_target, reaper_target_id_seq TO pg_database_owner;

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

-- NULL arguments are errors, and DDL on a registered table keeps its target true to it.

-- Item 13: a NULL target or switch is an ERROR that names it (SQLSTATE 22004), no longer a call
-- that silently does nothing.
ALTER FUNCTION reaper_unregister(regclass) CALLED ON NULL INPUT;
ALTER FUNCTION reaper_enable(regclass, boolean) CALLED ON NULL INPUT;

-- Item 6: targets of tables dropped under 0.2.0 can never run again, and pg_dump would write their
-- table OIDs as bare numbers that a restore may give to other relations. From now on the sql_drop
-- trigger below removes a target with its table; these are removed here, each named.
DO $$
DECLARE
    gone record;
BEGIN
    FOR gone IN
        DELETE FROM @extschema@.reaper_target t
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) t.relid)
        RETURNING t.id, t.relid::pg_catalog.oid AS relid
    LOOP
        RAISE NOTICE 'session_reaper: the table (OID %) of target % was dropped: the target is unregistered',
            gone.relid, gone.id;
    END LOOP;
END
$$;

-- sql/ddl.sql, as a fresh install runs it:
-- session_reaper and DDL: a target stores its table as an OID and its column, predicate and SET
-- list as text, so Postgres records no dependency on them; these event triggers stand in for one
-- (src/ddl.rs). A dropped table's target goes with it, an archive table still in use cannot be
-- dropped, and a target that a change to its table leaves unable to run is disabled with a
-- WARNING.
--
-- None of these functions is SECURITY DEFINER: event trigger functions run as the role whose
-- DDL fired them, and the Rust functions read the command's objects from
-- pg_event_trigger_dropped_objects() / pg_event_trigger_ddl_commands(), which fail outside an
-- event trigger. Called by hand they do nothing but fail, so EXECUTE stays with PUBLIC (any
-- role's DROP or ALTER TABLE must be able to run them). Writes to the registry switch to the
-- extension's owner inside Rust, as reaper_register does.

CREATE FUNCTION reaper_forget_dropped() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_forget_dropped_wrapper';
COMMENT ON FUNCTION reaper_forget_dropped()
    IS 'session_reaper: in a sql_drop event trigger, unregister the targets of dropped tables and refuse to drop an archive table in use';

CREATE FUNCTION reaper_recheck_altered() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_recheck_altered_wrapper';
COMMENT ON FUNCTION reaper_recheck_altered()
    IS 'session_reaper: in a ddl_command_end event trigger, disable the targets an ALTER TABLE or ALTER TYPE left unable to run';

CREATE FUNCTION reaper_on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.reaper_forget_dropped();
END
$$;
COMMENT ON FUNCTION reaper_on_sql_drop() IS 'session_reaper: the sql_drop event trigger''s function';

CREATE FUNCTION reaper_on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.reaper_recheck_altered();
END
$$;
COMMENT ON FUNCTION reaper_on_alter_table() IS 'session_reaper: the ddl_command_end event trigger''s function';

-- Every drop: DROP TABLE, DROP SCHEMA … CASCADE, DROP OWNED, and the column drops of ALTER
-- TABLE … DROP COLUMN or DROP TYPE … CASCADE. DROP EXTENSION session_reaper drops these
-- triggers with the rest, and they do not fire for it.
CREATE EVENT TRIGGER reaper_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION reaper_on_sql_drop();
COMMENT ON EVENT TRIGGER reaper_forget_dropped_tables
    IS 'session_reaper: a dropped table''s target goes with it; an archive table in use cannot be dropped alone';

-- The commands that rename, drop or retype a table's column: ALTER TABLE, and ALTER TYPE … CASCADE
-- for the columns of typed tables (CREATE TABLE … OF type). ALTER TABLE also moves a table to
-- another schema (where the predicate's unqualified names resolve) and gives it another owner (as
-- whom the rule runs).
CREATE EVENT TRIGGER reaper_recheck_altered_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE')
    EXECUTE FUNCTION reaper_on_alter_table();
COMMENT ON EVENT TRIGGER reaper_recheck_altered_tables
    IS 'session_reaper: a target that an ALTER leaves unable to run is disabled, with a WARNING';
