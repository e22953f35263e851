-- session_reaper 0.3.0 -> 0.4.0: Citus. A distributed table registered on the coordinator is
-- reaped by each node on its own shards (the library does that); reaper_cluster_stats() shows
-- the cluster from the coordinator.
-- Run by ALTER EXTENSION session_reaper UPDATE, after the 0.4.0 library is installed (and the
-- server restarted to load it).
\echo Use "ALTER EXTENSION session_reaper UPDATE" to load this file. \quit

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
