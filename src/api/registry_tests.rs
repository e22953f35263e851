//! In-crate tests of registry.rs: registering a table again keeps its target's id and replaces
//! the rule, and every bad input is refused with its SQLSTATE before anything is written. Each
//! runs in one rolled-back transaction.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{assert_refused, count, error_of, run, sessions_table};
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode::*;

    #[pg_test]
    fn register_returns_a_stable_id_and_replaces_the_rule() {
        sessions_table();
        let first = count("SELECT reaper_register('sessions')");
        let second =
            count("SELECT reaper_register('sessions', grace => '1 hour', batch_size => 50)");
        assert_eq!(first, second);
        assert_eq!(count("SELECT count(*) FROM reaper_targets"), 1);
        assert_eq!(count("SELECT batch_size::bigint FROM reaper_targets"), 50);
    }

    #[pg_test]
    fn bad_inputs_are_refused_with_sqlstate_and_change_nothing() {
        sessions_table();
        run("CREATE TABLE tokens (id int, expires_at text, valid_until numeric)");
        run("CREATE VIEW live_sessions AS SELECT * FROM sessions");
        run("SELECT reaper_register('sessions')");
        let (code, message) = error_of("SELECT reaper_register('no_such_table')");
        assert_eq!(code, ERRCODE_UNDEFINED_TABLE);
        assert!(message.contains("no_such_table"));
        assert_refused(
            "SELECT reaper_register('live_sessions')",
            ERRCODE_WRONG_OBJECT_TYPE,
            "live_sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', 'gone_at')",
            ERRCODE_UNDEFINED_COLUMN,
            "gone_at",
        );
        assert_refused(
            "SELECT reaper_register('tokens')",
            ERRCODE_DATATYPE_MISMATCH,
            "tokens",
        );
        assert_refused(
            "SELECT reaper_register('tokens', 'valid_until')",
            ERRCODE_DATATYPE_MISMATCH,
            "valid_until",
        );
        assert_refused(
            "SELECT reaper_register('sessions', batch_size => 0)",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', batch_size => -5)",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', grace => '-1 hour')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', schedule => 'every tuesday')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', schedule => '61 * * * *')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "61 * * * *",
        );
        assert_refused(
            "SELECT reaper_register('sessions', schedule => '0 seconds')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', timezone => 'UTC')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "expires_at",
        );
        assert_refused(
            "SELECT reaper_register('sessions', action => 'shred')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "shred",
        );
        assert_refused(
            "SELECT reaper_register('sessions', action => 'archive')",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "archive_table",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'pinned = ')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'id + 1')",
            ERRCODE_DATATYPE_MISMATCH,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'no_such_col')",
            ERRCODE_UNDEFINED_COLUMN,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => '')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        // Attempts to leave the parentheses: extra statements, or a wider condition.
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'true); DROP TABLE sessions; SELECT (1')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'false) OR (true')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'true) IS TRUE OR (true')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        assert_refused(
            "SELECT reaper_register('sessions', predicate => 'true) FROM pg_class WHERE (true')",
            ERRCODE_SYNTAX_ERROR,
            "sessions",
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'sessions'"),
            1
        );
        assert_refused(
            "SELECT reaper_purge('sessions', max_rows => 0)",
            ERRCODE_INVALID_PARAMETER_VALUE,
            "max_rows",
        );
        assert_refused(
            "SELECT reaper_unregister('tokens')",
            ERRCODE_UNDEFINED_OBJECT,
            "tokens",
        );
        assert_refused(
            "SELECT reaper_purge('tokens')",
            ERRCODE_UNDEFINED_OBJECT,
            "tokens",
        );
    }
}
