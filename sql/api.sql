-- session_reaper SQL API. The functions are written in Rust (src/); this file gives them their
-- SQL names, parameter names, defaults and types (regclass targets), and says who may call them.
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

CREATE FUNCTION reaper_unregister(target regclass) RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_unregister_wrapper';
COMMENT ON FUNCTION reaper_unregister(regclass) IS 'session_reaper: stop reaping this table and forget its rule';

CREATE FUNCTION reaper_enable(target regclass, enabled boolean DEFAULT true) RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
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

CREATE FUNCTION reaper_stats()
RETURNS TABLE (target regclass, column_name text, enabled boolean, schedule text,
               last_run_at timestamptz, last_success_at timestamptz, last_status text,
               last_error text, last_deleted bigint,
               total_deleted bigint, total_runs bigint, total_errors bigint, last_duration interval,
               dead_rows_estimate bigint, oldest_dead_age interval, next_run_at timestamptz,
               worker_pid integer, worker_state text, current_target regclass, backlog_at timestamptz)
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_stats_v2_wrapper';
COMMENT ON FUNCTION reaper_stats() IS 'session_reaper: per target, what the reaper did and what its last run left behind';

CREATE FUNCTION reaper_wake() RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_wake_wrapper';
COMMENT ON FUNCTION reaper_wake() IS 'session_reaper: ask this database''s worker to run every target now; false when it has no worker';
