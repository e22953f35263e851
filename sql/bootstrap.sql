-- session_reaper bootstrap: the target registry, run state and history, and who may see them.
-- Runs first in CREATE EXTENSION; the functions that manage these tables are declared in api.sql.

-- One row per reaped table. Managed only through reaper_register / reaper_unregister /
-- reaper_enable; kept by pg_dump (pg_extension_config_dump below).
CREATE TABLE reaper_target (
    id            bigserial PRIMARY KEY,
    relid         regclass NOT NULL UNIQUE,
    column_name   name NOT NULL,
    timezone      text,
    grace         interval NOT NULL DEFAULT '0',
    ttl           interval,
    predicate     text,
    batch_size    integer CHECK (batch_size > 0),
    schedule      text,
    action        text NOT NULL DEFAULT 'delete'
                  CHECK (action IN ('delete', 'archive', 'drop_partitions', 'update')),
    enabled       boolean NOT NULL DEFAULT true,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- Added in 0.2.0 (so at the end, as the upgrade from 0.1.0 leaves them).
    archive_table regclass,
    update_set    text,
    CONSTRAINT reaper_target_archive_table_check CHECK ((action = 'archive') = (archive_table IS NOT NULL)),
    CONSTRAINT reaper_target_update_set_check CHECK ((action = 'update') = (update_set IS NOT NULL))
);
COMMENT ON TABLE reaper_target IS 'session_reaper: registered targets (use reaper_register, not DML)';
COMMENT ON SEQUENCE reaper_target_id_seq IS 'session_reaper: target ids (reaper_register returns them)';

-- What each target's runs have added up to. Not dumped: counters start again after a restore.
CREATE TABLE reaper_state (
    target_id     bigint PRIMARY KEY REFERENCES reaper_target (id) ON DELETE CASCADE,
    last_run_at   timestamptz,
    last_status   text CHECK (last_status IN ('ok', 'error', 'timeout', 'skipped', 'interrupted')),
    last_error    text,
    last_deleted  bigint,
    last_duration interval,
    total_deleted bigint NOT NULL DEFAULT 0,
    total_runs    bigint NOT NULL DEFAULT 0,
    total_errors  bigint NOT NULL DEFAULT 0,
    -- Added in 0.2.0: what the last run left behind, measured as it ended (backlog_at), and
    -- when the last run that ended 'ok' started ("seconds since the last success" for alerts).
    backlog_rows       bigint,
    oldest_dead_expiry timestamptz,
    backlog_at         timestamptz,
    last_success_at    timestamptz,
    -- Added in 0.3.0: the worker's run in progress, written with each batch it commits, so a
    -- run cut short by a shutdown or crash is recorded ('interrupted') when the worker starts
    -- again; and a run asked for by reaper_wake(), cleared by the run that serves it.
    run_started_at     timestamptz,
    run_noted_at       timestamptz,
    run_rows           bigint,
    run_batches        integer,
    run_partitions     integer,
    wake_requested_at  timestamptz
);
COMMENT ON TABLE reaper_state IS 'session_reaper: per-target counters, read by reaper_stats()';

-- One row per run. relid stays after the target is unregistered, until the row ages out.
CREATE TABLE reaper_run (
    run_id      uuid PRIMARY KEY,
    target_id   bigint,
    relid       regclass NOT NULL,
    trigger     text NOT NULL CHECK (trigger IN ('worker', 'manual')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
        rows        bigint NOT NULL,
    batches     integer NOT NULL,
    -- In the worker each batch is one transaction: the longest a run held one.
    longest_batch interval NOT NULL,
    status      text NOT NULL CHECK (status IN ('ok', 'error', 'timeout', 'skipped', 'interrupted')),
    error       text,
    partitions_dropped integer NOT NULL DEFAULT 0
);
CREATE INDEX ON reaper_run (started_at);
COMMENT ON TABLE reaper_run IS 'session_reaper: one row per run (read through the reaper_history view)';

SELECT pg_catalog.pg_extension_config_dump('reaper_target', '');
SELECT pg_catalog.pg_extension_config_dump('reaper_target_id_seq', '');

-- Nobody but the extension's owner writes these; everyone reads through the views below.
REVOKE ALL ON reaper_target, reaper_state, reaper_run FROM PUBLIC;
-- pg_dump dumps the targets (pg_extension_config_dump above): the database's owner may read
-- them, so it can back up its own database without a superuser.
GRANT SELECT ON reaper_target, reaper_target_id_seq TO pg_database_owner;

-- reaper_can_see says whether a role may see targets of this table: it may read it (owners and
-- members of the owning role can), or, for a table that no longer exists, it is a superuser
-- (only superusers may read pg_authid). Every name is schema-qualified, and there is no operator
-- and no table (so no temporary one of a caller's can stand in for a catalog), so the function
-- needs no pinned search_path; without a SET clause Postgres inlines
-- it, which keeps reaper_stats() fast with thousands of targets (a SET clause would make it a
-- function call per row). The views pass the viewer as a
-- joined row: a subquery as the argument, used twice in the body, would stop the inlining.
CREATE FUNCTION reaper_can_see(target oid, viewer oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(pg_catalog.has_table_privilege(viewer, target, 'SELECT'),
                    pg_catalog.has_table_privilege(viewer, 'pg_catalog.pg_authid', 'SELECT'))
$$;
COMMENT ON FUNCTION reaper_can_see(oid, oid) IS 'session_reaper: whether a role may see targets of this table';

CREATE VIEW reaper_targets WITH (security_barrier) AS
SELECT t.id, t.relid AS target, t.column_name, t.timezone, t.grace, t.ttl, t.predicate,
       t.batch_size, t.schedule, t.action, t.enabled, t.registered_at, t.updated_at,
       t.archive_table, t.update_set
  FROM reaper_target t
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(t.relid, viewer.oid);
COMMENT ON VIEW reaper_targets IS 'session_reaper: registered targets, one row per table you can see';

CREATE VIEW reaper_history WITH (security_barrier) AS
SELECT h.run_id, h.relid AS target, h.trigger, h.started_at, h.finished_at,
              h.finished_at - h.started_at AS duration, h.rows, h.batches, h.longest_batch, h.status, h.error,
              h.partitions_dropped
  FROM reaper_run h
  JOIN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) viewer
    ON reaper_can_see(h.relid, viewer.oid);
COMMENT ON VIEW reaper_history IS 'session_reaper: run history for tables you can see';

GRANT SELECT ON reaper_targets, reaper_history TO PUBLIC;
