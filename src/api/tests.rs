//! In-crate tests: each runs inside one transaction of a real Postgres that is rolled back
//! afterwards, so they cover what a single session sees: validation, the SQL a rule becomes,
//! purge's row-by-row correctness, and privileges. Worker behaviour is tested on a real
//! cluster by pgrx-tests/.

use pgrx::prelude::*;

#[pg_schema]
pub(crate) mod tests {
    use crate::shared::txn::in_subtransaction;
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;
    use pgrx::PgSqlErrorCode::*;

    /// Runs `sql`, which must fail; returns its SQLSTATE and message.
    pub(crate) fn error_of(sql: &str) -> (PgSqlErrorCode, String) {
        let sql = sql.to_string();
        match in_subtransaction(move || Spi::run(&sql)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    pub(crate) fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql)
            .expect("query runs")
            .expect("a count")
    }

    /// A single text value from a query ('' for NULL).
    pub(crate) fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql)
            .expect("query runs")
            .unwrap_or_default()
    }

    pub(crate) fn run(sql: &str) {
        Spi::run(sql).expect("statement runs");
    }

    /// The registry, as text, to prove that a failed call changed nothing.
    pub(crate) fn registry() -> String {
        Spi::get_one::<String>(
            "SELECT coalesce(string_agg(t::text, ';' ORDER BY id), '') FROM reaper_targets t",
        )
        .expect("read registry")
        .unwrap_or_default()
    }

    pub(crate) fn sessions_table() {
        run("CREATE TABLE sessions (id bigserial PRIMARY KEY, token text, pinned bool NOT NULL DEFAULT false,
                                    created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL)");
    }

    /// Registering a bad input fails with `code`, names the table in its message, and leaves the
    /// registry as it was.
    pub(crate) fn assert_refused(sql: &str, code: PgSqlErrorCode, names: &str) {
        let before = registry();
        let (got, message) = error_of(sql);
        assert_eq!(got, code, "SQLSTATE of {sql}: {message}");
        assert!(
            message.contains(names),
            "message of {sql} names {names}: {message}"
        );
        assert_eq!(registry(), before, "{sql} changed the registry");
    }

    #[pg_test]
    fn purge_never_deletes_a_row_that_is_not_expired() {
        sessions_table();
        // One row a second either side of now(), one exactly at now(), one long dead.
        run("INSERT INTO sessions (token, expires_at) VALUES
               ('dead_1s', now() - interval '1 second'), ('live_1s', now() + interval '1 second'),
               ('at_now', now()), ('dead_1d', now() - interval '1 day')");
        run("SELECT reaper_register('sessions')");
        let deleted = count("SELECT rows_deleted FROM reaper_purge('sessions')");
        assert_eq!(deleted, 2);
        assert_eq!(
            Spi::get_one::<String>("SELECT string_agg(token, ',' ORDER BY token) FROM sessions")
                .unwrap()
                .unwrap(),
            "at_now,live_1s"
        );
    }

    #[pg_test]
    fn grace_keeps_rows_until_it_has_passed() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES
               ('in_grace', now() - interval '59 minutes'), ('past_grace', now() - interval '61 minutes')");
        run("SELECT reaper_register('sessions', grace => '1 hour')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'in_grace'"),
            1
        );
    }

    #[pg_test]
    fn ttl_mode_reads_the_column_as_a_creation_time() {
        sessions_table();
        run("INSERT INTO sessions (token, created_at, expires_at) VALUES
               ('young', now() - interval '7 days' + interval '1 minute', now() + interval '1 year'),
               ('old', now() - interval '7 days' - interval '1 minute', now() + interval '1 year')");
        run("SELECT reaper_register('sessions', 'created_at', ttl => '7 days')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'young'"),
            1
        );
    }

    #[pg_test]
    fn predicate_limits_what_is_deleted() {
        sessions_table();
        run("INSERT INTO sessions (token, pinned, expires_at) VALUES
               ('pinned', true, now() - interval '1 day'), ('loose', false, now() - interval '1 day')");
        run("SELECT reaper_register('sessions', predicate => 'NOT pinned')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'pinned'"),
            1
        );
    }

    /// A `timestamp` column holds wall-clock times in the zone the app writes them in. On a server
    /// west of UTC, reading them as UTC would make a live row look hours old.
    #[pg_test]
    fn timestamp_columns_are_read_in_the_registered_zone() {
        run("SET LOCAL TimeZone = 'America/Los_Angeles'");
        run("CREATE TABLE web_sessions (sid text, expire timestamp NOT NULL)");
        run("INSERT INTO web_sessions VALUES
               ('live', (now() + interval '30 minutes')::timestamp),
               ('dead', (now() - interval '30 minutes')::timestamp)");
        run("SELECT reaper_register('web_sessions', 'expire')");
        assert_eq!(
            Spi::get_one::<String>("SELECT timezone FROM reaper_targets")
                .unwrap()
                .unwrap(),
            "America/Los_Angeles"
        );
        // The reap runs in a session whose TimeZone differs from the app's: it must not matter.
        run("SET LOCAL TimeZone = 'UTC'");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('web_sessions')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM web_sessions WHERE sid = 'live'"),
            1
        );
        // An app that writes UTC (Rails) says so.
        run("CREATE TABLE rails_sessions (id int, expires_at timestamp NOT NULL)");
        run(
            "INSERT INTO rails_sessions VALUES (1, (now() AT TIME ZONE 'UTC') + interval '10 minutes'),
                                               (2, (now() AT TIME ZONE 'UTC') - interval '10 minutes')",
        );
        run("SET LOCAL TimeZone = 'America/Los_Angeles'");
        run("SELECT reaper_register('rails_sessions', timezone => 'UTC')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('rails_sessions')"),
            1
        );
        assert_eq!(count("SELECT id::bigint FROM rails_sessions"), 1);
    }

    #[pg_test]
    fn date_and_epoch_columns() {
        run("CREATE TABLE codes (code text, valid_until date NOT NULL, expires_epoch bigint NOT NULL)");
        run("INSERT INTO codes VALUES
               ('today', current_date, 0),
               ('yesterday', current_date - 1, 0)");
        run("SELECT reaper_register('codes', 'valid_until', timezone => current_setting('TimeZone'))");
        // A date is valid through its whole day: only yesterday's is gone.
        assert_eq!(count("SELECT rows_deleted FROM reaper_purge('codes')"), 1);
        assert_eq!(count("SELECT count(*) FROM codes WHERE code = 'today'"), 1);

        run("CREATE TABLE otp (id int, expires_epoch int NOT NULL)");
        run("INSERT INTO otp VALUES
               (1, floor(extract(epoch FROM now()))::int - 1),
               (2, floor(extract(epoch FROM now()))::int + 1),
               (3, floor(extract(epoch FROM now()))::int)");
        run("SELECT reaper_register('otp', 'expires_epoch')");
        assert_eq!(count("SELECT rows_deleted FROM reaper_purge('otp')"), 1);
        assert_eq!(count("SELECT count(*) FROM otp WHERE id IN (2, 3)"), 2);
    }

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
        let expiry = crate::reap::cursor::Cursor::Expiry(None).statement(&target, 1000, false);
        let plan = plan_of(expiry);
        assert!(plan.contains(r#""Node Type":"Tid Scan""#), "{plan}");
        assert!(plan.contains(r#""Node Type":"Index Scan""#), "{plan}");
        let pages = crate::reap::cursor::Cursor::Pages {
            next: 0,
            span: 20,
            end: 200,
            rows_per_page: 125.0,
        };
        let range_scan = "Tid Range Scan";
        for skip_locked in [false, true] {
            let plan = plan_of(pages.statement(&target, 1000, skip_locked));
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
        let statement = crate::reap::cursor::Cursor::first(&target, 1000, false)
            .statement(&target, 1000, false);
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

    #[pg_test]
    fn only_the_owner_may_register_purge_or_change_a_target() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 day')");
        run("CREATE ROLE reaper_test_owner; CREATE ROLE reaper_test_other; CREATE ROLE reaper_test_member");
        run("GRANT reaper_test_owner TO reaper_test_member");
        run("ALTER TABLE sessions OWNER TO reaper_test_owner");
        run("GRANT SELECT, DELETE ON sessions TO reaper_test_other");
        run("SET LOCAL ROLE reaper_test_other");
        assert_refused(
            "SELECT reaper_register('sessions')",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sessions",
        );
        run("RESET ROLE");
        run("SET LOCAL ROLE reaper_test_member");
        run("SELECT reaper_register('sessions')");
        run("SET LOCAL ROLE reaper_test_other");
        assert_refused(
            "SELECT reaper_purge('sessions')",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_enable('sessions', false)",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_unregister('sessions')",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sessions",
        );
        // It may read the table, so it sees the target; a role that may not, does not.
        assert_eq!(count("SELECT count(*) FROM reaper_stats()"), 1);
        assert_eq!(count("SELECT count(*) FROM reaper_targets"), 1);
        run("RESET ROLE");
        run("CREATE ROLE reaper_test_stranger");
        run("SET LOCAL ROLE reaper_test_stranger");
        assert_eq!(count("SELECT count(*) FROM reaper_stats()"), 0);
        assert_eq!(count("SELECT count(*) FROM reaper_targets"), 0);
        assert_eq!(count("SELECT count(*) FROM reaper_history"), 0);
        run("RESET ROLE");
        run("SET LOCAL ROLE reaper_test_other");
        // Purging everything purges only what the caller owns.
        assert_eq!(count("SELECT count(*) FROM reaper_purge()"), 0);
        // The extension's tables are not writable by others, whoever they are.
        let (code, _) = error_of("DELETE FROM reaper_target");
        assert_eq!(code, ERRCODE_INSUFFICIENT_PRIVILEGE);
        run("SET LOCAL ROLE reaper_test_member");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        run("RESET ROLE");
    }
}
