//! In-crate tests of NULL arguments and of targets under DDL (issue 17 items 6, 13 and 15): each
//! runs in one rolled-back transaction, where event triggers fire as in any session. The
//! WARNING and NOTICE texts are shown by pg_regress (04_ddl); a dump and the worker after a
//! DROP TABLE by pgrx-tests/harness/tests/trust_ddl.rs.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{
        assert_refused, count, error_of, registry, run, sessions_table,
    };
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode::*;

    fn enabled(table: &str) -> bool {
        Spi::get_one::<bool>(&format!(
            "SELECT enabled FROM reaper_targets WHERE target = '{table}'::regclass"
        ))
        .expect("query runs")
        .expect("the target exists")
    }

    fn setting(name: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT current_setting('{name}')"))
            .expect("query runs")
            .unwrap_or_default()
    }

    /// issue 17 item 13: a NULL where a function has no meaning for one is an ERROR 22004
    /// naming the argument and the function, and writes nothing.
    #[pg_test]
    fn null_arguments_are_refused_with_22004_and_change_nothing() {
        sessions_table();
        run("SELECT reaper_register('sessions')");
        for (call, names) in [
            (
                "SELECT reaper_register(NULL)",
                "target must not be NULL in reaper_register",
            ),
            (
                "SELECT reaper_register('sessions', NULL)",
                "column must not be NULL in reaper_register",
            ),
            (
                "SELECT reaper_register('sessions', action => NULL)",
                "action must not be NULL in reaper_register",
            ),
            (
                "SELECT reaper_register('sessions', enabled => NULL)",
                "enabled must not be NULL in reaper_register",
            ),
            (
                "SELECT reaper_unregister(NULL)",
                "target must not be NULL in reaper_unregister",
            ),
            (
                "SELECT reaper_enable(NULL)",
                "target must not be NULL in reaper_enable",
            ),
            (
                "SELECT reaper_enable('sessions', NULL)",
                "enabled must not be NULL in reaper_enable",
            ),
        ] {
            assert_refused(call, ERRCODE_NULL_VALUE_NOT_ALLOWED, names);
        }
        assert!(enabled("sessions"));
    }

    /// issue 17 item 6: DROP TABLE, or DROP SCHEMA … CASCADE, takes the table's target with it;
    /// the other targets stay.
    #[pg_test]
    fn dropping_a_registered_table_removes_its_target() {
        sessions_table();
        run("CREATE TABLE tokens (expires_at timestamptz NOT NULL)");
        run("CREATE SCHEMA app");
        run("CREATE TABLE app.codes (expires_at timestamptz NOT NULL)");
        run("SELECT reaper_register(t) FROM unnest(ARRAY['sessions', 'tokens', 'app.codes']::regclass[]) t");
        run("DROP TABLE sessions");
        run("DROP SCHEMA app CASCADE");
        // As a superuser, a target whose table is gone would still be listed.
        assert_eq!(
            count("SELECT count(*) FROM reaper_targets"),
            1,
            "{}",
            registry()
        );
        assert_eq!(
            count("SELECT count(*) FROM reaper_targets WHERE target = 'tokens'::regclass"),
            1
        );
    }

    /// issue 17 item 6: an archive table that a remaining target moves rows into cannot be
    /// dropped (2BP01, naming both tables); together with the target's table it can.
    #[pg_test]
    fn an_archive_table_in_use_cannot_be_dropped_alone() {
        sessions_table();
        run("CREATE TABLE sessions_archive (LIKE sessions)");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive')");
        let before = registry();
        let (code, message) = error_of("DROP TABLE sessions_archive");
        assert_eq!(code, ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST, "{message}");
        assert!(
            message.contains("\"public.sessions_archive\"")
                && message.contains("\"public.sessions\""),
            "{message}"
        );
        assert_eq!(registry(), before);
        assert_eq!(count("SELECT count(*) FROM sessions_archive"), 0);
        run("DROP TABLE sessions, sessions_archive");
        assert_eq!(registry(), "");
    }

    /// issue 17 item 6: a role that lent its table as another role's archive is not held back
    /// by that role's target: its DROP goes through and takes the target along.
    #[pg_test]
    fn a_lent_archive_table_can_be_dropped_by_its_owner() {
        sessions_table();
        run("CREATE ROLE reaper_test_lender");
        run("CREATE ROLE reaper_test_borrower");
        run("CREATE TABLE lent_archive (LIKE sessions)");
        run("ALTER TABLE lent_archive OWNER TO reaper_test_lender");
        run("ALTER TABLE sessions OWNER TO reaper_test_borrower");
        run("GRANT INSERT ON lent_archive TO reaper_test_borrower");
        run("SELECT reaper_register('sessions', action => 'archive', archive_table => 'lent_archive')");
        run("SET LOCAL ROLE reaper_test_lender");
        // Its ALTER re-checks the borrower's target (as the borrower) and disables it.
        run("ALTER TABLE lent_archive DROP COLUMN pinned");
        run("RESET ROLE");
        assert!(!enabled("sessions"));
        run("SET LOCAL ROLE reaper_test_lender");
        run("DROP TABLE lent_archive");
        run("RESET ROLE");
        assert_eq!(registry(), "");
    }

    /// issue 17 item 15, a guard of the fix rather than of the defect (it passes on 30394c6,
    /// which re-checks nothing): a privilege the owner lacks is not what DDL changes, and a
    /// restore grants privileges after its ALTER TABLEs, so the target stays enabled and its
    /// runs report it.
    #[pg_test]
    fn a_missing_privilege_does_not_disable_the_target() {
        run("CREATE ROLE reaper_test_priv_owner");
        run("CREATE SCHEMA lookup");
        run("CREATE TABLE lookup.devices (id bigint)");
        run("GRANT USAGE ON SCHEMA lookup TO reaper_test_priv_owner");
        run("CREATE TABLE owned_sessions (device_id bigint, expires_at timestamptz NOT NULL)");
        run("ALTER TABLE owned_sessions OWNER TO reaper_test_priv_owner");
        run("SELECT reaper_register('owned_sessions',
                 predicate => 'NOT EXISTS (SELECT 1 FROM lookup.devices d WHERE d.id = device_id)')");
        run("REVOKE USAGE ON SCHEMA lookup FROM reaper_test_priv_owner");
        run("ALTER TABLE owned_sessions ADD COLUMN note text");
        assert!(enabled("owned_sessions"));
    }

    /// issue 17 item 15: renaming the expiry column, a column the predicate uses, or one the SET
    /// list uses, disables the target; a change that leaves the rule valid does not.
    #[pg_test]
    fn renaming_a_column_the_rule_uses_disables_the_target() {
        sessions_table();
        run("CREATE TABLE tokens (expires_at timestamptz NOT NULL)");
        run("CREATE TABLE logins (expires_at timestamptz NOT NULL, ended_at timestamptz)");
        run("CREATE TYPE code_row AS (valid_until timestamptz)");
        run("CREATE TABLE codes OF code_row");
        run("SELECT reaper_register('sessions', predicate => 'NOT pinned')");
        run("SELECT reaper_register('tokens')");
        run("SELECT reaper_register('logins', action => 'update', update_set => 'ended_at = expires_at', predicate => 'true')");
        run("SELECT reaper_register('codes', 'valid_until')");
        run("ALTER TABLE sessions ADD COLUMN note text");
        run("ALTER TABLE sessions RENAME TO sessions2");
        run("ALTER TABLE sessions2 RENAME TO sessions");
        assert!(enabled("sessions"), "a change that keeps the rule valid");
        run("ALTER TABLE sessions RENAME COLUMN pinned TO kept");
        assert!(!enabled("sessions"), "the predicate's column was renamed");
        run("ALTER TABLE tokens RENAME COLUMN expires_at TO valid_until");
        assert!(!enabled("tokens"), "the expiry column was renamed");
        run("ALTER TABLE logins RENAME COLUMN ended_at TO finished_at");
        assert!(!enabled("logins"), "the SET list's column was renamed");
        run("ALTER TYPE code_row RENAME ATTRIBUTE valid_until TO good_until CASCADE");
        assert!(!enabled("codes"), "a typed table's column was renamed");
        // Registering again with the new names enables it.
        run("SELECT reaper_register('tokens', 'valid_until')");
        assert!(enabled("tokens"));
    }

    /// issue 17 item 15: dropping a column the predicate uses (no dependency stops it) or
    /// retyping the expiry column disables the target.
    #[pg_test]
    fn dropping_a_predicate_column_disables_the_target() {
        sessions_table();
        run("CREATE TABLE tokens (expires_at timestamptz NOT NULL)");
        run("SELECT reaper_register('sessions', predicate => 'NOT pinned')");
        run("SELECT reaper_register('tokens')");
        run("ALTER TABLE sessions DROP COLUMN pinned");
        assert!(!enabled("sessions"));
        run("ALTER TABLE tokens ALTER COLUMN expires_at TYPE text");
        assert!(!enabled("tokens"));
    }

    /// issue 17 item 15: the re-check runs as the table's owner, and nothing the owner's code
    /// sets survives it in the session that ran the ALTER TABLE.
    #[pg_test]
    fn the_recheck_leaves_the_session_settings_as_they_were() {
        run("CREATE ROLE reaper_test_ddl_owner");
        run("CREATE SCHEMA owned AUTHORIZATION reaper_test_ddl_owner");
        run(
            "CREATE FUNCTION owned.sneaky() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
                 PERFORM set_config('search_path', 'owned, pg_catalog', false);
                 PERFORM set_config('work_mem', '1234kB', false);
                 RETURN true;
             END $$",
        );
        run("ALTER FUNCTION owned.sneaky() OWNER TO reaper_test_ddl_owner");
        run("CREATE TABLE owned.t (expires_at timestamptz NOT NULL, note text, kind text)");
        run("ALTER TABLE owned.t OWNER TO reaper_test_ddl_owner");
        run(
            "SELECT reaper_register('owned.t', predicate => 'owned.sneaky() AND note IS NOT NULL')",
        );
        run("SET LOCAL ROLE reaper_test_ddl_owner");
        let before = (setting("search_path"), setting("work_mem"));
        run("ALTER TABLE owned.t RENAME COLUMN kind TO sort");
        run("ALTER TABLE owned.t RENAME COLUMN note TO remark");
        assert_eq!((setting("search_path"), setting("work_mem")), before);
        assert_eq!(setting("role"), "reaper_test_ddl_owner");
        run("RESET ROLE");
        assert!(!enabled("owned.t"));
    }

    /// The guard itself: a session-level set_config inside it is undone when it ends.
    #[pg_test]
    fn sealed_settings_undo_session_level_changes() {
        let before = setting("work_mem");
        crate::api::ddl::sealed_settings(|| run("SELECT set_config('work_mem', '4321kB', false)"));
        assert_eq!(setting("work_mem"), before);
    }
}
