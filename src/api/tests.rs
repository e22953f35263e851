//! In-crate tests run inside one transaction of a real Postgres that is rolled back afterwards,
//! so they cover what a single session sees. Each sits beside the code it tests (a `mod tests`
//! at the end of the file, or a `*_tests.rs` sibling); this file holds the helpers they share
//! and the test that spans the API: who may register, purge, change and see a target. Worker
//! behaviour is tested on a real cluster by pgrx-tests/.

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

    /// Creates `table (columns)`, range-partitioned by `expires_at` at now() + `split`: rows
    /// below it go into `{table}_old`, the rest into `{table}_new`.
    pub(crate) fn split_table(table: &str, columns: &str, split: &str) {
        run(&format!(
            "CREATE TABLE {table} ({columns}) PARTITION BY RANGE (expires_at)"
        ));
        run(&format!(
            "DO $$ BEGIN
               EXECUTE format('CREATE TABLE {table}_old PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO (%L)',
                              now() + interval '{split}');
               EXECUTE format('CREATE TABLE {table}_new PARTITION OF {table} FOR VALUES FROM (%L) TO (MAXVALUE)',
                              now() + interval '{split}');
             END $$"
        ));
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
