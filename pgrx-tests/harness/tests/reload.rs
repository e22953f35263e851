//! Every `reaper.*` setting changed the way a DBA does — `ALTER SYSTEM` and `pg_reload_conf()`
//! — changes what the *running* worker does (its pid is the same before and after), shown by
//! what it does; bad values are refused with the setting's range; `reaper.database_names` waits
//! for a restart. (`reaper.interval` and `reaper.log_history` reloads are in worker.rs.)

use postgres::Client;
use session_reaper_harness::{
    count, error_of, reload, sessions_table, two_databases_one_named, wait_until, with_reaper,
    Cluster, SOON,
};
use std::time::Duration;

/// What one run recorded in the history.
#[derive(Debug)]
struct Run {
    rows: i64,
    batches: i32,
    seconds: f64,
    status: String,
    error: Option<String>,
}

/// Adds `dead` expired rows to `sessions` and returns the first run that deleted rows or
/// failed after that moment.
fn next_run(db: &mut Client, dead: i64) -> Run {
    let since: f64 = db
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0);
    if dead > 0 {
        db.execute(
            "INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, $1::bigint)",
            &[&dead],
        )
        .unwrap();
    }
    let query = "SELECT rows, batches, extract(epoch FROM duration)::float8, status, error FROM reaper_history
                  WHERE extract(epoch FROM finished_at)::float8 > $1 AND (rows > 0 OR status <> 'ok')
                  ORDER BY finished_at LIMIT 1";
    let mut run = None;
    wait_until("a run after the change is recorded", SOON, || {
        run = db.query_opt(query, &[&since]).unwrap().map(|r| Run {
            rows: r.get(0),
            batches: r.get(1),
            seconds: r.get(2),
            status: r.get(3),
            error: r.get(4),
        });
        run.is_some()
    });
    run.unwrap()
}

/// Changes a setting with ALTER SYSTEM + pg_reload_conf() and returns once the postmaster has
/// re-read it (a new session sees the new value): by then it has signalled the worker, which
/// wakes on that signal and reloads before it does anything else.
fn set(pg: &Cluster, db: &mut Client, name: &str, value: &str) {
    let setting = "SELECT setting FROM pg_settings WHERE name = $1";
    let before: String = pg
        .connect("postgres")
        .query_one(setting, &[&name])
        .unwrap()
        .get(0);
    reload(db, name, value);
    wait_until(
        &format!("the server has reloaded {name} = {value}"),
        SOON,
        || {
            let now: String = pg
                .connect("postgres")
                .query_one(setting, &[&name])
                .unwrap()
                .get(0);
            now != before
        },
    );
    std::thread::sleep(Duration::from_millis(100));
}

fn dead_left(db: &mut Client) -> i64 {
    count(db, "SELECT count(*) FROM sessions WHERE expires_at < now()")
}

/// batch_size, batch_delay, max_rows_per_second, max_runtime, lock_timeout,
/// statement_timeout: each shows in the runs the worker records after the reload.
#[test]
fn reloaded_batch_settings_shape_the_next_run() {
    let (pg, mut db) = with_reaper(
        "reload_batches",
        &[
            "reaper.interval = '1s'",
            "reaper.batch_delay = 0",
            "autovacuum = off",
        ],
    );
    // 20,000 live rows: a few thousand dead ones are a small share, so runs go in expiry
    // order, where every batch but the last deletes exactly its batch size.
    sessions_table(&mut db, "sessions", 0, 20_000);
    db.batch_execute("ANALYZE sessions; SELECT reaper_register('sessions')")
        .unwrap();
    let pid = pg.worker_pid("postgres");

    let run = next_run(&mut db, 1_000);
    assert_eq!(
        (run.rows, run.batches),
        (1_000, 1),
        "default batch_size 10000: {run:?}"
    );
    set(&pg, &mut db, "reaper.batch_size", "100");
    let run = next_run(&mut db, 1_000);
    assert_eq!(run.rows, 1_000);
    assert!(run.batches >= 10, "batch_size 100: {run:?}");

    set(&pg, &mut db, "reaper.batch_delay", "'300ms'");
    let run = next_run(&mut db, 500);
    assert!(run.seconds >= 1.4, "5 pauses of 300 ms: {run:?}");
    set(&pg, &mut db, "reaper.batch_delay", "0");
    let run = next_run(&mut db, 500);
    assert!(run.seconds < 1.0, "no pause: {run:?}");

    set(&pg, &mut db, "reaper.max_rows_per_second", "500");
    let run = next_run(&mut db, 1_000);
    assert!(run.seconds >= 1.6, "1000 rows at 500 rows/s: {run:?}");
    set(&pg, &mut db, "reaper.max_rows_per_second", "0");

    // max_runtime ends the run early; it is recorded as 'timeout' (issue 17 item 14) with the
    // rows it did, and the rest goes in the next runs.
    set(&pg, &mut db, "reaper.batch_delay", "'200ms'");
    set(&pg, &mut db, "reaper.max_runtime", "'500ms'");
    let run = next_run(&mut db, 2_000);
    assert_eq!(run.status, "timeout");
    assert!(
        run.rows > 0 && run.rows < 2_000 && run.seconds < 2.5,
        "max_runtime 500 ms: {run:?}"
    );
    wait_until("later runs finish the rest", SOON, || {
        dead_left(&mut db) == 0
    });
    set(&pg, &mut db, "reaper.max_runtime", "DEFAULT");
    set(&pg, &mut db, "reaper.batch_delay", "0");

    // lock_timeout: with a dead row held by the app, the first batch waits that long, then the
    // run goes on skipping the held row.
    let mut app = pg.connect("postgres");
    set(&pg, &mut db, "reaper.lock_timeout", "'2500ms'");
    // The row is committed before it is locked, so a run may reap it in between: then again.
    let hold = |app: &mut Client| loop {
        app.batch_execute(
            "INSERT INTO sessions (token, expires_at) VALUES ('held', now() - interval '1 minute')",
        )
        .unwrap();
        app.batch_execute("BEGIN").unwrap();
        let held = app
            .query(
                "SELECT 1 FROM sessions WHERE token = 'held' FOR UPDATE",
                &[],
            )
            .unwrap();
        if !held.is_empty() {
            break;
        }
        app.batch_execute("ROLLBACK").unwrap();
    };
    hold(&mut app);
    let run = next_run(&mut db, 100);
    assert_eq!((run.status.as_str(), run.rows), ("ok", 100), "{run:?}");
    assert!(
        run.seconds >= 2.4 && run.seconds < 10.0,
        "waited lock_timeout 2500ms (the default is 1s): {run:?}"
    );
    app.batch_execute("ROLLBACK; DELETE FROM sessions WHERE token = 'held'")
        .unwrap();
    set(&pg, &mut db, "reaper.lock_timeout", "DEFAULT");

    // statement_timeout: shorter than the lock wait, it cancels the batch: a 'timeout' run.
    set(&pg, &mut db, "reaper.lock_timeout", "'10s'");
    set(&pg, &mut db, "reaper.statement_timeout", "'300ms'");
    hold(&mut app);
    let run = next_run(&mut db, 100);
    assert_eq!(run.status, "timeout", "{run:?}");
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains("statement timeout")),
        "{run:?}"
    );
    app.batch_execute("ROLLBACK").unwrap();
    set(&pg, &mut db, "reaper.statement_timeout", "DEFAULT");
    set(&pg, &mut db, "reaper.lock_timeout", "DEFAULT");
    wait_until(
        "the timed-out rows are reaped after the reset",
        SOON,
        || dead_left(&mut db) == 0,
    );
    assert_eq!(pg.worker_pid("postgres"), pid, "one worker did all this");
}

/// enabled, log_runs, analyze_after, history_retention: each observed in what the worker
/// does or leaves after the reload.
#[test]
fn reloaded_switches_change_what_the_worker_does() {
    let (pg, mut db) = with_reaper(
        "reload_switches",
        &[
            "reaper.interval = '1s'",
            "reaper.analyze_after = 0",
            "autovacuum = off",
        ],
    );
    sessions_table(&mut db, "sessions", 0, 20_000);
    db.batch_execute("ANALYZE sessions; SELECT reaper_register('sessions')")
        .unwrap();
    let pid = pg.worker_pid("postgres");

    // enabled = off: the worker does nothing, even when woken; on: it reaps again.
    set(&pg, &mut db, "reaper.enabled", "off");
    let runs = "SELECT total_runs FROM reaper_stats()";
    wait_until("the worker has seen the reload", SOON, || {
        let before = count(&mut db, runs);
        std::thread::sleep(Duration::from_millis(1_500));
        count(&mut db, runs) == before
    });
    db.batch_execute("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 minute'); SELECT reaper_wake();")
        .unwrap();
    let before = count(&mut db, runs);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&mut db, runs),
        before,
        "no run while reaper.enabled = off"
    );
    assert_eq!(dead_left(&mut db), 1);
    set(&pg, &mut db, "reaper.enabled", "on");
    wait_until("reaping resumes when switched on", SOON, || {
        dead_left(&mut db) == 0
    });

    // log_runs: no LOG line for a run that deleted rows, then one again.
    set(&pg, &mut db, "reaper.log_runs", "off");
    assert_eq!(next_run(&mut db, 301).rows, 301);
    assert_eq!(
        pg.log_lines("session_reaper: postgres: public.sessions: deleted 301 rows"),
        0
    );
    set(&pg, &mut db, "reaper.log_runs", "on");
    assert_eq!(next_run(&mut db, 302).rows, 302);
    assert_eq!(
        pg.log_lines("session_reaper: postgres: public.sessions: deleted 302 rows"),
        1
    );

    // analyze_after: 0 never analyzes; 0.01 analyzes after a run removing 5% of the table.
    let analyzed = "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'sessions'";
    let before = count(&mut db, analyzed);
    next_run(&mut db, 1_000);
    next_run(&mut db, 300); // the ANALYZE would come before the next run starts
    assert_eq!(
        count(&mut db, analyzed),
        before,
        "analyze_after = 0 never analyzes"
    );
    set(&pg, &mut db, "reaper.analyze_after", "0.01");
    next_run(&mut db, 1_000);
    wait_until("the table was analyzed after the run", SOON, || {
        count(&mut db, analyzed) > before
    });

    // history_retention: shortened by a reload, older history goes at once (not within the
    // hour the worker otherwise waits between prunes).
    db.batch_execute(
        "INSERT INTO reaper_run (run_id, target_id, relid, trigger, started_at, finished_at, rows, batches, longest_batch, status)
         SELECT gen_random_uuid(), 1, 'sessions'::regclass, 'worker', now() - d * interval '1 hour', now() - d * interval '1 hour', 0, 0, '0', 'ok'
           FROM unnest(ARRAY[12, 50, 100]) d",
    )
    .unwrap();
    let old = "SELECT count(*) FROM reaper_history WHERE started_at < now() - interval '6 hours'";
    assert_eq!(count(&mut db, old), 3);
    set(&pg, &mut db, "reaper.history_retention", "'1d'");
    wait_until("history older than a day was pruned", SOON, || {
        count(&mut db, old) == 1
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE started_at < now() - interval '1 day'"
        ),
        0
    );
    assert_eq!(pg.worker_pid("postgres"), pid, "one worker did all this");
}

/// Every setting refuses a bad value at ALTER SYSTEM with its range, and writes nothing.
#[test]
fn bad_values_are_refused_with_the_range_of_the_setting() {
    let pg = Cluster::start("reload_refused", &[]);
    let mut db = pg.connect("postgres");
    let cases = [
        ("reaper.enabled", "'maybe'", "parameter \"reaper.enabled\" requires a Boolean value"),
        ("reaper.interval", "0", "0 s is outside the valid range for parameter \"reaper.interval\" (1 .. 604800)"),
        ("reaper.batch_size", "0", "0 is outside the valid range for parameter \"reaper.batch_size\" (1 .. 1000000)"),
        ("reaper.batch_delay", "'2min'", "120000 ms is outside the valid range for parameter \"reaper.batch_delay\" (0 .. 60000)"),
        ("reaper.max_runtime", "'10ms'", "10 ms is outside the valid range for parameter \"reaper.max_runtime\" (100 .. 2147483647)"),
        ("reaper.lock_timeout", "0", "0 ms is outside the valid range for parameter \"reaper.lock_timeout\" (1 .. 2147483647)"),
        ("reaper.statement_timeout", "0", "0 ms is outside the valid range for parameter \"reaper.statement_timeout\" (1 .. 2147483647)"),
        ("reaper.history_retention", "0", "0 min is outside the valid range for parameter \"reaper.history_retention\" (1 .. 2147483647)"),
        ("reaper.max_rows_per_second", "-1", "-1 is outside the valid range for parameter \"reaper.max_rows_per_second\" (0 .. 2147483647)"),
        ("reaper.max_replica_lag", "-1", "-1 ms is outside the valid range for parameter \"reaper.max_replica_lag\" (0 .. 2147483647)"),
        ("reaper.analyze_after", "1.5", "1.5 is outside the valid range for parameter \"reaper.analyze_after\" (0 .. 1)"),
        ("reaper.log_history", "'sometimes'", "invalid value for parameter \"reaper.log_history\": \"sometimes\""),
        ("reaper.log_runs", "'loud'", "parameter \"reaper.log_runs\" requires a Boolean value"),
    ];
    let settings = count(
        &mut db,
        "SELECT count(*) FROM pg_settings WHERE name LIKE 'reaper.%'",
    );
    // Every setting but database_names (any list of names is valid) has a case.
    assert_eq!(cases.len() as i64, settings - 1);
    for (name, value, message) in cases {
        let (code, got) = error_of(db.batch_execute(&format!("ALTER SYSTEM SET {name} = {value}")));
        assert_eq!(code, "22023", "{name} = {value}: {got}");
        assert_eq!(got, message, "{name} = {value}");
    }
    let auto_conf = std::fs::read_to_string(pg.dir.join("data/postgresql.auto.conf")).unwrap();
    assert!(
        !auto_conf.contains("reaper."),
        "nothing was written: {auto_conf}"
    );
}

/// database_names is read at server start: a reload leaves it (and the workers) as they are,
/// with Postgres' own LOG line; a restart applies it.
#[test]
fn database_names_changes_with_a_restart_not_a_reload() {
    let (pg, mut admin) = two_databases_one_named("reload_names");
    let workers = "SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '') FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'";
    let running = |admin: &mut Client| -> String { admin.query_one(workers, &[]).unwrap().get(0) };
    wait_until("app_one has its worker", SOON, || {
        running(&mut admin) == "app_one"
    });
    reload(&mut admin, "reaper.database_names", "'app_two'");
    wait_until("Postgres says a restart is needed", SOON, || {
        pg.log_lines(
            "parameter \"reaper.database_names\" cannot be changed without restarting the server",
        ) > 0
    });
    let shown: String = pg
        .connect("postgres")
        .query_one("SHOW reaper.database_names", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "app_one");
    let mut two = pg.connect("app_two");
    assert_eq!(count(&mut two, "SELECT count(*) FROM sessions"), 100);
    assert_eq!(running(&mut admin), "app_one");
    drop((admin, two));
    pg.pg_ctl(&["restart", "-m", "fast", "-w"]);
    let mut two = pg.reconnect("app_two");
    wait_until("after the restart app_two is reaped", SOON, || {
        count(&mut two, "SELECT count(*) FROM sessions") == 0
    });
    let mut admin = pg.connect("postgres");
    assert_eq!(running(&mut admin), "app_two");
}

/// max_replica_lag: a standby that applies WAL 3 s late (recovery_min_apply_delay) makes the
/// worker pause between batches once the reload sets a ceiling below that lag, and reaping goes
/// on when the ceiling is lifted again.
#[test]
fn reloaded_max_replica_lag_pauses_the_worker_behind_a_late_standby() {
    let (primary, mut db) = with_reaper(
        "lag_primary",
        &["reaper.interval = '1s'", "reaper.batch_delay = '50ms'"],
    );
    sessions_table(&mut db, "sessions", 0, 1_000);
    db.execute(
        "SELECT reaper_register('sessions', batch_size => 1000)",
        &[],
    )
    .unwrap();
    let standby = Cluster::standby_of(&primary, "lag_standby");
    reload(
        &mut standby.connect("postgres"),
        "recovery_min_apply_delay",
        "'3s'",
    );
    let pid = primary.worker_pid("postgres");
    let state = "SELECT worker_state FROM reaper_stats()";
    let replay_lag =
        "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication";
    let backlog = "INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 50000)";
    // Without a ceiling the worker reaps straight through, the standby lagging behind.
    db.batch_execute(backlog).unwrap();
    wait_until("the backlog is reaped with no ceiling", SOON, || {
        dead_left(&mut db) == 0
    });
    let lagged: f64 = db.query_one(replay_lag, &[]).unwrap().get(0);
    assert!(lagged > 1.0, "the standby lags ({lagged} s)");
    set(&primary, &mut db, "reaper.max_replica_lag", "'500ms'");
    db.batch_execute(backlog).unwrap();
    let mut lag = 0.0;
    wait_until("the worker pauses for the lagging standby", SOON, || {
        let s: String = db.query_one(state, &[]).unwrap().get(0);
        lag = db.query_one(replay_lag, &[]).unwrap().get(0);
        s == "paused for replica lag"
    });
    let left = dead_left(&mut db);
    assert!(left > 0, "the pause came before the backlog was done");
    println!("paused with the standby's replay lag at {lag:.1} s and {left} dead rows left");
    set(&primary, &mut db, "reaper.max_replica_lag", "0");
    wait_until("without the ceiling the backlog is reaped", SOON, || {
        dead_left(&mut db) == 0
    });
    assert_eq!(
        primary.worker_pid("postgres"),
        pid,
        "one worker did all this"
    );
}
