-- session_reaper SQL API. The functions are written in Rust (src/), but for reaper_stats(), a SQL
-- query (below); this file gives them their SQL names, parameter names, defaults and types
-- (regclass targets), and says who may call them.
-- None is SECURITY DEFINER: each checks the caller's rights itself (see src/security.rs).

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

-- Not STRICT: a NULL argument is an ERROR that names it (SQLSTATE 22004), not a silent no-op.
CREATE FUNCTION reaper_unregister(target regclass) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_unregister_wrapper';
COMMENT ON FUNCTION reaper_unregister(regclass) IS 'session_reaper: stop reaping this table and forget its rule';

CREATE FUNCTION reaper_enable(target regclass, enabled boolean DEFAULT true) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_enable_wrapper';
COMMENT ON FUNCTION reaper_enable(regclass, boolean) IS 'session_reaper: switch a target on or off, keeping its rule';

CREATE FUNCTION reaper_purge(target regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (target regclass, rows_deleted bigint, batches integer, duration interval,
               status text, error text, partitions_dropped integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_purge_v2_wrapper';
COMMENT ON FUNCTION reaper_purge(regclass, bigint)
    IS 'session_reaper: delete expired rows now, in this transaction (NULL: every enabled target you own)';

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

-- reaper_stats() is one query over the registry, planned and run by Postgres itself, so it
-- costs about what pg_stat_user_tables does over as many tables (bench/idle_and_scale.sh).
-- The view reads the registry as its owner, filtered by what the caller may see; the viewer is a joined row, not
-- a subquery argument, so Postgres inlines reaper_can_see. Two small Rust functions supply
-- what SQL cannot: this database's worker (shared memory) and the next run (cron schedules).
CREATE FUNCTION reaper_worker()
RETURNS TABLE (pid integer, state text, current_target regclass)
LANGUAGE c STABLE PARALLEL UNSAFE ROWS 1
AS 'MODULE_PATHNAME', 'reaper_worker_wrapper';
COMMENT ON FUNCTION reaper_worker() IS 'session_reaper: this database''s worker: its pid, what it is doing, the target it is on';

CREATE FUNCTION reaper_next_run(schedule text, last_run_at timestamptz, registered_at timestamptz)
RETURNS timestamptz
LANGUAGE c STABLE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_next_run_v3_wrapper';
COMMENT ON FUNCTION reaper_next_run(text, timestamptz, timestamptz)
    IS 'session_reaper: when a target with this schedule (NULL: reaper.interval), registered then, that last ran then runs next';

CREATE VIEW reaper_target_stats WITH (security_barrier) AS
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

-- reaper_wake runs targets now through the worker, with its per-batch commits. A caller may
-- wake only the targets it may manage (the table's owner, a member of the owning role, or a
-- superuser): waking another role's target is refused like purging it.
CREATE FUNCTION reaper_wake(target regclass DEFAULT NULL) RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_wake_v3_wrapper';
COMMENT ON FUNCTION reaper_wake(regclass)
    IS 'session_reaper: ask this database''s worker to run this target now (NULL: every enabled target you may manage); returns how many it will run';
-- reaper_cluster_stats() is reaper_stats() over a Citus cluster, read on the coordinator: each
-- node's own figures (asked through Citus' run_command_on_all_nodes, as the caller), and per
-- target one row with node NULL, the cluster's totals. A node that does not answer is one row,
-- with last_status 'unreachable' and the reason in last_error. Targets are named schema.table,
-- as each node knows them. PL/pgSQL, so the extension
-- installs where Citus is not; there it raises 0A000.
CREATE FUNCTION reaper_cluster_stats()
RETURNS TABLE (node text, target text, last_run_at timestamptz, last_status text,
               last_error text, total_deleted bigint, total_runs bigint, total_errors bigint,
               dead_rows_estimate bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    ask text := format(
        $q$SELECT coalesce(pg_catalog.json_agg(s), '[]') FROM (
             SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS target, r.last_run_at,
                    r.last_status, r.last_error, r.total_deleted, r.total_runs, r.total_errors,
                    r.dead_rows_estimate
               FROM %s.reaper_stats() r
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.target::pg_catalog.oid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace) s$q$,
        (SELECT e.extnamespace::regnamespace::text FROM pg_extension e
          WHERE e.extname = 'session_reaper'));
BEGIN
    IF to_regproc('pg_catalog.run_command_on_all_nodes') IS NULL THEN
        RAISE EXCEPTION 'reaper_cluster_stats() needs Citus, which is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Use reaper_stats() for this server''s own targets.';
    END IF;
    RETURN QUERY EXECUTE $q$
        WITH answers AS (
            SELECT d.nodename || ':' || d.nodeport AS node, a.success, a.result
              FROM pg_catalog.run_command_on_all_nodes($1) a
              JOIN pg_catalog.pg_dist_node d ON d.nodeid = a.nodeid),
        rows AS (
            SELECT a.node, j.target, j.last_run_at, j.last_status, j.last_error,
                   j.total_deleted, j.total_runs, j.total_errors, j.dead_rows_estimate
              FROM answers a,
                   json_to_recordset(a.result::json) AS j(target text, last_run_at timestamptz,
                       last_status text, last_error text, total_deleted bigint, total_runs bigint,
                       total_errors bigint, dead_rows_estimate bigint)
             WHERE a.success)
        SELECT node, target, max(last_run_at), string_agg(DISTINCT last_status, ',' ORDER BY last_status),
               string_agg(DISTINCT last_error, '; ' ORDER BY last_error),
               sum(total_deleted)::bigint, sum(total_runs)::bigint, sum(total_errors)::bigint,
               sum(dead_rows_estimate)::bigint
          FROM rows
         GROUP BY GROUPING SETS ((node, target), (target))
        UNION ALL
        SELECT node, NULL, NULL, 'unreachable', result, NULL, NULL, NULL, NULL
          FROM answers WHERE NOT success
         ORDER BY 2, 1 NULLS LAST$q$
    USING ask;
END
$body$;
COMMENT ON FUNCTION reaper_cluster_stats()
    IS 'session_reaper: on a Citus coordinator, each node''s reaper_stats() per target, and the cluster''s totals (node NULL)';
