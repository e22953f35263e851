//! In-crate tests of issue 17's trust rules that one session can show: owner code leaves no
//! setting behind in the caller's session, a batch on a partitioned table stays a batch, a
//! batch that can remove nothing ends the run, a cron target waits for its time, and
//! reaper_wake wakes only what its caller may manage. Each runs in one rolled-back transaction.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::api::tests::tests::{assert_refused, count, run, sessions_table, split_table, text};
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode::*;

    /// alice's table with dead and live rows, and a function of hers that plants session-level
    /// settings: a search_path that puts her schema first, and a work_mem.
    fn alice_and_her_planting_function() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at)
             SELECT 'dead', now() - interval '1 hour' FROM generate_series(1, 10)
             UNION ALL SELECT 'live', now() + interval '1 hour' FROM generate_series(1, 5)");
        run("CREATE ROLE reaper_alice");
        run("CREATE SCHEMA alice AUTHORIZATION reaper_alice");
        run("ALTER TABLE sessions OWNER TO reaper_alice");
        run(
            "CREATE FUNCTION alice.plant() RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN
                 PERFORM pg_catalog.set_config('search_path', 'alice, pg_catalog', false);
                 PERFORM pg_catalog.set_config('work_mem', '77kB', false);
                 RETURN true;
               END $$",
        );
        run("ALTER FUNCTION alice.plant() OWNER TO reaper_alice");
    }

    /// The settings of this session that owner code tried to change.
    fn planted() -> String {
        text("SELECT current_setting('search_path') || ' / ' || current_setting('work_mem')")
    }

    /// Issue 17 item 1: a predicate, a SET list or a trigger of the table's owner runs in the
    /// caller's session (reaper_register's checks, reaper_dry_run, reaper_purge), but nothing it
    /// sets outlives the call — not even a session-level set_config(…, false).
    #[pg_test]
    fn owner_code_leaves_no_setting_behind_in_the_callers_session() {
        alice_and_her_planting_function();
        let before = planted();
        run("SELECT reaper_register('sessions', predicate => 'alice.plant()')");
        assert_eq!(planted(), before, "after reaper_register");
        run("SELECT * FROM reaper_dry_run('sessions')");
        assert_eq!(planted(), before, "after reaper_dry_run");
        run("SELECT * FROM reaper_stats()");
        assert_eq!(planted(), before, "after reaper_stats");
        run(
            "CREATE FUNCTION alice.plant_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM alice.plant(); RETURN OLD; END $$",
        );
        run("ALTER FUNCTION alice.plant_trigger() OWNER TO reaper_alice");
        run("CREATE TRIGGER plant BEFORE DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION alice.plant_trigger()");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            10
        );
        assert_eq!(planted(), before, "after reaper_purge (predicate, trigger)");
        run("ALTER TABLE sessions ADD COLUMN ended boolean NOT NULL DEFAULT false");
        run("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 hour')");
        run("SELECT reaper_register('sessions', action => 'update',
                                    update_set => 'ended = alice.plant()', predicate => 'NOT ended')");
        assert_eq!(planted(), before, "after registering an update");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        assert_eq!(planted(), before, "after an update's SET list ran");
    }

    /// A partitioned table whose partitions hold dead rows at the same physical places.
    fn partitions_with_dead_rows(partitions: i32, dead_each: i32) {
        run("CREATE TABLE tokens (id int NOT NULL, expires_at timestamptz NOT NULL) PARTITION BY RANGE (id)");
        for p in 0..partitions {
            run(&format!(
                "CREATE TABLE tokens_{p} PARTITION OF tokens FOR VALUES FROM ({}) TO ({})",
                p * 100_000,
                (p + 1) * 100_000
            ));
            run(&format!(
                "INSERT INTO tokens SELECT {} + g, now() - interval '1 hour' FROM generate_series(1, {dead_each}) g",
                p * 100_000
            ));
        }
    }

    /// Issue 17 item 7: a batch on a partitioned table acts on the rows it picked, not on the
    /// rows at the same physical places in every partition. Before, `max_rows => 1000` on 8
    /// partitions deleted 8,000 rows in one batch.
    #[pg_test]
    fn a_batch_on_a_partitioned_table_removes_only_the_rows_it_picked() {
        partitions_with_dead_rows(8, 2000);
        run("CREATE INDEX ON tokens (expires_at)");
        run("SELECT reaper_register('tokens', batch_size => 1000)");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('tokens', max_rows => 1000)"),
            1000
        );
        assert_eq!(count("SELECT count(*) FROM tokens"), 15_000);
        // Without an index the batches pick by position from the start: still only their own.
        run("DROP INDEX tokens_expires_at_idx");
        run("SELECT reaper_register('tokens', batch_size => 1000)");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('tokens', max_rows => 1500)"),
            1500
        );
        assert_eq!(count("SELECT count(*) FROM tokens"), 13_500);
        assert_eq!(
            count("SELECT batches FROM reaper_history ORDER BY started_at DESC, finished_at DESC LIMIT 1"),
            2
        );
    }

    /// Issue 17 item 12: batches that pick dead rows but can remove none — a BEFORE DELETE
    /// trigger that returns NULL, a DELETE policy narrower than the SELECT one — end the run
    /// with an error that says why, instead of picking the same rows for ever.
    #[pg_test]
    fn a_run_whose_batches_remove_nothing_ends_with_an_error() {
        sessions_table();
        // Few dead rows among many live ones: batches pick in expiry order (a walk by pages
        // moves on by itself).
        run("INSERT INTO sessions (token, expires_at)
             SELECT 'dead', now() - interval '1 hour' FROM generate_series(1, 300)
             UNION ALL SELECT 'live', now() + interval '1 hour' FROM generate_series(1, 3000)");
        run("CREATE FUNCTION keep_them() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$");
        run("CREATE TRIGGER keep BEFORE DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION keep_them()");
        run("CREATE INDEX ON sessions (expires_at)");
        run("ANALYZE sessions");
        run("SELECT reaper_register('sessions', batch_size => 100)");
        let (status, error) =
            Spi::get_two::<String, String>("SELECT status, error FROM reaper_purge('sessions')")
                .unwrap();
        assert_eq!(status.as_deref(), Some("error"));
        assert!(
            error.as_deref().unwrap_or_default().contains("remove none"),
            "{error:?}"
        );
        assert_eq!(count("SELECT count(*) FROM sessions"), 3300);

        run("DROP TRIGGER keep ON sessions");
        run("CREATE ROLE reaper_rls_keeper");
        run("ALTER TABLE sessions OWNER TO reaper_rls_keeper");
        run("ALTER TABLE sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY");
        run("CREATE POLICY see_all ON sessions FOR SELECT USING (true)");
        run("CREATE POLICY delete_none ON sessions FOR DELETE USING (false)");
        let status = text("SELECT status FROM reaper_purge('sessions')");
        assert_eq!(status, "error");
        assert_eq!(count("SELECT count(*) FROM sessions"), 3300);
    }

    /// Issue 17 item 3: a cron target's first run is its first cron time after registration,
    /// not at once; an interval target's is at once.
    #[pg_test]
    fn a_cron_target_first_runs_at_its_next_cron_time() {
        sessions_table();
        run("CREATE TABLE codes (id int, expires_at timestamptz NOT NULL)");
        run("SELECT reaper_register('sessions', schedule => '15 min')");
        run("SELECT reaper_register('codes', schedule => '0 4 * * *')");
        assert_eq!(
            count("SELECT count(*) FROM reaper_stats() WHERE target = 'sessions'::regclass AND next_run_at <= clock_timestamp()"),
            1
        );
        let first_cron = Spi::get_one::<bool>(
            "SELECT s.next_run_at = date_trunc('day', t.registered_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                  + CASE WHEN extract(hour FROM t.registered_at AT TIME ZONE 'UTC') < 4
                                         THEN interval '4 hours' ELSE interval '28 hours' END
               FROM reaper_stats() s JOIN reaper_targets t USING (target)
              WHERE target = 'codes'::regclass",
        )
        .unwrap();
        assert_eq!(
            first_cron,
            Some(true),
            "the next 04:00 UTC after registering"
        );
    }

    /// Issue 17 item 4: reaper_wake wakes only targets its caller may manage: naming another
    /// owner's target is refused, and "every target" means every target the caller manages.
    #[pg_test]
    fn reaper_wake_wakes_only_what_its_caller_may_manage() {
        sessions_table();
        run("CREATE ROLE reaper_wake_owner; CREATE ROLE reaper_wake_other");
        run("ALTER TABLE sessions OWNER TO reaper_wake_owner");
        run("GRANT SELECT ON sessions TO reaper_wake_other");
        run("SELECT reaper_register('sessions', schedule => '1 day')");
        run("SELECT reaper_purge('sessions')");
        let due = "SELECT count(*) FROM reaper_stats() WHERE next_run_at <= now()";
        assert_eq!(count(due), 0, "ran just now, next in a day");
        run("SET LOCAL ROLE reaper_wake_other");
        assert_refused(
            "SELECT reaper_wake('sessions')",
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sessions",
        );
        assert_eq!(count("SELECT reaper_wake()"), 0);
        assert_eq!(count(due), 0, "nothing was woken by another role");
        run("RESET ROLE");
        run("SET LOCAL ROLE reaper_wake_owner");
        assert_eq!(count("SELECT reaper_wake('sessions')"), 1);
        assert_eq!(count(due), 1, "the owner's wake makes it due now");
        run("RESET ROLE");
    }

    /// Deferred triggers fire at commit as the role current then (PostgreSQL 14-17): owner
    /// code must not queue one in the caller's transaction. Postgres refuses to defer a trigger
    /// from a security-restricted operation, which is how owner code runs, so a purge of a table
    /// with a deferred trigger fails and deletes nothing. (The worker, in a transaction of its
    /// own, makes such triggers immediate: trust.rs.)
    #[pg_test]
    fn a_purge_never_leaves_the_owners_deferred_trigger_to_the_callers_commit() {
        alice_and_her_planting_function();
        run(
            "CREATE FUNCTION alice.later() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RETURN NULL; END $$",
        );
        run("ALTER FUNCTION alice.later() OWNER TO reaper_alice");
        run(
            "CREATE CONSTRAINT TRIGGER later AFTER DELETE ON sessions DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION alice.later()",
        );
        run("SELECT reaper_register('sessions')");
        let error = text("SELECT status || ': ' || error FROM reaper_purge('sessions')");
        assert_eq!(
            error,
            "error: cannot fire deferred trigger within security-restricted operation"
        );
        let dead = "SELECT count(*) FROM sessions WHERE expires_at < now()";
        assert_eq!(count(dead), 10, "the failed purge deleted nothing");
    }

    /// Review of issue 17: a partition bound read back in the caller's DateStyle and TimeZone
    /// must be the same instant. `IST` (here a POSIX zone one hour east of UTC, like Dublin's
    /// summer) reads back as Israel's +02 under a non-ISO DateStyle: the bound an hour early,
    /// and a partition that still holds a live row was dropped.
    #[pg_test]
    fn a_partition_bound_reads_back_the_same_whatever_the_datestyle() {
        run("SET LOCAL TimeZone = 'IST-1'");
        split_table("p", "id int, expires_at timestamptz NOT NULL", "30 minutes");
        run("INSERT INTO p VALUES (1, now() - interval '1 hour'), (2, now() + interval '10 minutes')");
        // The partitions were made in ISO style; the reap runs in a session whose style differs.
        run("SET LOCAL DateStyle = 'SQL, DMY'");
        run("SELECT reaper_register('p', action => 'drop_partitions')");
        assert_eq!(
            count("SELECT cardinality(partitions_to_drop) FROM reaper_dry_run('p')"),
            0
        );
        run("SELECT reaper_purge('p')");
        assert_eq!(
            count("SELECT count(*) FROM p WHERE id = 2"),
            1,
            "the live row stays"
        );
        assert_eq!(
            count("SELECT count(*) FROM p WHERE id = 1"),
            0,
            "the dead row goes"
        );
    }
}
