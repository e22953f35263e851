//! In-crate tests of cursor.rs: how a run walks a table (page ranges, the expiry index,
//! inheritance children). How each batch's statement plans is tested in statement.rs. Each
//! runs in one rolled-back transaction.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
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
