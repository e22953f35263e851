//! The reaper's processes against other roles and against faults (issue 17, items 2, 8 and 10):
//! a DROP DATABASE that Postgres refuses stops no worker, and one that fails later gives the
//! worker back at once; databases without the extension never use up the worker slots, and a
//! database left without one is named in a WARNING; a cancel outside a batch cancels nothing,
//! and a worker that keeps failing is restarted with a growing back-off.

use postgres::Client;
use session_reaper_harness::{
    count, error_of, expired, sessions_table, wait_until, with_reaper, Cluster, SOON,
};
use std::time::{Duration, Instant};

/// How soon a worker that should still be running, or running again, must reap new rows.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A cluster (`reaper.interval = 1s`, plus `conf`) with a database `app` whose registered
/// `sessions` table the worker has drained; the client is connected to `postgres`.
fn cluster_with_app(name: &str, conf: &[&str]) -> (Cluster, Client) {
    let mut lines = vec!["reaper.interval = '1s'"];
    lines.extend_from_slice(conf);
    let pg = Cluster::start(name, &lines);
    let mut admin = pg.connect("postgres");
    reaped_app(&pg, &mut admin, "app's worker drained its table");
    (pg, admin)
}

/// Creates the database `app` with the extension and a registered `sessions` table, and waits
/// (saying `what`) until its worker has drained it.
fn reaped_app(pg: &Cluster, admin: &mut Client, what: &str) {
    admin.batch_execute("CREATE DATABASE app").unwrap();
    let mut app = pg.connect("app");
    app.batch_execute("CREATE EXTENSION session_reaper")
        .unwrap();
    sessions_table(&mut app, "sessions", 100, 10);
    app.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until(what, SOON, || expired(&mut app, "sessions") == 0);
}

/// The pid of `dbname`'s worker now, or 0.
fn worker_now(admin: &mut Client, dbname: &str) -> i32 {
    admin
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'session_reaper worker' AND datname = $1",
            &[&dbname],
        )
        .unwrap()
        .map_or(0, |r| r.get(0))
}

/// Adds expired rows to app's `sessions` and waits (PROMPTLY) until a worker has deleted them.
fn still_reaps(pg: &Cluster, what: &str) {
    let mut app = pg.connect("app");
    app.batch_execute(
        "INSERT INTO sessions (token, expires_at)
           SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 20)",
    )
    .unwrap();
    wait_until(what, PROMPTLY, || expired(&mut app, "sessions") == 0);
}

/// Issue 17 item 2: a DROP DATABASE that Postgres refuses — by a role that does not own the
/// database, inside a transaction block or a function, or of the current database — leaves the
/// database's worker running and reaping; the owner's real DROP DATABASE still succeeds, and
/// does not fail with "being accessed by other users".
#[test]
fn issue17_item2_a_refused_drop_database_stops_no_worker() {
    let (pg, mut admin) = cluster_with_app("tp_refused_drop", &[]);
    admin.batch_execute("CREATE ROLE mallory LOGIN").unwrap();
    let pid = pg.worker_pid("app");
    let mut mallory = pg.connect_as("postgres", "mallory");
    for _ in 0..3 {
        let (code, message) = error_of(mallory.batch_execute("DROP DATABASE app"));
        assert_eq!(code, "42501", "{message}");
        assert_eq!(worker_now(&mut admin, "app"), pid, "mallory stopped it");
    }
    // The owner (a superuser), where Postgres refuses the statement itself.
    let mut tx = admin.transaction().unwrap();
    let (code, message) = error_of(tx.batch_execute("DROP DATABASE app"));
    assert_eq!(code, "25001", "{message}");
    tx.rollback().unwrap();
    let (code, message) =
        error_of(admin.batch_execute("DO $$ BEGIN EXECUTE 'DROP DATABASE app'; END $$"));
    assert_eq!(code, "25001", "{message}");
    let (code, message) = error_of(pg.connect("app").batch_execute("DROP DATABASE app"));
    assert_eq!(code, "55006", "{message}");
    assert_eq!(
        worker_now(&mut admin, "app"),
        pid,
        "a refused drop stopped it"
    );
    still_reaps(&pg, "the worker still reaps after the refused drops");
    assert_eq!(worker_now(&mut admin, "app"), pid);
    // An owner who is not a superuser drops it: the worker is stopped for a drop that happens.
    admin
        .batch_execute("CREATE ROLE alice LOGIN; ALTER DATABASE app OWNER TO alice")
        .unwrap();
    pg.connect_as("postgres", "alice")
        .batch_execute("DROP DATABASE app")
        .expect("the owner's DROP DATABASE of a reaped database");
}

/// Issue 17 item 2: a DROP DATABASE that fails after the worker was stopped (another session is
/// connected, no FORCE) gives the database its worker back at once, not after a hold.
#[test]
fn issue17_item2_a_drop_that_fails_later_gives_the_worker_back_at_once() {
    let (pg, mut admin) = cluster_with_app("tp_failed_drop", &[]);
    let pid = pg.worker_pid("app");
    let other = pg.connect("app");
    let (code, message) = error_of(admin.batch_execute("DROP DATABASE app"));
    assert_eq!(code, "55006", "{message}");
    assert!(message.contains("other users"), "{message}");
    let failed_at = Instant::now();
    wait_until("app has a worker again", PROMPTLY, || {
        worker_now(&mut admin, "app") != 0
    });
    println!(
        "a worker ran again {:?} after the failed drop",
        failed_at.elapsed()
    );
    assert_ne!(
        worker_now(&mut admin, "app"),
        pid,
        "the first one was stopped"
    );
    still_reaps(&pg, "the new worker reaps");
    drop(other);
    admin
        .batch_execute("DROP DATABASE app")
        .expect("the drop succeeds once the other session is gone");
}

/// Databases `{prefix}000`… without the extension; prints how long they took.
fn empty_databases(admin: &mut Client, prefix: &str, n: usize) {
    let started = Instant::now();
    for i in 0..n {
        admin
            .batch_execute(&format!("CREATE DATABASE {prefix}{i:03}"))
            .unwrap();
    }
    println!("{n} CREATE DATABASE took {:?}", started.elapsed());
}

/// Issue 17 item 8: more databases without the extension than there are worker slots (128) do
/// not keep a database that has it from getting a worker.
#[test]
fn issue17_item8_databases_without_the_extension_hold_no_worker_slot() {
    let pg = Cluster::start(
        "tp_many_empty",
        &["reaper.interval = '1s'", "max_worker_processes = 200"],
    );
    let mut admin = pg.connect("postgres");
    empty_databases(&mut admin, "empty", 140);
    let started = Instant::now();
    // Its CREATE EXTENSION makes the launcher look at all 142 databases.
    reaped_app(&pg, &mut admin, "app, the 142nd database, is reaped");
    println!(
        "app was reaped {:?} after it was created",
        started.elapsed()
    );
    let workers =
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'";
    wait_until("only app keeps a worker", SOON, || {
        count(&mut admin, workers) == 1
    });
    assert_eq!(pg.log_lines("gets no worker"), 0, "{}", pg.log());
}

/// Issue 17 item 8: when every slot is held by a database with the extension, the database
/// left over is named in one WARNING (not one per rescan), and gets a worker as soon as a slot
/// frees up.
#[test]
fn issue17_item8_a_database_left_without_a_slot_is_named_once_and_served_later() {
    let pg = Cluster::start(
        "tp_no_slot",
        &["reaper.interval = '1s'", "max_worker_processes = 200"],
    );
    let mut admin = pg.connect("postgres");
    let started = Instant::now();
    let names: Vec<String> = (0..129).map(|i| format!("reaped{i:03}")).collect();
    for name in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        pg.connect(name)
            .batch_execute("CREATE EXTENSION session_reaper")
            .unwrap();
    }
    println!(
        "129 databases with the extension took {:?}",
        started.elapsed()
    );
    let workers =
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'";
    wait_until("128 workers run", SOON, || {
        count(&mut admin, workers) == 128
    });
    wait_until("the database left over is named", SOON, || {
        pg.log_lines("gets no worker") == 1
    });
    let left_over = names
        .iter()
        .find(|name| worker_now(&mut admin, name) == 0)
        .expect("one database has no worker")
        .clone();
    assert!(
        pg.log_lines(&format!("database \"{left_over}\" gets no worker")) == 1,
        "{}",
        pg.log()
    );
    // More rescans (each CREATE EXTENSION commit asks for one) say nothing new.
    for _ in 0..3 {
        pg.connect(&left_over)
            .batch_execute("DROP EXTENSION session_reaper; CREATE EXTENSION session_reaper")
            .unwrap();
    }
    // A slot frees up: the database left over gets it, at once.
    let giver = names.iter().find(|n| **n != left_over).unwrap();
    pg.connect(giver)
        .batch_execute("DROP EXTENSION session_reaper")
        .unwrap();
    wait_until(
        &format!("{left_over} gets the freed slot"),
        PROMPTLY,
        || worker_now(&mut admin, &left_over) != 0,
    );
    // The launcher handled the rescans above before the one that gave the slot.
    assert_eq!(pg.log_lines("gets no worker"), 1, "warned once");
}

/// Cancels `pid` with pg_cancel_backend.
fn cancel(admin: &mut Client, pid: i32) {
    let sent: bool = admin
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(sent, "pg_cancel_backend({pid})");
}

/// Issue 17 item 10: pg_cancel_backend of an idle worker cancels nothing: the same process
/// goes on reaping.
#[test]
fn issue17_item10_a_cancel_of_an_idle_worker_cancels_nothing() {
    let (pg, mut admin) = cluster_with_app("tp_cancel_idle", &[]);
    let pid = pg.worker_pid("app");
    for round in 0..3 {
        cancel(&mut admin, pid);
        still_reaps(&pg, &format!("the worker reaps after cancel {round}"));
        assert_eq!(
            worker_now(&mut admin, "app"),
            pid,
            "cancel {round} ended it"
        );
    }
    assert_eq!(
        pg.log_lines(&format!("[{pid}] 57014 ERROR")),
        0,
        "{}",
        pg.log()
    );
}

/// Issue 17 item 10: pg_cancel_backend of a worker sleeping between batches
/// (`reaper.batch_delay`) cancels nothing: the same process finishes the run.
#[test]
fn issue17_item10_a_cancel_between_batches_cancels_nothing() {
    let (pg, mut admin) = with_reaper("tp_cancel_pause", &["reaper.batch_delay = '2s'"]);
    let mut db = pg.connect("postgres");
    sessions_table(&mut db, "sessions", 60, 10);
    db.execute("SELECT reaper_register('sessions', batch_size => 10)", &[])
        .unwrap();
    let pid = pg.worker_pid("postgres");
    let pausing =
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'Extension'";
    for round in 0..2 {
        let before = expired(&mut db, "sessions");
        wait_until("the worker pauses after a batch", SOON, || {
            expired(&mut db, "sessions") < before
                && admin.query_one(pausing, &[&pid]).unwrap().get::<_, i64>(0) == 1
        });
        cancel(&mut admin, pid);
        let after = expired(&mut db, "sessions");
        wait_until("the run goes on after the cancel", SOON, || {
            expired(&mut db, "sessions") < after || after == 0
        });
        assert_eq!(
            worker_now(&mut admin, "postgres"),
            pid,
            "cancel {round} ended the worker"
        );
    }
    wait_until("the backlog is gone", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    assert_eq!(worker_now(&mut admin, "postgres"), pid);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'live'"
        ),
        10
    );
}

/// The times (seconds since midnight, from `%m`) of the server log lines that contain `text`.
fn log_times(pg: &Cluster, text: &str) -> Vec<f64> {
    pg.log()
        .lines()
        .filter(|l| l.contains(text))
        .filter_map(|l| {
            let clock = l.split_whitespace().nth(1)?;
            let mut parts = clock.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .collect()
}

/// Issue 17 item 10: a worker that keeps exiting with an error is restarted after 1 s, 2 s,
/// 4 s…, not at once; once the fault is gone it reaps again. The fault is a real one: with
/// `exit_on_error` set for the database, the target's predicate raising an ERROR ends the
/// worker process with FATAL.
#[test]
fn issue17_item10_a_worker_that_keeps_failing_is_restarted_with_a_back_off() {
    let (pg, mut admin) = cluster_with_app("tp_backoff", &[]);
    let mut app = pg.connect("app");
    app.batch_execute(
        "CREATE TABLE fail_switch (on_purpose boolean);
         CREATE FUNCTION boom() RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM fail_switch) THEN RAISE EXCEPTION 'boom on purpose'; END IF;
           RETURN true;
         END $$;",
    )
    .unwrap();
    app.execute(
        "SELECT reaper_register('sessions', predicate => 'boom()')",
        &[],
    )
    .unwrap();
    app.batch_execute(
        "INSERT INTO fail_switch VALUES (true);
         INSERT INTO sessions (token, expires_at)
           SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 20);",
    )
    .unwrap();
    drop(app);
    // New sessions of app, the next worker among them, end on any ERROR.
    admin
        .batch_execute("ALTER DATABASE app SET exit_on_error = on")
        .unwrap();
    let first = pg.worker_pid("app");
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    wait_until(
        "the worker failed four times",
        Duration::from_secs(60),
        || log_times(&pg, "FATAL:  boom on purpose").len() >= 4,
    );
    let times = log_times(&pg, "FATAL:  boom on purpose");
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    println!("seconds between failures: {gaps:?}");
    for (i, gap) in gaps.iter().take(3).enumerate() {
        let backoff = f64::from(1u32 << (i + 1));
        assert!(
            *gap >= backoff * 0.9,
            "failure {} came {gap:.2} s after the one before, under the {backoff} s back-off: {gaps:?}",
            i + 2
        );
    }
    assert!(
        pg.log_lines("again after 3 error exits in a row") >= 1,
        "the launcher says why it waited: {}",
        pg.log()
    );
    // The back-off is in the worker's slot, which reaper_stats() shows (now 16 s long).
    let mut app = pg.connect("app");
    let backing_off = "SELECT count(*) FROM reaper_stats() \
         WHERE worker_state = 'restarting after an error' AND worker_pid IS NULL";
    wait_until("reaper_stats() shows the back-off", SOON, || {
        count(&mut app, backing_off) > 0
    });
    drop(app);
    // The fault goes: the next restart stays up and reaps.
    admin
        .batch_execute("ALTER DATABASE app RESET exit_on_error")
        .unwrap();
    pg.connect("app")
        .batch_execute("DELETE FROM fail_switch")
        .unwrap();
    let mut app = pg.connect("app");
    wait_until(
        "the restarted worker reaps",
        Duration::from_secs(60),
        || expired(&mut app, "sessions") == 0,
    );
}
