//! In-crate tests of the actions beyond delete (archive, update, drop_partitions): each runs in
//! one rolled-back transaction of a real Postgres, through reaper_register / reaper_purge /
//! reaper_dry_run as a user would. The worker running the same actions is tested on a real
//! cluster by pgrx-tests/harness.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{
        assert_refused, count, error_of, registry, run, sessions_table, text,
    };
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode::*;

    /// Dead and live rows whose tokens say which they are; the ones that must stay start `live`.
    fn dead_and_live_sessions() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at)
             SELECT 'dead_' || g, now() - g * interval '1 minute' FROM generate_series(1, 300) g
             UNION ALL
             SELECT 'live_' || g, now() + g * interval '1 second' FROM generate_series(1, 200) g
             UNION ALL SELECT 'live_now', now()");
    }

    #[pg_test]
    fn archive_moves_dead_rows_and_keeps_live_ones() {
        dead_and_live_sessions();
        // An extra column with a default is allowed: it stamps the move.
        run("CREATE TABLE sessions_archive (LIKE sessions, archived_at timestamptz NOT NULL DEFAULT now())");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive', batch_size => 70)");
        let moved = count("SELECT rows_deleted FROM reaper_purge('sessions')");
        assert_eq!(moved, 300);
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token NOT LIKE 'live%'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM sessions"), 201);
        // Every moved row arrived whole, and none of the live ones.
        assert_eq!(
            count(
                "SELECT count(*) FROM sessions_archive
                  WHERE token LIKE 'dead_%' AND expires_at < now() AND archived_at IS NOT NULL"
            ),
            300
        );
        assert_eq!(
            count("SELECT count(DISTINCT id) FROM sessions_archive"),
            300
        );
    }

    #[pg_test]
    fn an_archive_table_can_itself_be_reaped_later() {
        dead_and_live_sessions();
        run("CREATE TABLE sessions_archive (LIKE sessions, archived_at timestamptz NOT NULL DEFAULT now())");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive')");
        run("SELECT reaper_register('sessions_archive', 'archived_at', ttl => '90 days')");
        run("SELECT * FROM reaper_purge()");
        assert_eq!(count("SELECT count(*) FROM sessions_archive"), 300);
        // 91 days later, as far as the archive's rows can tell.
        run("UPDATE sessions_archive SET archived_at = archived_at - interval '91 days' WHERE token <= 'dead_2'");
        let gone = count("SELECT count(*) FROM sessions_archive WHERE token <= 'dead_2'");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions_archive')"),
            gone
        );
        assert_eq!(count("SELECT count(*) FROM sessions_archive"), 300 - gone);
    }

    #[pg_test]
    fn archive_bad_inputs_are_refused_and_change_nothing() {
        dead_and_live_sessions();
        run("CREATE TABLE wrong_types (LIKE sessions)");
        run("ALTER TABLE wrong_types ALTER COLUMN token TYPE int USING 0");
        run("CREATE TABLE missing_column (id bigint, token text, expires_at timestamptz)");
        run("CREATE TABLE needs_value (LIKE sessions, reason text NOT NULL)");
        run("CREATE TABLE locked_archive (LIKE sessions)");
        run("CREATE VIEW archive_view AS SELECT * FROM locked_archive");
        for (archive, code, names) in [
            ("wrong_types", ERRCODE_DATATYPE_MISMATCH, "token"),
            ("missing_column", ERRCODE_DATATYPE_MISMATCH, "pinned"),
            ("needs_value", ERRCODE_DATATYPE_MISMATCH, "reason"),
            ("sessions", ERRCODE_DATATYPE_MISMATCH, "being reaped"),
            ("archive_view", ERRCODE_DATATYPE_MISMATCH, "not a table"),
            (
                "no_such_archive",
                ERRCODE_UNDEFINED_TABLE,
                "no_such_archive",
            ),
        ] {
            assert_refused(
                &format!("SELECT reaper_register('sessions', action => 'archive', archive_table => '{archive}')"),
                code,
                names,
            );
        }
        assert_refused(
            "SELECT reaper_register('sessions', action => 'archive')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "archive_table",
        );
        assert_refused(
            "SELECT reaper_register('sessions', archive_table => 'locked_archive')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "archive_table",
        );
        // The table's owner must be able to insert into the archive.
        run("CREATE ROLE reaper_test_archiver");
        run("ALTER TABLE sessions OWNER TO reaper_test_archiver");
        assert_refused(
            "SELECT reaper_register('sessions', action => 'archive', archive_table => 'locked_archive')",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "may not insert",
        );
        run("GRANT INSERT ON locked_archive TO reaper_test_archiver");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'locked_archive')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            300
        );
        assert_eq!(count("SELECT count(*) FROM locked_archive"), 300);
    }

    #[pg_test]
    fn an_archive_table_changed_after_registration_stops_the_target_and_keeps_the_rows() {
        dead_and_live_sessions();
        run("CREATE TABLE sessions_archive (LIKE sessions)");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive')");
        run("ALTER TABLE sessions_archive DROP COLUMN pinned");
        let error = text("SELECT status || ': ' || error FROM reaper_purge('sessions')");
        assert!(
            error.starts_with("error: ") && error.contains("pinned"),
            "{error}"
        );
        // The archive table cannot be dropped while the target uses it (issue 17 item 6).
        let (code, message) = error_of("DROP TABLE sessions_archive");
        assert_eq!(code, ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST, "{message}");
        assert_eq!(count("SELECT count(*) FROM sessions"), 501);
    }

    #[pg_test]
    fn update_marks_dead_rows_once_and_leaves_live_ones() {
        dead_and_live_sessions();
        run("ALTER TABLE sessions ADD COLUMN ended_at timestamptz");
        run("SELECT reaper_register('sessions', action => 'update', update_set => 'ended_at = expires_at',
                                    predicate => 'ended_at IS NULL', batch_size => 70)");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            300
        );
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE ended_at IS NOT NULL"),
            300
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM sessions WHERE ended_at = expires_at AND token LIKE 'dead_%'"
            ),
            300
        );
        // The predicate makes it idempotent: a second run finds nothing.
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM sessions"), 501);
    }

    #[pg_test]
    fn an_update_that_would_repeat_is_rolled_back_and_reported() {
        dead_and_live_sessions();
        run("SELECT reaper_register('sessions', action => 'update', update_set => 'pinned = NOT pinned', predicate => 'true')");
        let error = text("SELECT status || ': ' || error FROM reaper_purge('sessions')");
        assert!(
            error.starts_with("error: ") && error.contains("300 rows still matching"),
            "{error}"
        );
        assert_eq!(count("SELECT count(*) FROM sessions WHERE pinned"), 0);
    }

    #[pg_test]
    fn update_bad_inputs_are_refused_and_change_nothing() {
        dead_and_live_sessions();
        let register = |set: &str| {
            format!("SELECT reaper_register('sessions', action => 'update', update_set => $${set}$$, predicate => 'NOT pinned')")
        };
        for set in [
            "",
            "pinned = true WHERE false",
            "pinned = true RETURNING *",
            "pinned = true; DELETE FROM sessions",
            "pinned = true /*",
            "pinned = true FROM pg_class",
        ] {
            assert_refused(&register(set), ERRCODE_SYNTAX_ERROR, "sessions");
        }
        assert_refused(
            &register("no_such_column = 1"),
            ERRCODE_UNDEFINED_COLUMN,
            "no_such_column",
        );
        assert_refused(
            &register("pinned = 'not a bool'"),
            ERRCODE_INVALID_TEXT_REPRESENTATION,
            "boolean",
        );
        assert_refused(
            "SELECT reaper_register('sessions', action => 'update', update_set => 'pinned = true')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "predicate",
        );
        assert_refused(
            "SELECT reaper_register('sessions', action => 'update', predicate => 'NOT pinned')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "update_set",
        );
        assert_refused(
            "SELECT reaper_register('sessions', update_set => 'pinned = true')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "update_set",
        );
        assert_eq!(registry(), "");
        // A comment cannot reach the reaper's WHERE clause: it ends at the line's end.
        run(&register("pinned = true -- and a comment"));
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            300
        );
        assert_eq!(count("SELECT count(*) FROM sessions WHERE pinned"), 300);
    }

    /// `events`, range-partitioned by day on expires_at: five whole days in the past, today
    /// (dead and live rows), two days ahead and a default partition with one dead and one live row.
    fn daily_partitions() {
        run("CREATE TABLE events (id bigint, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at)");
        run("CREATE INDEX ON events (expires_at)");
        run("DO $$ BEGIN FOR d IN -5..2 LOOP
               EXECUTE format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   d + 5, date_trunc('day', now()) + d * interval '1 day',
                   date_trunc('day', now()) + (d + 1) * interval '1 day');
             END LOOP; END $$");
        run("CREATE TABLE events_default PARTITION OF events DEFAULT");
        run("INSERT INTO events SELECT g, date_trunc('day', now()) - interval '5 days' + g * interval '10 minutes'
               FROM generate_series(0, 8 * 144 - 1) g");
        run("INSERT INTO events VALUES (-1, now() - interval '30 days'), (-2, now() + interval '30 days')");
    }

    fn partitions() -> String {
        text(
            "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass",
        )
    }

    #[pg_test]
    fn drop_partitions_drops_whole_dead_days_and_deletes_the_rest_row_by_row() {
        daily_partitions();
        let live = count("SELECT count(*) FROM events WHERE expires_at >= now()");
        run("SELECT reaper_register('events', action => 'drop_partitions')");
        let dry =
            text("SELECT array_to_string(partitions_to_drop, ',') FROM reaper_dry_run('events')");
        assert_eq!(
            dry,
            "public.events_0,public.events_1,public.events_2,public.events_3,public.events_4"
        );
        let (rows, dropped) = Spi::get_two::<i64, i32>(
            "SELECT rows_deleted, partitions_dropped FROM reaper_purge('events')",
        )
        .expect("purge");
        assert_eq!(dropped, Some(5));
        assert_eq!(partitions(), "events_5,events_6,events_7,events_default");
        // Today's dead rows and the default partition's dead row went row by row.
        assert!(rows.unwrap_or(0) >= 1, "rows deleted row by row: {rows:?}");
        assert_eq!(
            count("SELECT count(*) FROM events WHERE expires_at < now()"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM events"), live);
        assert_eq!(
            count("SELECT sum(partitions_dropped)::bigint FROM reaper_history WHERE target = 'events'::regclass"),
            5
        );
    }

    #[pg_test]
    fn a_partition_is_kept_while_any_of_its_range_could_hold_a_live_row() {
        daily_partitions();
        // With a grace of two days, only days that ended more than two days ago are dead.
        run("SELECT reaper_register('events', action => 'drop_partitions', grace => '2 days')");
        assert_eq!(
            count("SELECT partitions_dropped::bigint FROM reaper_purge('events')"),
            3
        );
        assert_eq!(
            partitions(),
            "events_3,events_4,events_5,events_6,events_7,events_default"
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE expires_at < now() - interval '2 days'"),
            0
        );
    }

    #[pg_test]
    fn drop_partitions_bad_inputs_are_refused_and_change_nothing() {
        daily_partitions();
        sessions_table();
        run("CREATE TABLE by_list (id int, expires_at timestamptz) PARTITION BY LIST (expires_at)");
        run("CREATE TABLE by_hash (id int, expires_at timestamptz) PARTITION BY HASH (expires_at)");
        run("CREATE TABLE by_id (id int, expires_at timestamptz) PARTITION BY RANGE (id)");
        run("CREATE TABLE by_two (id int, expires_at timestamptz) PARTITION BY RANGE (expires_at, id)");
        for (table, names) in [
            ("sessions", "not partitioned"),
            ("by_list", "LIST"),
            ("by_hash", "HASH"),
            ("by_id", "by_id"),
            ("by_two", "by_two"),
        ] {
            assert_refused(
                &format!("SELECT reaper_register('{table}', action => 'drop_partitions')"),
                ERRCODE_WRONG_OBJECT_TYPE,
                names,
            );
        }
        assert_refused(
            "SELECT reaper_register('events', action => 'drop_partitions', predicate => 'id > 0')",
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "events",
        );
        assert_eq!(partitions().split(',').count(), 9);
    }

    #[pg_test]
    fn dry_run_of_each_action_changes_nothing() {
        dead_and_live_sessions();
        run("CREATE TABLE sessions_archive (LIKE sessions)");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive')");
        let (action, would) = Spi::get_two::<String, i64>(
            "SELECT action, would_delete FROM reaper_dry_run('sessions')",
        )
        .expect("dry run");
        assert_eq!((action.as_deref(), would), (Some("archive"), Some(300)));
        assert!(text("SELECT statement FROM reaper_dry_run('sessions')")
            .contains("INSERT INTO public.sessions_archive"));
        run("SELECT reaper_register('sessions', action => 'update', update_set => 'pinned = true', predicate => 'NOT pinned')");
        assert!(text("SELECT statement FROM reaper_dry_run('sessions')")
            .contains("UPDATE public.sessions SET pinned = true"));
        assert_eq!(count("SELECT count(*) FROM sessions"), 501);
        assert_eq!(count("SELECT count(*) FROM sessions WHERE pinned"), 0);
        assert_eq!(count("SELECT count(*) FROM sessions_archive"), 0);
        let (code, _) = error_of("SELECT reaper_register('sessions', action => 'shred')");
        assert_eq!(code, ERRCODE_INVALID_PARAMETER_VALUE);
    }
}
