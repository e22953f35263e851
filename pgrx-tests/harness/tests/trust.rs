//! Issue 17's trust rules as a real worker keeps them: owner code leaves nothing behind in the
//! worker's session, targets run when their schedules say and wake-ups shorten no pause, a
//! rule changed mid-run binds the next batch, no queued target starves, the steps after a run
//! are bounded, and every ending of a run is recorded as what it was.

use session_reaper_harness::{count, expired, sessions_table, wait_until, with_reaper, SOON};
use std::time::{Duration, Instant};

/// Issue 17 item 1, in the worker: a predicate that sets `default_transaction_read_only` for
/// the session must not leave the worker's later transactions read-only, so the target
/// registered after it is still reaped, and so is its own table on every run.
#[test]
fn a_predicate_that_sets_read_only_does_not_break_the_next_target() {
    let (_pg, mut db) = with_reaper("trust_readonly", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "first", 50, 5);
    sessions_table(&mut db, "second", 50, 5);
    db.batch_execute(
        "CREATE FUNCTION go_read_only() RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN PERFORM set_config('default_transaction_read_only', 'on', false); RETURN true; END $$;
         SELECT reaper_register('first', predicate => 'public.go_read_only()');
         SELECT reaper_register('second');",
    )
    .unwrap();
    wait_until("both tables were reaped", SOON, || {
        expired(&mut db, "first") == 0 && expired(&mut db, "second") == 0
    });
    sessions_more(&mut db, "first");
    sessions_more(&mut db, "second");
    wait_until("both tables were reaped again", SOON, || {
        expired(&mut db, "first") == 0 && expired(&mut db, "second") == 0
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE status <> 'ok'"
        ),
        0,
        "no run failed (a read-only transaction cannot record a run)"
    );
}

/// A table with a deferred trigger (a constraint trigger INITIALLY DEFERRED, as a deferrable
/// foreign key's is) is reaped: Postgres refuses to defer a trigger from owner code (a
/// security-restricted operation; deferred to the commit, PostgreSQL 14-17 would run it as the
/// worker's superuser), so the worker's batches make constraints immediate, and the trigger
/// runs at the end of the DELETE as the owner, leaving none of its settings behind.
#[test]
fn a_deferred_trigger_runs_as_the_tables_owner_not_as_the_worker() {
    let (_pg, mut db) = with_reaper("trust_deferred", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "sessions", 100, 5);
    db.batch_execute(
        "CREATE ROLE bob;
         CREATE TABLE seen (who text, superuser boolean);
         CREATE FUNCTION note_who() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO seen SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
             PERFORM set_config('default_transaction_read_only', 'on', false);
             RETURN NULL;
           END $$;
         CREATE CONSTRAINT TRIGGER who AFTER DELETE ON sessions DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION note_who();
         ALTER TABLE sessions OWNER TO bob;
         ALTER TABLE seen OWNER TO bob;
         ALTER FUNCTION note_who() OWNER TO bob;
         SELECT reaper_register('sessions');",
    )
    .unwrap();
    wait_until("the worker recorded its run", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE rows > 0",
        ) == 1
    });
    assert_eq!(expired(&mut db, "sessions"), 0);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM seen"),
        100,
        "one per row"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM seen WHERE who <> 'bob' OR superuser"
        ),
        0,
        "every deferred trigger ran as bob"
    );
    // Its session-level setting did not outlive the trigger: the run was recorded as ok.
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE status <> 'ok'"
        ),
        0
    );
}

/// A fresh `sessions` table of 50,000 dead rows, registered in batches of 100, once the
/// worker has begun on it: a run of several seconds.
fn a_long_run_under_way(db: &mut postgres::Client) {
    sessions_table(db, "sessions", 50_000, 5);
    db.batch_execute("SELECT reaper_register('sessions', batch_size => 100)")
        .unwrap();
    wait_until("the worker is mid-run", SOON, || {
        count(db, "SELECT count(*) FROM sessions") < 49_000
    });
}

/// A transaction that unregisters a target the worker is reaping, then drops its table, must
/// not deadlock with the worker's batch, which holds the table when it notes its progress: a
/// registration being deleted is not waited for (lock_timeout is raised so that only a
/// deadlock could end a wait). A plain DROP mid-run neither.
#[test]
fn unregistering_then_dropping_a_table_mid_run_does_not_deadlock_with_the_worker() {
    let (pg, mut db) = with_reaper(
        "trust_unregister_drop",
        &["reaper.interval = '1h'", "reaper.lock_timeout = '10s'"],
    );
    a_long_run_under_way(&mut db);
    db.batch_execute(
        "BEGIN;
         SELECT reaper_unregister('sessions');
         SELECT pg_sleep(3);
         DROP TABLE sessions;
         COMMIT;",
    )
    .expect("unregister and drop in one transaction");
    wait_until("the worker is idle again", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'session_reaper worker' AND wait_event_type = 'Lock'",
        ) == 0
    });
    // A plain DROP mid-run: it takes the table, then its event trigger the registration. Held
    // uncommitted until the worker's next batch waits for it, then committed: the batch must
    // find the target gone, not its DELETE the table (CI-like load once let it, as 42P01).
    a_long_run_under_way(&mut db);
    let pid = pg.worker_pid("postgres");
    let relid = count(&mut db, "SELECT 'sessions'::regclass::oid::bigint");
    let mut dropper = pg.connect("postgres");
    dropper
        .batch_execute("BEGIN; DROP TABLE sessions")
        .expect("a DROP mid-run");
    wait_until("the worker's batch waits for the DROP", SOON, || {
        count(
            &mut db,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE pid = {pid} AND NOT granted
                   AND locktype = 'relation' AND relation = {relid}"
            ),
        ) == 1
    });
    dropper.batch_execute("COMMIT").unwrap();
    // Sleeping again (on its latch): whatever that batch ended in has been logged.
    wait_until("the worker sleeps again", SOON, || {
        count(
            &mut db,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'Extension'"
            ),
        ) == 1
    });
    // The runs end quietly: their target is gone, which is no error.
    assert_eq!(pg.log_lines("WARNING:  session_reaper"), 0, "{}", pg.log());
}

/// Ten more dead rows in `table`.
fn sessions_more(db: &mut postgres::Client, table: &str) {
    db.batch_execute(&format!(
        "INSERT INTO {table} (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 10)"
    ))
    .unwrap();
}

/// The cron expression of a daily run at the UTC hour twelve hours from now.
fn cron_twelve_hours_away(db: &mut postgres::Client) -> String {
    let hour: f64 = db
        .query_one(
            "SELECT extract(hour FROM (now() + interval '12 hours') AT TIME ZONE 'UTC')::float8",
            &[],
        )
        .unwrap()
        .get(0);
    format!("0 {hour} * * *")
}

/// Issue 17 item 3: a cron target runs at its cron time only — not when it is registered, not
/// when another table is registered, enabled or changed, and not on a wake-up of another
/// target; a wake naming it runs it.
#[test]
fn a_cron_target_runs_on_its_schedule_and_wakes_run_only_what_they_name() {
    let (_pg, mut db) = with_reaper("trust_cron", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "nightly", 40, 5);
    sessions_table(&mut db, "other", 40, 5);
    let cron = cron_twelve_hours_away(&mut db);
    db.execute(
        "SELECT reaper_register('nightly', schedule => $1)",
        &[&cron],
    )
    .unwrap();
    db.batch_execute("SELECT reaper_register('other')").unwrap();
    wait_until("the interval target ran at once", SOON, || {
        expired(&mut db, "other") == 0
    });
    for poke in [
        "SELECT reaper_register('other', grace => '1 second')",
        "SELECT reaper_enable('other', false)",
        "SELECT reaper_enable('other', true)",
        "SELECT reaper_wake('other')",
    ] {
        db.batch_execute(poke).unwrap();
    }
    // The worker has answered the pokes once 'other' was run by the wake that named it.
    wait_until("the wake of 'other' was served", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE target = 'other'::regclass",
        ) >= 2
    });
    assert_eq!(
        expired(&mut db, "nightly"),
        40,
        "the cron target waits for its time"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE target = 'nightly'::regclass"
        ),
        0
    );
    assert_eq!(
        count(&mut db, "SELECT reaper_wake('nightly')"),
        1,
        "a wake naming it runs it"
    );
    wait_until("the wake ran the cron target", SOON, || {
        expired(&mut db, "nightly") == 0
    });
    assert_eq!(count(&mut db, "SELECT count(*) FROM nightly"), 5);
}

/// Issue 17 item 4: reaper_wake() of a role that manages nothing runs nothing: another role's
/// table with an hourly interval is not reaped before its hour.
#[test]
fn reaper_wake_by_another_role_runs_nothing_of_others() {
    let (pg, mut admin) = with_reaper("trust_wake", &["reaper.interval = '1h'"]);
    admin
        .batch_execute(
            "CREATE ROLE owner_role LOGIN; CREATE ROLE mallory LOGIN;
             CREATE SCHEMA owned AUTHORIZATION owner_role; GRANT USAGE ON SCHEMA owned TO mallory;",
        )
        .unwrap();
    let mut owner = pg.connect_as("postgres", "owner_role");
    sessions_table(&mut owner, "owned.sessions", 30, 3);
    owner
        .batch_execute("SELECT reaper_register('owned.sessions')")
        .unwrap();
    wait_until("the first run", SOON, || {
        expired(&mut owner, "owned.sessions") == 0
    });
    sessions_more(&mut owner, "owned.sessions");
    let mut mallory = pg.connect_as("postgres", "mallory");
    assert_eq!(count(&mut mallory, "SELECT reaper_wake()"), 0);
    // A new target runs at once: once it is reaped, the worker has looked after mallory's wake.
    sessions_table(&mut admin, "probe", 10, 0);
    admin
        .batch_execute("SELECT reaper_register('probe')")
        .unwrap();
    wait_until("the probe was reaped", SOON, || {
        expired(&mut admin, "probe") == 0
    });
    assert_eq!(
        expired(&mut owner, "owned.sessions"),
        10,
        "mallory's wake ran nothing of the owner's"
    );
    assert_eq!(count(&mut owner, "SELECT reaper_wake('owned.sessions')"), 1);
    wait_until("the owner's wake ran it", SOON, || {
        expired(&mut owner, "owned.sessions") == 0
    });
}

/// Issue 17 item 3: wake-ups never shorten the pause between batches. With
/// `batch_delay = 2s`, registrations of another table every 100 ms during a run leave the
/// batches at least two seconds apart (up to 8 s when a batch waited for a CPU).
#[test]
fn wake_ups_do_not_shorten_the_pause_between_batches() {
    let (_pg, mut db) = with_reaper(
        "trust_pause",
        &["reaper.interval = '1s'", "reaper.batch_delay = '2s'"],
    );
    sessions_table(&mut db, "big", 5_000, 10);
    sessions_table(&mut db, "poke", 0, 1);
    db.batch_execute("SELECT reaper_register('big', batch_size => 100)")
        .unwrap();
    wait_until("the first batch", SOON, || expired(&mut db, "big") < 5_000);
    let at_start = expired(&mut db, "big");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        db.batch_execute("SELECT reaper_register('poke')").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = at_start - expired(&mut db, "big");
    // Nine seconds hold at most five batch starts two seconds apart.
    assert!(
        gone <= 500,
        "{gone} rows went in 9 s: the pauses were cut short"
    );
    assert!(gone >= 100, "the run went on ({gone} rows)");
}

/// Issue 17 item 5: a rule change reaches a run in progress at its next batch: after
/// reaper_enable(false) no more rows go, and a narrower predicate registered mid-run keeps the
/// rows it protects while the run goes on under it.
#[test]
fn a_rule_changed_mid_run_binds_the_next_batch() {
    let (_pg, mut db) = with_reaper(
        "trust_midrun",
        &["reaper.interval = '1s'", "reaper.batch_delay = '400ms'"],
    );
    sessions_table(&mut db, "sessions", 8_000, 10);
    db.batch_execute("SELECT reaper_register('sessions', batch_size => 200)")
        .unwrap();
    wait_until("the run is under way", SOON, || {
        expired(&mut db, "sessions") < 8_000
    });
    db.batch_execute("SELECT reaper_enable('sessions', false)")
        .unwrap();
    // At most the batch in flight commits after the disable; one or more pauses pass meanwhile.
    let after_disable = expired(&mut db, "sessions");
    std::thread::sleep(Duration::from_millis(2_500));
    let gone = after_disable - expired(&mut db, "sessions");
    assert!(gone <= 200, "{gone} rows went after reaper_enable(false)");

    db.batch_execute("SELECT reaper_enable('sessions', true)")
        .unwrap();
    let even_dead = "SELECT count(*) FROM sessions WHERE expires_at < now() AND id % 2 = 0";
    let before = expired(&mut db, "sessions");
    wait_until("the run is under way again", SOON, || {
        expired(&mut db, "sessions") < before
    });
    db.batch_execute(
        "SELECT reaper_register('sessions', batch_size => 200, predicate => 'id % 2 = 1')",
    )
    .unwrap();
    let even_at_change = count(&mut db, even_dead);
    wait_until(
        "the odd dead rows are gone under the new rule",
        Duration::from_secs(60),
        || {
            count(
                &mut db,
                "SELECT count(*) FROM sessions WHERE expires_at < now() AND id % 2 = 1",
            ) == 0
        },
    );
    let even_left = count(&mut db, even_dead);
    assert!(
        even_at_change - even_left <= 200,
        "{} rows the new predicate protects went after it was registered",
        even_at_change - even_left
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE expires_at > now()"
        ),
        10
    );
}

/// Issue 17 item 9: `reaper.max_runtime` counts from a target's first batch, so targets queued
/// behind a long one still get their turn on every wake.
#[test]
fn targets_queued_behind_a_long_run_are_not_starved() {
    let (_pg, mut db) = with_reaper(
        "trust_starve",
        &[
            "reaper.interval = '1s'",
            "reaper.batch_delay = '200ms'",
            "reaper.max_runtime = '1s'",
        ],
    );
    sessions_table(&mut db, "huge", 200_000, 10);
    db.batch_execute("SELECT reaper_register('huge', batch_size => 100)")
        .unwrap();
    for table in ["small_a", "small_b", "small_c"] {
        sessions_table(&mut db, table, 500, 5);
        db.batch_execute(&format!(
            "SELECT reaper_register('{table}', batch_size => 100)"
        ))
        .unwrap();
    }
    wait_until(
        "every small table is reaped",
        Duration::from_secs(60),
        || {
            ["small_a", "small_b", "small_c"]
                .iter()
                .all(|t| expired(&mut db, t) == 0)
        },
    );
    assert!(
        expired(&mut db, "huge") > 0,
        "the huge table is still going"
    );
}

/// Issue 17 item 14: a run that `reaper.max_runtime` stopped with rows left is recorded as
/// `timeout`, saying so, not `ok`.
#[test]
fn a_run_stopped_by_max_runtime_is_recorded_as_a_timeout() {
    let (_pg, mut db) = with_reaper(
        "trust_runtime",
        &[
            "reaper.interval = '1h'",
            "reaper.batch_delay = '300ms'",
            "reaper.max_runtime = '1s'",
        ],
    );
    sessions_table(&mut db, "sessions", 20_000, 10);
    db.batch_execute("SELECT reaper_register('sessions', batch_size => 100)")
        .unwrap();
    wait_until("the first run is recorded", SOON, || {
        count(&mut db, "SELECT count(*) FROM reaper_history") > 0
    });
    let row = db
        .query_one(
            "SELECT status, error, rows FROM reaper_history ORDER BY started_at LIMIT 1",
            &[],
        )
        .unwrap();
    let (status, error, rows): (String, Option<String>, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(status, "timeout");
    assert!(
        error.unwrap_or_default().contains("reaper.max_runtime"),
        "the error says what stopped it"
    );
    assert!(rows > 0 && rows < 20_000, "{rows}");
    assert_eq!(count(&mut db, "SELECT total_errors FROM reaper_stats()"), 1);
}

/// Issue 17 item 11: ANALYZE after a run is bounded like a batch: a session holding a lock
/// that ANALYZE needs makes it give up after `reaper.lock_timeout`, with a WARNING, and the
/// worker goes on to its other targets.
#[test]
fn analyze_after_a_run_gives_up_on_a_held_lock() {
    let (pg, mut db) = with_reaper(
        "trust_analyze",
        &[
            "reaper.interval = '1s'",
            "reaper.analyze_after = 0.1",
            "reaper.lock_timeout = '500ms'",
        ],
    );
    sessions_table(&mut db, "locked", 1_000, 10);
    db.batch_execute("ANALYZE locked").unwrap();
    let mut holder = pg.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE locked IN SHARE UPDATE EXCLUSIVE MODE")
        .unwrap();
    db.batch_execute("SELECT reaper_register('locked')")
        .unwrap();
    wait_until("the ANALYZE gave up", SOON, || {
        pg.log().contains("locked: ANALYZE")
    });
    sessions_table(&mut db, "next", 100, 1);
    db.batch_execute("SELECT reaper_register('next')").unwrap();
    wait_until("the next target is reaped meanwhile", SOON, || {
        expired(&mut db, "next") == 0
    });
    holder.batch_execute("COMMIT").unwrap();
}

/// Review of issue 17: the lock that keeps two reaps of one table apart is out of SQL's reach.
/// Another role holding the advisory lock that the old key named (`'REAP' << 32 | relid`) for
/// as long as it likes no longer makes the owner's purge and the worker's runs skip.
#[test]
fn no_role_can_hold_the_reapers_lock_from_sql() {
    // A long interval: the registration's run is the worker's only one, so bob's purge never
    // meets a run of the worker (either would then skip, rightly, for the other).
    let (pg, mut admin) = with_reaper("trust_lock", &["reaper.interval = '1h'"]);
    admin
        .batch_execute(
            "CREATE ROLE bob LOGIN; CREATE ROLE mallory LOGIN;
             CREATE SCHEMA b AUTHORIZATION bob;",
        )
        .unwrap();
    let mut bob = pg.connect_as("postgres", "bob");
    sessions_table(&mut bob, "b.sessions", 100, 5);
    let key = count(
        &mut admin,
        "SELECT (x'52454150'::bigint << 32) | 'b.sessions'::regclass::oid::bigint",
    );
    let mut mallory = pg.connect_as("postgres", "mallory");
    mallory
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    bob.batch_execute("SELECT reaper_register('b.sessions')")
        .unwrap();
    wait_until("the worker reaped bob's table", SOON, || {
        expired(&mut bob, "b.sessions") == 0
    });
    sessions_more(&mut bob, "b.sessions");
    let status: String = bob
        .query_one("SELECT status FROM reaper_purge('b.sessions')", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "ok", "bob's purge is not skipped");
    assert_eq!(
        count(
            &mut bob,
            "SELECT count(*) FROM reaper_history WHERE status = 'skipped'"
        ),
        0
    );
}

/// Review of issue 17: the owner of a database who is not a superuser can pg_dump it, targets
/// included (pg_dump reads the extension's config table and its sequence).
#[test]
fn the_database_owner_can_dump_its_database() {
    let (pg, mut admin) = with_reaper("trust_dump", &["reaper.interval = '1h'"]);
    admin.batch_execute("CREATE ROLE bob LOGIN").unwrap();
    admin
        .batch_execute("CREATE DATABASE own OWNER bob")
        .unwrap();
    let mut own = pg.connect("own");
    own.batch_execute("CREATE EXTENSION session_reaper")
        .unwrap();
    let mut bob = pg.connect_as("own", "bob");
    bob.batch_execute("CREATE SCHEMA b").unwrap();
    sessions_table(&mut bob, "b.sessions", 0, 5);
    bob.batch_execute("SELECT reaper_register('b.sessions')")
        .unwrap();
    let out = std::process::Command::new(format!("{}/pg_dump", session_reaper_harness::pg_bin()))
        .args(["-h", pg.dir.to_str().unwrap(), "-p", &pg.port.to_string()])
        .args(["-U", "bob", "own"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_dump as the database owner: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dump.contains("reaper_target"), "the dump holds the targets");
}

/// Review of issue 17: code of a table's owner that catches the statement timeout's cancel and
/// goes on (a trigger looping in an exception block) cannot hold the database's only worker:
/// the launcher stops the worker past the timeout's grace, the next worker disables that
/// target, saying why, and the other targets are reaped again.
#[test]
fn a_batch_that_swallows_its_cancel_is_stopped_and_its_target_disabled() {
    let (pg, mut db) = with_reaper(
        "trust_runaway",
        &["reaper.interval = '1s'", "reaper.statement_timeout = '1s'"],
    );
    sessions_table(&mut db, "stubborn", 10, 1);
    db.batch_execute(
        "CREATE FUNCTION hold_on() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             LOOP
               BEGIN PERFORM pg_sleep(0.1); EXCEPTION WHEN query_canceled THEN NULL; END;
             END LOOP;
           END $$;
         CREATE TRIGGER hold BEFORE DELETE ON stubborn FOR EACH ROW EXECUTE FUNCTION hold_on();
         SELECT reaper_register('stubborn');",
    )
    .unwrap();
    let first = pg.worker_pid("postgres");
    wait_until(
        "the stubborn target is disabled",
        Duration::from_secs(60),
        || {
            count(
                &mut db,
                "SELECT count(*) FROM reaper_targets WHERE target = 'stubborn'::regclass AND NOT enabled",
            ) == 1
        },
    );
    let error: String = db
        .query_one("SELECT last_error FROM reaper_stats()", &[])
        .unwrap()
        .get(0);
    assert!(
        error.contains("reaper.statement_timeout"),
        "the error says why: {error}"
    );
    assert_ne!(pg.worker_pid("postgres"), first, "the worker was replaced");
    assert_eq!(expired(&mut db, "stubborn"), 10);
    sessions_table(&mut db, "fine", 50, 1);
    db.batch_execute("SELECT reaper_register('fine')").unwrap();
    wait_until("the other target is reaped", SOON, || {
        expired(&mut db, "fine") == 0
    });
}

/// Second review of issue 17: a client's open transaction cannot hold the database's worker.
/// alice's `reaper_purge` left open holds her target's lock and its counters' row; the worker
/// skips her target, gives up recording that after `reaper.lock_timeout`, and bob's table,
/// registered after hers, is still reaped.
#[test]
fn an_open_purge_of_one_target_holds_up_no_other() {
    let (pg, mut db) = with_reaper("trust_open_purge", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "alice_t", 10, 1);
    sessions_table(&mut db, "bob_t", 0, 1);
    db.batch_execute("SELECT reaper_register('alice_t'); SELECT reaper_register('bob_t');")
        .unwrap();
    wait_until("both targets ran once", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_stats() WHERE total_runs > 0",
        ) == 2
    });
    let mut alice = pg.connect("postgres");
    alice
        .batch_execute("BEGIN; SELECT * FROM reaper_purge('alice_t');")
        .unwrap();
    sessions_more(&mut db, "alice_t");
    sessions_more(&mut db, "bob_t");
    wait_until(
        "bob's table is reaped while alice's purge is open",
        SOON,
        || expired(&mut db, "bob_t") == 0,
    );
    alice.batch_execute("ROLLBACK").unwrap();
    wait_until(
        "alice's table is reaped once her transaction ends",
        SOON,
        || expired(&mut db, "alice_t") == 0,
    );
}
