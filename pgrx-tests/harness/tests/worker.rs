//! The background worker on committed data in a real cluster: what DESIGN.md promises about
//! the worker, each checked with bounded polling.

use postgres::Client;
use session_reaper_harness::{
    as_cluster_owner, count, expired, register_and_drain, sessions_table, two_databases_one_named,
    wait_until, with_reaper, Cluster, SOON,
};
use std::time::Duration;

#[test]
fn expired_rows_vanish_within_the_interval_and_live_rows_stay() {
    let (pg, mut db) = with_reaper("vanish", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "sessions", 25_000, 5_000);
    register_and_drain(&mut db, "the worker removed every expired row");
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'live'"
        ),
        5_000
    );
    // Rows that expire later are picked up by a later run, without anyone asking.
    db.batch_execute("UPDATE sessions SET expires_at = now() + interval '1 second' WHERE id IN (SELECT id FROM sessions LIMIT 100)")
        .unwrap();
    wait_until("rows that expired later are gone too", SOON, || {
        count(&mut db, "SELECT count(*) FROM sessions") == 4_900
    });
    // A run is recorded just after its last batch commits.
    wait_until("the stats count every row", SOON, || {
        count(&mut db, "SELECT total_deleted FROM reaper_stats()") == 25_100
    });
    let stats = db
        .query_one(
            "SELECT total_deleted, worker_pid IS NOT NULL, last_status FROM reaper_stats()",
            &[],
        )
        .unwrap();
    assert!(
        stats.get::<_, bool>(1),
        "reaper_stats() shows the worker's pid"
    );
    assert_eq!(stats.get::<_, String>(2), "ok");
    assert!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE trigger = 'worker' AND rows > 0"
        ) >= 2
    );
    assert!(
        pg.log()
            .contains("session_reaper: postgres: public.sessions: deleted 25000 rows"),
        "{}",
        pg.log()
    );
}

#[test]
fn the_workers_batches_commit_without_waiting_for_their_wal_and_a_purge_waits() {
    let (_pg, mut db) = with_reaper("async_commit", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "sessions", 25_000, 100);
    // Owner code in each batch's transaction notes the commit mode that transaction has.
    db.batch_execute(
        "CREATE TABLE seen (by text, mode text);
         CREATE FUNCTION note_mode() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO seen VALUES (current_setting('application_name'), current_setting('synchronous_commit'));
             RETURN NULL;
           END $$;
         CREATE TRIGGER note AFTER DELETE ON sessions FOR EACH STATEMENT EXECUTE FUNCTION note_mode();",
    )
    .unwrap();
    register_and_drain(&mut db, "the worker removed every expired row");
    let modes = |db: &mut Client, by: &str| -> Vec<String> {
        db.query(
            &format!("SELECT DISTINCT mode FROM seen WHERE by {by}"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
    };
    assert!(
        count(&mut db, "SELECT count(*) FROM seen") >= 3,
        "one note per batch"
    );
    assert_eq!(
        modes(&mut db, "<> 'purge'"),
        ["off"],
        "the worker's batches"
    );
    // A purge runs in the caller's session, whose commits keep the mode the caller chose.
    db.batch_execute(
        "SET application_name = 'purge';
         INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 10);
         SELECT * FROM reaper_purge('sessions');",
    )
    .unwrap();
    assert_eq!(modes(&mut db, "= 'purge'"), ["on"], "a purge's batches");
    assert_eq!(expired(&mut db, "sessions"), 0);
}

/// The pause after a batch grows with how long the batch waited for a CPU, up to 4 times
/// `reaper.batch_delay`: the worker gives way to a saturated server (on Linux, which counts
/// that wait). Here the worker shares one CPU with two backends that never sleep, and each
/// batch runs the owner's trigger, about 100 ms of CPU work, so it waits about twice as long as
/// it runs and each pause is the longest, 4 x 500 ms. Each pause is measured from the end of a
/// batch's DELETE to the start of the next.
#[test]
fn a_batch_kept_waiting_for_a_cpu_is_followed_by_a_longer_pause() {
    if !Burners::kernel_counts_cpu_waits() {
        eprintln!(
            "skipped: this kernel keeps no /proc/self/schedstat, so the pause is never stretched"
        );
        return;
    }
    // No ANALYZE: with statistics saying most of the table is dead, one page batch would take
    // all 50 rows.
    let (pg, mut db) = with_reaper(
        "stretch",
        &[
            "reaper.interval = '1h'",
            "reaper.batch_delay = '500ms'",
            "autovacuum = off",
        ],
    );
    sessions_table(&mut db, "sessions", 50, 10);
    db.batch_execute(
        "CREATE TABLE batch_times (at timestamptz, step text);
         CREATE FUNCTION batch_begins() RETURNS trigger LANGUAGE plpgsql AS $$
           DECLARE x bigint := 0;
           BEGIN
             INSERT INTO batch_times VALUES (clock_timestamp(), 'begin');
             FOR i IN 1..500000 LOOP x := x + i; END LOOP;
             RETURN NULL;
           END $$;
         CREATE FUNCTION batch_ends() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO batch_times VALUES (clock_timestamp(), 'end'); RETURN NULL; END $$;
         CREATE TRIGGER begins BEFORE DELETE ON sessions FOR EACH STATEMENT EXECUTE FUNCTION batch_begins();
         CREATE TRIGGER ends AFTER DELETE ON sessions FOR EACH STATEMENT EXECUTE FUNCTION batch_ends();",
    )
    .unwrap();
    let burners = Burners::beside(&pg, pg.worker_pid("postgres"), 2);
    db.batch_execute("SELECT reaper_register('sessions', batch_size => 10)")
        .unwrap();
    wait_until("the worker removed every expired row", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    drop(burners);
    let pauses: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8, step FROM batch_times ORDER BY at",
            &[],
        )
        .unwrap()
        .iter()
        .filter(|row| row.get::<_, String>(1) == "begin")
        .filter_map(|row| row.get(0))
        .collect();
    assert!(pauses.len() >= 4, "5 batches of 10 rows: {pauses:?}");
    assert!(
        pauses.iter().all(|pause| *pause >= 1.2),
        "pauses of more than 2.4 x 500 ms: {pauses:?}"
    );
}

/// Backends that never sleep, on one CPU, with the given server process moved there too:
/// backends, so that they share the CPU with it task by task (Linux's autogroups would share
/// it first between sessions). Cancelled when dropped.
struct Burners(Vec<(postgres::CancelToken, std::thread::JoinHandle<()>)>);

impl Burners {
    fn beside(pg: &Cluster, pid: i32, how_many: usize) -> Burners {
        let cpu = Self::first_allowed_cpu();
        Self::pin(pid, &cpu);
        let burners = (0..how_many)
            .map(|_| {
                let mut backend = pg.connect("postgres");
                let pid: i32 = backend
                    .query_one("SELECT pg_backend_pid()", &[])
                    .unwrap()
                    .get(0);
                Self::pin(pid, &cpu);
                let cancel = backend.cancel_token();
                let spin = std::thread::spawn(move || {
                    // Ends when cancelled (or after a minute, should the cancel be lost).
                    let _ = backend.batch_execute(
                        "SET statement_timeout = '60s';
                         SELECT count(*) FROM (SELECT generate_series(1, 10000000000)) s",
                    );
                });
                (cancel, spin)
            })
            .collect();
        Burners(burners)
    }

    // As the server's owner: moving another user's process needs CAP_SYS_NICE, which
    // containers often lack.
    fn pin(pid: i32, cpu: &str) {
        let pinned = as_cluster_owner("taskset", &["-pc", cpu, &pid.to_string()]);
        assert!(pinned.status.success(), "taskset: {pinned:?}");
    }

    /// The first CPU this process may run on (the server, started by it, may too).
    fn first_allowed_cpu() -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/self/status");
        allowed
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .to_string()
    }

    /// Whether the kernel counts the time a process waits for a CPU (what the worker reads).
    fn kernel_counts_cpu_waits() -> bool {
        std::fs::read_to_string("/proc/self/schedstat")
            .map(|stat| stat.split_whitespace().next().is_some_and(|ran| ran != "0"))
            .unwrap_or(false)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for (cancel, spin) in self.0.drain(..) {
            let _ = cancel.cancel_query(postgres::NoTls);
            let _ = spin.join();
        }
    }
}

#[test]
fn a_row_refreshed_while_the_worker_runs_is_never_deleted() {
    let (pg, mut db) = with_reaper(
        "refresh",
        &["reaper.interval = '1s'", "reaper.batch_delay = '2ms'"],
    );
    sessions_table(&mut db, "sessions", 200_000, 0);
    db.execute("SELECT reaper_register('sessions', batch_size => 500)", &[])
        .unwrap();
    // Refresh expired sessions one by one, in a scattered order, while the worker deletes
    // them: every refresh that found its row (UPDATE 1) made that row live, so it must still
    // be there at the end.
    wait_until("the worker has started", SOON, || {
        expired(&mut db, "sessions") < 200_000
    });
    let mut app = pg.connect("postgres");
    let mut refreshed = Vec::new();
    let mut missed = 0;
    for step in 1..6_000i64 {
        let id = 1 + (step * 7_919) % 200_000;
        let n = app
            .execute(
                "UPDATE sessions SET expires_at = now() + interval '1 hour' WHERE id = $1",
                &[&id],
            )
            .unwrap();
        if n == 1 {
            refreshed.push(id);
        } else {
            missed += 1;
        }
    }
    // 400 batches, on a machine other tests' clusters share: longer than SOON may be needed.
    wait_until("the backlog is gone", Duration::from_secs(90), || {
        expired(&mut db, "sessions") == 0
    });
    let kept = db
        .query_one(
            "SELECT count(*) FROM sessions WHERE id = ANY($1)",
            &[&refreshed],
        )
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(
        kept as usize,
        refreshed.len(),
        "every refreshed session survived"
    );
    assert!(!refreshed.is_empty(), "some refreshes found their row");
    println!(
        "refreshed {} sessions during the run, all kept; {missed} were already reaped",
        refreshed.len()
    );
}

#[test]
fn a_reload_changes_the_interval_without_a_restart() {
    let (_pg, mut db) = with_reaper("reload", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "sessions", 10, 0);
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until(
        "the first run is recorded (registration wakes the worker)",
        SOON,
        || count(&mut db, "SELECT total_deleted FROM reaper_stats()") == 10,
    );
    let hours = "SELECT extract(epoch FROM next_run_at - last_run_at)::bigint FROM reaper_stats()";
    assert_eq!(
        count(&mut db, hours),
        3600,
        "with interval 1h the next run is an hour away"
    );
    db.batch_execute(
        "INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 minute')",
    )
    .unwrap();
    db.batch_execute("ALTER SYSTEM SET reaper.interval = '1s'")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("the row is reaped on the new interval", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    wait_until("the next run is a second after the last", SOON, || {
        count(&mut db, hours) == 1
    });
}

#[test]
fn a_broken_target_is_reported_and_the_others_are_still_reaped() {
    let (pg, mut db) = with_reaper("broken", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "tokens", 100, 0);
    sessions_table(&mut db, "sessions", 1_000, 10);
    sessions_table(&mut db, "codes", 100, 0);
    db.batch_execute(
        "SELECT reaper_register('tokens'); SELECT reaper_register('sessions'); SELECT reaper_register('codes');
         ALTER TABLE tokens RENAME COLUMN expires_at TO valid_to;
         DROP TABLE codes;
         -- The rename disabled tokens' target (issue 17 item 15): switched back on, it fails.
         SELECT reaper_enable('tokens', true);",
    )
    .unwrap();
    sessions_table(&mut db, "more", 500, 0);
    db.execute("SELECT reaper_register('more')", &[]).unwrap();
    wait_until("the healthy tables are reaped", SOON, || {
        expired(&mut db, "sessions") == 0 && expired(&mut db, "more") == 0
    });
    wait_until("the broken target's error is in the stats", SOON, || {
        count(&mut db, "SELECT count(*) FROM reaper_stats() WHERE target = 'tokens'::regclass AND last_status = 'error'") == 1
    });
    assert!(
        pg.log().contains("(SQLSTATE 42703)"),
        "a WARNING with the SQLSTATE: {}",
        pg.log()
    );
    // The dropped table took its target with it (issue 17 item 6): nothing to report.
    assert!(
        !pg.log().contains("no longer exists"),
        "the dropped table's target is gone: {}",
        pg.log()
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM tokens"),
        100,
        "nothing of the broken target was touched"
    );
}

#[test]
fn sigterm_in_the_middle_of_a_backlog_leaves_committed_batches_and_no_locks() {
    let (pg, mut db) = with_reaper(
        "sigterm",
        &["reaper.interval = '1s'", "reaper.batch_delay = '20ms'"],
    );
    sessions_table(&mut db, "sessions", 300_000, 1_000);
    db.execute(
        "SELECT reaper_register('sessions', batch_size => 1000)",
        &[],
    )
    .unwrap();
    let pid = pg.worker_pid("postgres");
    wait_until("the worker is part-way through", SOON, || {
        expired(&mut db, "sessions") < 290_000
    });
    pg.signal(pid, "TERM");
    wait_until("the worker has exited", SOON, || {
        count(
            &mut db,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        ) == 0
    });
    let left = expired(&mut db, "sessions");
    assert!(
        left > 0 && left < 300_000,
        "committed batches stay deleted, the rest waits: {left}"
    );
    assert_eq!(
        count(
            &mut db,
            &format!("SELECT count(*) FROM pg_locks WHERE pid = {pid}")
        ),
        0
    );
    // The launcher starts a new worker, which finishes the job.
    let new_pid = pg.worker_pid("postgres");
    assert_ne!(new_pid, pid);
    wait_until(
        "the new worker finished the backlog",
        Duration::from_secs(90),
        || expired(&mut db, "sessions") == 0,
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'live'"
        ),
        1_000
    );
}

#[test]
fn after_a_sigkill_crash_recovery_reaping_resumes() {
    let (pg, mut db) = with_reaper("sigkill", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "sessions", 100, 10);
    register_and_drain(&mut db, "the first backlog is gone");
    let pid = pg.worker_pid("postgres");
    pg.signal(pid, "KILL");
    // The postmaster resets every backend; reconnect once it accepts connections again.
    wait_until("the postmaster reset every process", SOON, || {
        pg.log()
            .contains("all server processes terminated; reinitializing")
    });
    let mut db = None;
    wait_until("the server is back after crash recovery", SOON, || {
        db = std::panic::catch_unwind(|| {
            let mut client = pg.connect("postgres");
            client.batch_execute("SELECT 1").map(|_| client)
        })
        .ok()
        .and_then(Result::ok);
        db.is_some()
    });
    let mut db = db.unwrap();
    db.batch_execute("INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 50)")
        .unwrap();
    wait_until("the restarted worker reaps again", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    assert_ne!(pg.worker_pid("postgres"), pid);
    assert!(pg.log().contains("terminated by signal 9"), "{}", pg.log());
}

#[test]
fn every_database_with_the_extension_is_reaped_and_drops_just_work() {
    let pg = Cluster::start("databases", &["reaper.interval = '1s'"]);
    let mut admin = pg.connect("postgres");
    for name in ["app_one", "app_two", "no_reaper"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
    }
    for name in ["app_one", "app_two"] {
        let mut db = pg.connect(name);
        db.batch_execute("CREATE EXTENSION session_reaper").unwrap();
        sessions_table(&mut db, "sessions", 1_000, 10);
        db.execute("SELECT reaper_register('sessions')", &[])
            .unwrap();
    }
    for name in ["app_one", "app_two"] {
        let mut db = pg.connect(name);
        wait_until(&format!("{name} is reaped"), SOON, || {
            expired(&mut db, "sessions") == 0
        });
    }
    let workers =
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'";
    wait_until(
        "only databases with the extension keep a worker",
        SOON,
        || count(&mut admin, workers) == 2,
    );
    // DROP EXTENSION: that database's worker leaves.
    pg.connect("app_two")
        .batch_execute("DROP EXTENSION session_reaper")
        .unwrap();
    wait_until("app_two's worker left", SOON, || {
        count(&mut admin, workers) == 1
    });
    // CREATE EXTENSION in a database that had none: a worker arrives.
    let mut late = pg.connect("no_reaper");
    late.batch_execute("CREATE EXTENSION session_reaper")
        .unwrap();
    sessions_table(&mut late, "sessions", 100, 0);
    late.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until("the new database is reaped", SOON, || {
        expired(&mut late, "sessions") == 0
    });
    drop(late);
    // DROP DATABASE of a reaped database works without stopping anything by hand.
    pg.worker_pid("app_one");
    admin
        .batch_execute("DROP DATABASE app_one")
        .expect("DROP DATABASE of a reaped database");
    admin
        .batch_execute("DROP DATABASE no_reaper")
        .expect("DROP DATABASE of another reaped database");
}

#[test]
fn reaper_wake_runs_every_target_now() {
    let (_pg, mut db) = with_reaper("wake", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "sessions", 10, 0);
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until("the first run", SOON, || expired(&mut db, "sessions") == 0);
    db.batch_execute(
        "INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 minute')",
    )
    .unwrap();
    let woke: i64 = db.query_one("SELECT reaper_wake()", &[]).unwrap().get(0);
    assert_eq!(woke, 1, "reaper_wake() asks for a run of the one target");
    wait_until("reaper_wake() made the worker run", SOON, || {
        expired(&mut db, "sessions") == 0
    });
}

#[test]
fn settings_reload_and_refuse_bad_values_with_their_range() {
    let pg = Cluster::start("settings", &[]);
    let mut db = pg.connect("postgres");
    let err = db
        .batch_execute("ALTER SYSTEM SET reaper.batch_size = 0")
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains(
            "0 is outside the valid range for parameter \"reaper.batch_size\" (1 .. 1000000)"
        ),
        "{message}"
    );
    let err = db
        .batch_execute("ALTER SYSTEM SET reaper.log_history = 'sometimes'")
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("invalid value for parameter \"reaper.log_history\""));
    let err = db
        .batch_execute("SET reaper.interval = '5min'")
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("cannot be changed now"));
    let settings = count(
        &mut db,
        "SELECT count(*) FROM pg_settings WHERE name LIKE 'reaper.%' AND short_desc <> ''",
    );
    assert_eq!(settings, 14);
    db.batch_execute("ALTER SYSTEM SET reaper.batch_delay = '250ms'")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("the reload is visible", SOON, || {
        pg.connect("postgres")
            .query_one("SHOW reaper.batch_delay", &[])
            .unwrap()
            .get::<_, String>(0)
            == "250ms"
    });
}

#[test]
fn the_worker_prunes_the_pages_it_deleted_from_so_the_app_does_not() {
    let (unpruned, pruned) = reap_then_count_line_pointers("prune", "20ms");
    assert_eq!(
        unpruned, 0,
        "every deleted row version of a full page was pruned"
    );
    assert!(
        pruned >= 29_000,
        "the worker pruned the pages it deleted from ({pruned} of 30,000 pruned)"
    );
}

#[test]
fn a_flat_out_run_leaves_the_pruning_to_the_next_reader() {
    // batch_delay = 0: no pause to prune in, the pages stay as one big DELETE leaves them.
    let (unpruned, pruned) = reap_then_count_line_pointers("prune_flat_out", "0");
    assert!(
        unpruned >= 29_000,
        "the deleted row versions wait for a reader ({unpruned} of 30,000 unpruned)"
    );
    assert_eq!(pruned, 0);
}

/// Reaps 30,000 dead rows interleaved with 10,000 live ones (page-range batches) with
/// `reaper.batch_delay = delay`, then counts, on the table's raw pages, the deleted row
/// versions of full pages nobody pruned and the pruned ones. Live rows are checked kept.
fn reap_then_count_line_pointers(name: &str, delay: &str) -> (i64, i64) {
    let batch_delay = format!("reaper.batch_delay = '{delay}'");
    // autovacuum off: an ANALYZE of another table holds a snapshot that keeps a batch's
    // deleted rows from being pruned.
    let (pg, mut db) = with_reaper(
        name,
        &["reaper.interval = '1h'", "autovacuum = off", &batch_delay],
    );
    db.batch_execute(
        "CREATE EXTENSION pageinspect;
         CREATE TABLE sessions (id bigserial PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL)
           WITH (autovacuum_enabled = off);
         CREATE INDEX ON sessions (expires_at);
         INSERT INTO sessions (token, expires_at)
           SELECT 'session', CASE WHEN g % 4 = 0 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END
             FROM generate_series(1, 40000) g;
         ANALYZE sessions;",
    )
    .unwrap();
    db.execute(
        "SELECT reaper_register('sessions', batch_size => 5000)",
        &[],
    )
    .unwrap();
    // Only the log is polled while the worker runs: a query's snapshot taken before a batch's
    // commit would keep that batch's rows from being pruned, and any read of the table's heap
    // would prune its pages itself. The line is logged once the last batch is pruned.
    wait_until("the run is logged", SOON, || {
        pg.log().contains("public.sessions: deleted 30000 rows")
    });
    wait_until("the run is recorded", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE rows > 0",
        ) > 0
    });
    assert_eq!(
        count(&mut db, "SELECT sum(rows)::bigint FROM reaper_history"),
        30_000
    );
    // pageinspect reads raw pages and prunes nothing. A deleted row version that nobody pruned
    // is still a normal line pointer with its deleter in t_xmax; a pruned one is LP_DEAD (3).
    // A read prunes only a page with less than a tenth of it free (heap_page_prune_opt): the
    // table's last, part-filled page is left for VACUUM by the app's reads and ours alike.
    let mut items = |which: &str| {
        count(
            &mut db,
            &format!(
                "SELECT count(*)
                   FROM generate_series(0, (pg_relation_size('sessions') / 8192 - 1)::int) p,
                        LATERAL (SELECT get_raw_page('sessions', p) AS raw) r,
                        heap_page_items(r.raw) i
                  WHERE {which}"
            ),
        )
    };
    let full = "(SELECT upper - lower FROM page_header(r.raw)) < 8192 / 10";
    let unpruned = items(&format!("{full} AND lp_flags = 1 AND t_xmax <> '0'"));
    let pruned = items("lp_flags = 3");
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE expires_at > now()"
        ),
        10_000
    );
    (unpruned, pruned)
}

#[test]
fn a_huge_backlog_does_not_starve_a_small_table() {
    let (_pg, mut db) = with_reaper(
        "fairness",
        &["reaper.interval = '1s'", "reaper.batch_delay = '10ms'"],
    );
    sessions_table(&mut db, "big", 300_000, 0);
    sessions_table(&mut db, "small", 100, 10);
    db.execute("SELECT reaper_register('big', batch_size => 1000)", &[])
        .unwrap();
    wait_until("the big backlog is being reaped", SOON, || {
        expired(&mut db, "big") < 290_000
    });
    db.execute("SELECT reaper_register('small')", &[]).unwrap();
    wait_until("the small table is reaped", SOON, || {
        expired(&mut db, "small") == 0
    });
    let big_left = expired(&mut db, "big");
    assert!(
        big_left > 0,
        "the small table got its turn while the big backlog was still there"
    );
    println!("small table reaped with {big_left} rows of the big backlog still waiting");
}

#[test]
fn targets_survive_pg_dump_and_restore() {
    let (pg, mut db) = with_reaper("dump", &["reaper.enabled = off"]);
    sessions_table(&mut db, "sessions", 10, 10);
    db.batch_execute("CREATE TABLE web_sessions (sid text, expire timestamp NOT NULL)")
        .unwrap();
    db.execute(
        "SELECT reaper_register('sessions', grace => '30 seconds', predicate => 'token <> ''keep''', schedule => '0 4 * * *', batch_size => 500)",
        &[],
    )
    .unwrap();
    db.execute(
        "SELECT reaper_register('web_sessions', 'expire', timezone => 'America/Chicago')",
        &[],
    )
    .unwrap();
    db.batch_execute("CREATE DATABASE restored").unwrap();
    let dump = pg.dir.join("dump.sql");
    let socket = pg.dir.to_str().unwrap().to_string();
    let port = pg.port.to_string();
    let out = std::process::Command::new(format!("{}/pg_dump", session_reaper_harness::pg_bin()))
        .args([
            "-h",
            &socket,
            "-p",
            &port,
            "-U",
            "postgres",
            "-f",
            dump.to_str().unwrap(),
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("/usr/bin/psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-h",
            &socket,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "restored",
            "-f",
        ])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = "SELECT string_agg(concat_ws('|', target, column_name, timezone, grace, ttl, predicate, batch_size, schedule, action, enabled), ';' ORDER BY id) FROM reaper_targets";
    let original: String = db.query_one(registry, &[]).unwrap().get(0);
    let copy: String = pg
        .connect("restored")
        .query_one(registry, &[])
        .unwrap()
        .get(0);
    assert_eq!(copy, original);
    assert!(
        original.contains("America/Chicago") && original.contains("0 4 * * *"),
        "{original}"
    );
    // The restored registry works: a purge there reaps the restored table.
    let mut restored = pg.connect("restored");
    let deleted: i64 = restored
        .query_one("SELECT sum(rows_deleted)::bigint FROM reaper_purge()", &[])
        .unwrap()
        .get(0);
    assert_eq!(deleted, 10);
}

#[test]
fn analyze_after_and_log_history_do_what_they_say() {
    let (_pg, mut db) = with_reaper(
        "history",
        &[
            "reaper.interval = '1s'",
            "reaper.log_history = 'errors'",
            "reaper.analyze_after = 0.1",
        ],
    );
    sessions_table(&mut db, "sessions", 1_000, 1_000);
    db.batch_execute("VACUUM ANALYZE sessions").unwrap();
    let analyzed = "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'sessions'";
    // PostgreSQL 14's statistics collector reports it up to half a second late.
    wait_until("the manual ANALYZE is counted", SOON, || {
        count(&mut db, analyzed) >= 1
    });
    let before = count(&mut db, analyzed);
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until("the run is counted", SOON, || {
        count(&mut db, "SELECT total_deleted FROM reaper_stats()") == 1_000
    });
    // Half the table went: more than analyze_after, so the worker analyzed it.
    wait_until("the table was analyzed after the run", SOON, || {
        count(&mut db, analyzed) > before
    });
    // log_history = errors: successful runs leave no history rows, only counters.
    assert_eq!(count(&mut db, "SELECT count(*) FROM reaper_history"), 0);
    db.batch_execute("ALTER SYSTEM SET reaper.log_history = 'all'")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("runs are written to the history again", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_history WHERE trigger = 'worker'",
        ) > 0
    });
}

#[test]
fn a_standby_runs_no_reaper_until_it_is_promoted() {
    let (primary, mut db) = with_reaper("primary", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "sessions", 100, 10);
    register_and_drain(&mut db, "the primary reaps");
    let standby = Cluster::standby_of(&primary, "standby");
    let mut replica = standby.connect("postgres");
    let reapers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'session_reaper%'";
    db.batch_execute("INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 50)")
        .unwrap();
    // The primary's deletes reach the standby; the standby itself runs no reaper.
    wait_until(
        "the standby has replayed the primary's reaping",
        SOON,
        || {
            count(&mut db, "SELECT count(*) FROM sessions") == 10
                && count(&mut replica, "SELECT count(*) FROM sessions") == 10
        },
    );
    assert_eq!(
        count(&mut replica, reapers),
        0,
        "no session_reaper process during recovery"
    );
    let standby_log = standby.log();
    assert!(
        !standby_log.contains("ERROR") && !standby_log.contains("WARNING"),
        "nothing logged as an error on the standby: {standby_log}"
    );
    // Promote: the new primary reaps by itself.
    primary.pg_ctl(&["stop", "-m", "fast"]);
    standby.pg_ctl(&["promote", "-w"]);
    let mut promoted = standby.connect("postgres");
    promoted
        .batch_execute("INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 minute' FROM generate_series(1, 20)")
        .unwrap();
    wait_until("the promoted server reaps", SOON, || {
        expired(&mut promoted, "sessions") == 0
    });
    assert!(
        count(&mut promoted, reapers) >= 2,
        "launcher and worker run after promotion"
    );
}

#[test]
fn a_row_the_app_holds_locked_is_left_for_later_and_stalls_nothing() {
    let (pg, mut db) = with_reaper(
        "locked",
        &["reaper.interval = '1s'", "reaper.lock_timeout = '200ms'"],
    );
    sessions_table(&mut db, "sessions", 100, 10);
    // The app holds one expired row locked in an open transaction.
    let mut app = pg.connect("postgres");
    let mut tx = app.transaction().unwrap();
    let held: i64 = tx
        .query_one(
            "SELECT id FROM sessions WHERE token = 'dead' ORDER BY id LIMIT 1 FOR UPDATE",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    // The batch waits reaper.lock_timeout for it, gives up, and is done again skipping it.
    wait_until("every other expired row is reaped", SOON, || {
        expired(&mut db, "sessions") == 1
    });
    let still_there = count(
        &mut db,
        &format!("SELECT count(*) FROM sessions WHERE id = {held}"),
    );
    assert_eq!(still_there, 1, "the locked row waits for a later run");
    tx.rollback().unwrap();
    wait_until("once the lock is gone the last row is reaped", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'live'"
        ),
        10
    );
}

#[test]
fn database_names_restricts_which_databases_get_a_worker() {
    let (pg, mut admin) = two_databases_one_named("names");
    let mut one = pg.connect("app_one");
    wait_until("app_one is reaped", SOON, || {
        expired(&mut one, "sessions") == 0
    });
    let workers = "SELECT string_agg(datname, ',') FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'";
    let running: String = admin.query_one(workers, &[]).unwrap().get(0);
    assert_eq!(running, "app_one", "only the named database has a worker");
    let mut two = pg.connect("app_two");
    assert_eq!(expired(&mut two, "sessions"), 100, "app_two is left alone");
    let no_worker = "SELECT count(*) FROM reaper_worker() WHERE pid IS NULL";
    assert_eq!(count(&mut two, no_worker), 1, "app_two has no worker");
}

#[test]
fn the_readme_settings_table_matches_the_server() {
    let pg = Cluster::start("readme", &[]);
    let mut db = pg.connect("postgres");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut documented: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `reaper."))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .collect();
    documented.sort();
    let rows = db
        .query(
            "SELECT name FROM pg_settings WHERE name LIKE 'reaper.%' ORDER BY name",
            &[],
        )
        .unwrap();
    let mut actual: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    actual.sort();
    assert_eq!(
        documented, actual,
        "README's settings table lists exactly the server's settings"
    );
}
