//! Targets under DDL on a real cluster (issue 17 items 6 and 15): what the worker, pg_dump and a
//! restore see after DROP TABLE, and the WARNING a client gets when a rename disables a target.
//! (The `#[pg_test]`s in src/api/ddl_tests.rs check the same rules inside one transaction.)

use postgres::{Client, Config, NoTls};
use session_reaper_harness::{count, pg_bin, sessions_table, wait_until, with_reaper, SOON};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The data lines of `table`'s COPY block in a plain-format dump.
fn copy_rows(dump: &str, table: &str) -> Vec<String> {
    let header = format!("COPY public.{table} ");
    dump.lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        .take_while(|l| *l != "\\.")
        .map(String::from)
        .collect()
}

/// Runs a client program of the cluster's Postgres against `dbname`, feeding it `input`.
fn client_program(
    pg: &session_reaper_harness::Cluster,
    program: &str,
    args: &[&str],
    input: &str,
) -> String {
    let mut child = Command::new(format!("{}/{program}", pg_bin()))
        .args([
            "-h",
            pg.dir.to_str().unwrap(),
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// issue 17 item 6: a dropped table's target goes with it, so the worker has nothing of it to
/// fail on, and pg_dump writes no row whose table OID a restore could give to another relation.
#[test]
fn a_dropped_table_leaves_no_target_for_the_worker_or_a_dump() {
    let (pg, mut db) = with_reaper("trust_ddl_drop", &["reaper.interval = '1s'"]);
    sessions_table(&mut db, "sessions", 100, 10);
    sessions_table(&mut db, "tokens", 0, 10);
    db.batch_execute("SELECT reaper_register('sessions'); SELECT reaper_register('tokens')")
        .unwrap();
    // Dropped between runs: a DROP during a run is the worker's concern (issue 17 item 5).
    wait_until("the worker emptied sessions", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'dead'",
        ) == 0
    });
    let dropped = count(&mut db, "SELECT 'sessions'::regclass::oid::bigint");
    db.batch_execute("DROP TABLE sessions").unwrap();
    // A table registered after the drop: once the worker has emptied it, it has been through
    // its targets at least once since; a few more rounds follow.
    sessions_table(&mut db, "codes", 50, 0);
    db.batch_execute("SELECT reaper_register('codes')").unwrap();
    wait_until("the worker emptied codes", SOON, || {
        count(&mut db, "SELECT count(*) FROM codes") == 0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pg.log_lines("no longer exists"), 0, "{}", pg.log());
    assert_eq!(pg.log_lines(&format!(": {dropped}:")), 0, "{}", pg.log());

    let dump = client_program(&pg, "pg_dump", &["postgres"], "");
    let rows = copy_rows(&dump, "reaper_target");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.contains("tokens") || r.contains("codes")),
        "{rows:?}"
    );
    // The dump restores into a fresh database with the same two targets.
    db.batch_execute("CREATE DATABASE restored").unwrap();
    client_program(
        &pg,
        "psql",
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "restored"],
        &dump,
    );
    let mut restored = pg.connect("restored");
    assert_eq!(
        count(
            &mut restored,
            "SELECT count(*) FROM reaper_targets WHERE target IN ('tokens'::regclass, 'codes'::regclass)"
        ),
        2
    );
    assert_eq!(
        count(&mut restored, "SELECT count(*) FROM reaper_targets"),
        2
    );
}

/// A server notice as a client gets it: (severity, SQLSTATE, message, hint).
type Notice = (String, String, String, String);

/// A client whose server notices are collected.
fn client_with_notices(pg: &session_reaper_harness::Cluster) -> (Client, Arc<Mutex<Vec<Notice>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let client = Config::new()
        .host_path(&pg.dir)
        .port(pg.port)
        .user("postgres")
        .dbname("postgres")
        .notice_callback(move |n| {
            sink.lock().unwrap().push((
                n.severity().to_string(),
                n.code().code().to_string(),
                n.message().to_string(),
                n.hint().unwrap_or_default().to_string(),
            ))
        })
        .connect(NoTls)
        .unwrap();
    (client, notices)
}

/// issue 17 item 15: renaming a column the predicate uses disables the target with a WARNING
/// that carries the reason's SQLSTATE and a hint to re-register; the worker then leaves the
/// table alone instead of failing on it every round.
#[test]
fn a_rename_disables_the_target_with_a_warning_and_the_worker_leaves_it() {
    // A long interval: after its first runs the target runs only when woken, so no run races
    // with the rename.
    let (pg, mut db) = with_reaper("trust_ddl_rename", &["reaper.interval = '1h'"]);
    sessions_table(&mut db, "sessions", 0, 10);
    db.batch_execute(
        "ALTER TABLE sessions ADD COLUMN pinned boolean NOT NULL DEFAULT false;
         SELECT reaper_register('sessions', predicate => 'NOT pinned');",
    )
    .unwrap();
    wait_until("the worker ran the new target", SOON, || {
        count(&mut db, "SELECT total_runs FROM reaper_stats()") >= 1
    });
    // A second run may follow from the registration's wake: wait until no run comes for 1.5 s.
    let total_runs = "SELECT total_runs FROM reaper_stats()";
    let mut runs = count(&mut db, total_runs);
    wait_until("the runs stop coming", SOON, || {
        std::thread::sleep(Duration::from_millis(1_500));
        let now = count(&mut db, total_runs);
        std::mem::replace(&mut runs, now) == now
    });
    let (mut client, notices) = client_with_notices(&pg);
    client
        .batch_execute("ALTER TABLE sessions RENAME COLUMN pinned TO kept")
        .unwrap();
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (severity, code, message, hint) = &notices[0];
    assert_eq!(
        (severity.as_str(), code.as_str()),
        ("WARNING", "42703"),
        "{message}"
    );
    assert!(
        message.contains("\"public.sessions\"") && message.contains("\"pinned\""),
        "{message}"
    );
    assert!(
        hint.contains("SELECT reaper_register('public.sessions'"),
        "{hint}"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM reaper_targets WHERE NOT enabled"
        ),
        1
    );
    db.batch_execute(
        "INSERT INTO sessions (token, expires_at) SELECT 'dead', now() - interval '1 hour' FROM generate_series(1, 5)",
    )
    .unwrap();
    db.batch_execute("SELECT reaper_wake()").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'dead'"
        ),
        5
    );
    assert_eq!(
        count(&mut db, "SELECT total_runs FROM reaper_stats()"),
        runs,
        "the disabled target ran"
    );
    assert_eq!(
        pg.log_lines("session_reaper: public.sessions:"),
        0,
        "{}",
        pg.log()
    );
}

/// issue 17 item 6: the event triggers go with the extension: DROP SCHEMA … CASCADE of its
/// schema and DROP EXTENSION work with targets registered, and leave no event trigger behind.
#[test]
fn the_event_triggers_go_with_the_extension() {
    let pg = session_reaper_harness::Cluster::start("trust_ddl_ext", &[]);
    let mut db = pg.connect("postgres");
    sessions_table(&mut db, "sessions", 0, 1);
    db.batch_execute(
        "CREATE SCHEMA reaper;
         CREATE EXTENSION session_reaper SCHEMA reaper;
         SELECT reaper.reaper_register('sessions');",
    )
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM pg_event_trigger"), 2);
    db.batch_execute("DROP SCHEMA reaper CASCADE").unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM pg_event_trigger"), 0);
    db.batch_execute(
        "CREATE EXTENSION session_reaper;
         SELECT reaper_register('sessions');
         DROP EXTENSION session_reaper;
         DROP TABLE sessions;",
    )
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM pg_event_trigger"), 0);
}
