//! In-crate tests of target.rs: which rows the SQL a rule becomes takes as dead (expiry, grace,
//! ttl, a predicate, and timestamp, date and epoch columns read in the registered zone). Each
//! runs in one rolled-back transaction, through reaper_register and reaper_purge.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

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
}
