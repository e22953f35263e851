//! In-crate tests of cursor.rs: how a run walks a table (page ranges, the expiry index,
//! partitions, inheritance children) and how each batch's statement plans. Each runs in one
//! rolled-back transaction.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use crate::reap::cursor::Cursor;
    use crate::reap::statement::compose;
    use pgrx::prelude::*;

    /// Without an index on the column, a run walks the table by page ranges sized to about a
    /// batch of dead rows: every dead row goes, no live one, in several batches.
    #[pg_test]
    fn page_ranges_delete_every_dead_row_and_no_live_one() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at)
               SELECT CASE WHEN g % 2 = 0 THEN 'dead' ELSE 'live' END,
                      now() + CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END * interval '1 hour'
                 FROM generate_series(1, 3000) g");
        run("ANALYZE sessions");
        run("SELECT reaper_register('sessions', batch_size => 100)");
        let statement = Spi::get_one::<String>("SELECT statement FROM reaper_dry_run('sessions')")
            .unwrap()
            .unwrap();
        assert!(statement.contains("ctid >= '(0,0)'::tid"), "{statement}");
        let (rows, batches) =
            Spi::get_two::<i64, i32>("SELECT rows_deleted, batches FROM reaper_purge('sessions')")
                .unwrap();
        assert_eq!(rows, Some(1500));
        assert!(batches.unwrap() >= 8, "about 100 rows a batch: {batches:?}");
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'live'"),
            1500
        );
        assert_eq!(count("SELECT count(*) FROM sessions"), 1500);
    }

    /// A page range that would end past the largest block number a tid can spell (the last
    /// batch of a table near 32 TB) is valid SQL, and a range up to it covers every real page.
    #[pg_test]
    fn a_page_range_at_the_largest_block_number_is_valid_sql() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 hour')");
        let last = crate::reap::cursor::page_range(u32::MAX - 1, u64::from(u32::MAX) + 8192);
        assert_eq!(
            count(&format!("SELECT count(*) FROM sessions WHERE {last}")),
            0
        );
        let all = crate::reap::cursor::page_range(0, u64::from(u32::MAX) + 8192);
        assert_eq!(
            count(&format!("SELECT count(*) FROM sessions WHERE {all}")),
            1
        );
    }

    /// A batch's DELETE finds its rows by physical address even when the table's statistics
    /// predate the rows' expiry (as they do in a steady state: they say every row expires
    /// later). Its dead-row re-check once let the planner pick an index scan over every dead
    /// row of the table instead, each checked against the batch's ctids (2.7 s for 10,000).
    #[pg_test]
    fn a_batch_keeps_its_tid_scan_when_the_statistics_predate_the_expiry() {
        sessions_table();
        run("CREATE INDEX ON sessions (expires_at)");
        run("INSERT INTO sessions (token, expires_at)
               SELECT 'live', now() + interval '1 day' FROM generate_series(1, 20000)");
        run("ANALYZE sessions");
        run("INSERT INTO sessions (token, expires_at)
               SELECT 'dead', now() - interval '1 second' * g FROM generate_series(1, 5000) g");
        run("SELECT reaper_register('sessions')");
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'sessions'::regclass::oid")
            .unwrap()
            .unwrap();
        let target = crate::reap::target::load(Some(relid))
            .remove(0)
            .target
            .unwrap();
        let plan_of = |statement: String| {
            Spi::explain(&statement)
                .expect("the batch statement plans")
                .0
                .to_string()
        };
        // The pick still reads the dead rows through the index; the DELETE takes them by ctid.
        let expiry = compose(&target, &Cursor::Expiry(None), 1000, false);
        let plan = plan_of(expiry);
        assert!(plan.contains(r#""Node Type":"Tid Scan""#), "{plan}");
        assert!(plan.contains(r#""Node Type":"Index Scan""#), "{plan}");
        let pages = Cursor::Pages {
            next: 0,
            span: 20,
            end: 200,
            rows_per_page: 125.0,
        };
        let range_scan = "Tid Range Scan";
        for skip_locked in [false, true] {
            let plan = plan_of(compose(&target, &pages, 1000, skip_locked));
            assert!(
                plan.contains(&format!(r#""Node Type":"{range_scan}""#)),
                "{plan}"
            );
            assert!(!plan.contains("Index Scan"), "{plan}");
        }
    }

    /// A partitioned target's batch DELETE skips the partitions that hold only live rows
    /// (Postgres prunes them by the dead-row condition) instead of probing each of them for
    /// the batch's ctids, which it would if the condition were written so no index can use it.
    #[pg_test]
    fn a_partitioned_batch_delete_skips_the_live_partitions() {
        run(
            "CREATE TABLE tokens (expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at)",
        );
        run("DO $$ BEGIN
               EXECUTE format('CREATE TABLE tokens_old PARTITION OF tokens FOR VALUES FROM (MINVALUE) TO (%L)',
                              now() + interval '1 hour');
               EXECUTE format('CREATE TABLE tokens_new PARTITION OF tokens FOR VALUES FROM (%L) TO (MAXVALUE)',
                              now() + interval '1 hour');
             END $$");
        run("CREATE INDEX ON tokens (expires_at)");
        run("INSERT INTO tokens SELECT now() + interval '1 day' FROM generate_series(1, 2000)");
        run("INSERT INTO tokens SELECT now() - interval '1 minute' FROM generate_series(1, 200)");
        run("SELECT reaper_register('tokens')");
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'tokens'::regclass::oid")
            .unwrap()
            .unwrap();
        let target = crate::reap::target::load(Some(relid))
            .remove(0)
            .target
            .unwrap();
        let cursor = Cursor::first(&target, 1000, false);
        let statement = compose(&target, &cursor, 1000, false);
        let plan = Spi::explain(&statement)
            .expect("the batch statement plans")
            .0
            .to_string();
        let live_partition_scanned = Spi::get_one_with_args::<bool>(
            r#"SELECT jsonb_path_exists($1::jsonb, 'lax $.** ? (@."Node Type" == "ModifyTable").**
                 ? (@."Node Type" like_regex "Scan$" && @."Relation Name" == "tokens_new")')"#,
            &[plan.as_str().into()],
        )
        .unwrap()
        .unwrap();
        assert!(!live_partition_scanned, "{plan}");
    }

    /// A table with inheritance children is reaped as `DELETE FROM parent` would be, children
    /// included, however many pages they have: page ranges of the parent say nothing of theirs.
    #[pg_test]
    fn inheritance_children_are_reaped_with_their_parent() {
        sessions_table();
        run("CREATE TABLE old_sessions () INHERITS (sessions)");
        let half_dead = |table: &str, rows: i32| {
            run(&format!(
                "INSERT INTO {table} (token, expires_at)
                   SELECT CASE WHEN g % 2 = 0 THEN 'dead' ELSE 'live' END,
                          now() + CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END * interval '1 hour'
                     FROM generate_series(1, {rows}) g"
            ))
        };
        half_dead("sessions", 200);
        half_dead("old_sessions", 4000);
        run("ANALYZE sessions");
        run("SELECT reaper_register('sessions', batch_size => 100)");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            2100
        );
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'dead'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM ONLY sessions"), 100);
        assert_eq!(count("SELECT count(*) FROM old_sessions"), 2000);
    }

    /// Batches resume in index order from the previous batch's last expiry value: rows that
    /// share that value across a batch boundary are not skipped.
    #[pg_test]
    fn batches_resume_in_expiry_order_without_skipping_equal_values() {
        sessions_table();
        run("CREATE INDEX ON sessions (expires_at)");
        run("INSERT INTO sessions (token, expires_at)
               SELECT 't' || g, date_trunc('minute', now()) - interval '1 second' - (g % 3) * interval '1 hour' FROM generate_series(1, 250) g");
        run(
            "INSERT INTO sessions (token, expires_at) VALUES ('live', now() + interval '1 minute')",
        );
        run("SELECT reaper_register('sessions', batch_size => 40)");
        let (rows, batches) =
            Spi::get_two::<i64, i32>("SELECT rows_deleted, batches FROM reaper_purge('sessions')")
                .unwrap();
        assert_eq!((rows, batches), (Some(250), Some(7)));
        assert_eq!(count("SELECT count(*) FROM sessions"), 1);
    }
}
