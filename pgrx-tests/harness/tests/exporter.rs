//! Prometheus: Debian's `prometheus-postgres-exporter` (the packaged binary, run by the test, not
//! the systemd service) with `contrib/postgres_exporter.yaml`, scraped over HTTP on loopback,
//! reports per target what `reaper_stats()` says.

use session_reaper_harness::{count, sessions_table, wait_until, Cluster};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
const QUERIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../contrib/postgres_exporter.yaml"
);

/// The exporter process; killed (by its own pid) when the test ends, however it ends.
struct Exporter {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Exporter {
    /// Starts the exporter against `dbname` of `pg` over its unix socket, as `user`, with
    /// `args`, on a free loopback port, and waits until it answers HTTP.
    fn start(pg: &Cluster, dbname: &str, user: &str, args: &[&str]) -> Exporter {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = pg.dir.join("exporter.log");
        let dsn = format!(
            "host={} port={} user={user} dbname={dbname} sslmode=disable",
            pg.dir.display(),
            pg.port
        );
        let child = Command::new(EXPORTER)
            .arg(format!("--extend.query-path={QUERIES}"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .env("DATA_SOURCE_NAME", dsn)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("exporter log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {EXPORTER} (Debian's prometheus-postgres-exporter): {e}")
            });
        let exporter = Exporter { child, port, log };
        wait_until(
            "the exporter answers GET /metrics",
            Duration::from_secs(30),
            || exporter.get("/metrics").is_some(),
        );
        exporter
    }

    /// The body of a 200 response to GET `path`, or None.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    }

    /// One scrape, failing with the exporter's own log when it does not answer.
    fn scrape(&self) -> String {
        self.get("/metrics").unwrap_or_else(|| {
            panic!(
                "GET /metrics failed\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of `name` in a scrape for the series whose labels include every one of `labels`.
fn series(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            let value = l.rsplit(' ').next().unwrap();
            value
                .parse()
                .unwrap_or_else(|e| panic!("{l}: not a number: {e}"))
        })
        .collect()
}

/// The value of the one series of `name` with `labels` in a scrape.
fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = series(scrape, name, labels);
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} series with {labels:?} in the scrape:\n{}",
        scrape
            .lines()
            .filter(|l| l.starts_with("session_reaper"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    found[0]
}

/// What reaper_stats() says of one target, as the exporter should report it.
struct Stats {
    deleted: f64,
    runs: f64,
    errors: f64,
    estimate: f64,
    oldest_dead_age: f64,
    since_success: f64,
}

fn stats(db: &mut postgres::Client, target: &str) -> Stats {
    // Seconds since the last success are measured with the clock at this moment; a target that
    // never succeeded counts from its registration.
    let row = db
        .query_one(
            "SELECT s.total_deleted::float8, s.total_runs::float8, s.total_errors::float8,
                    s.dead_rows_estimate::float8,
                    coalesce(extract(epoch FROM s.oldest_dead_age), 0)::float8,
                    extract(epoch FROM clock_timestamp()
                                       - coalesce(s.last_success_at, t.registered_at))::float8
               FROM reaper_stats() s JOIN reaper_targets t ON t.target = s.target
              WHERE s.target = $1::text::regclass",
            &[&target],
        )
        .unwrap();
    Stats {
        deleted: row.get(0),
        runs: row.get(1),
        errors: row.get(2),
        // NULL when the table cannot be read (codes' column is gone): the exporter says NaN.
        estimate: row.get::<_, Option<f64>>(3).unwrap_or(f64::NAN),
        oldest_dead_age: row.get(4),
        since_success: row.get(5),
    }
}

/// `scraped` lies between what reaper_stats() said just before and just after the scrape.
fn assert_between(what: &str, before: f64, scraped: f64, after: f64) {
    if before.is_nan() && after.is_nan() {
        assert!(
            scraped.is_nan(),
            "{what}: the exporter says {scraped}, not NaN"
        );
        return;
    }
    let (low, high) = (before.min(after), before.max(after));
    assert!(
        low - 1e-3 <= scraped && scraped <= high + 1e-3,
        "{what}: the exporter says {scraped}, reaper_stats() said {before} before and {after} after"
    );
}

#[test]
fn the_exporter_reports_what_reaper_stats_says() {
    // interval = 1h: registering wakes the worker once, then the counters stay put while the
    // test compares them. autovacuum off: no ANALYZE moves the backlog estimate meanwhile.
    let pg = Cluster::start("exporter", &["reaper.interval = '1h'", "autovacuum = off"]);
    let mut db = pg.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION session_reaper;
         CREATE ROLE prometheus LOGIN;
         GRANT pg_monitor, pg_read_all_data TO prometheus;",
    )
    .unwrap();
    sessions_table(&mut db, "sessions", 3_000, 500);
    sessions_table(&mut db, "tokens", 1_200, 100);
    // A target that fails: its column is renamed after registration, in the same transaction,
    // so the worker's first run of it is an error.
    db.batch_execute(
        "CREATE TABLE codes (id int, expires_at timestamptz);
         INSERT INTO codes VALUES (1, now() - interval '1 day');
         SELECT reaper_register('sessions');
         SELECT reaper_register('tokens');
         BEGIN;
         SELECT reaper_register('codes');
         ALTER TABLE codes RENAME COLUMN expires_at TO valid_to;
         -- The rename disabled the target (issue 17 item 15): switched back on, it fails.
         SELECT reaper_enable('codes', true);
         COMMIT;",
    )
    .unwrap();
    wait_until(
        "the worker ran every target and is idle",
        Duration::from_secs(60),
        || {
            count(
                &mut db,
                "SELECT count(*) FROM reaper_stats()
                  WHERE total_runs > 0 AND worker_state = 'idle'
                    AND (last_status = 'ok' OR target = 'codes'::regclass)",
            ) == 3
                && count(
                    &mut db,
                    "SELECT (SELECT count(*) FROM sessions WHERE expires_at < now())
                          + (SELECT count(*) FROM tokens WHERE expires_at < now())",
                ) == 0
        },
    );
    // A new backlog, which a purge capped at 100 rows leaves mostly behind: reaper_stats()
    // reports what the last run left.
    db.batch_execute(
        "INSERT INTO sessions (token, expires_at)
           SELECT 'late', now() - g * interval '1 minute' FROM generate_series(1, 400) g;
         SELECT * FROM reaper_purge('sessions', max_rows => 100);",
    )
    .unwrap();

    let exporter = Exporter::start(&pg, "postgres", "prometheus", &[]);
    let targets = ["public.sessions", "public.tokens", "public.codes"];
    let before: Vec<Stats> = targets.iter().map(|t| stats(&mut db, t)).collect();
    let scrape = exporter.scrape();
    let after: Vec<Stats> = targets.iter().map(|t| stats(&mut db, t)).collect();

    for ((target, b), a) in targets.iter().zip(&before).zip(&after) {
        let labels = [("datname", "postgres"), ("target", *target)];
        let m = |name: &str| metric(&scrape, name, &labels);
        assert_eq!(
            (b.deleted, b.runs, b.errors),
            (a.deleted, a.runs, a.errors),
            "no run happened while the test compared {target}"
        );
        assert_eq!(
            m("session_reaper_rows_deleted_total"),
            b.deleted,
            "{target}"
        );
        assert_eq!(m("session_reaper_runs_total"), b.runs, "{target}");
        assert_eq!(m("session_reaper_errors_total"), b.errors, "{target}");
        assert_eq!(m("session_reaper_enabled"), 1.0, "{target}");
        assert_between(
            &format!("{target} dead_rows_estimate"),
            b.estimate,
            m("session_reaper_dead_rows_estimate"),
            a.estimate,
        );
        assert_between(
            &format!("{target} oldest_dead_age_seconds"),
            b.oldest_dead_age,
            m("session_reaper_oldest_dead_age_seconds"),
            a.oldest_dead_age,
        );
        assert_between(
            &format!("{target} seconds_since_last_success"),
            b.since_success,
            m("session_reaper_seconds_since_last_success"),
            a.since_success,
        );
    }
    // What the comparison covered: rows the worker deleted, an error, a waiting backlog.
    let [sessions, tokens, codes] = &before[..] else {
        unreachable!()
    };
    assert!(sessions.deleted > 0.0 && tokens.deleted > 0.0);
    assert!(codes.errors > 0.0 && codes.deleted == 0.0);
    assert!(sessions.estimate > 0.0 && sessions.oldest_dead_age > 0.0);

    assert_eq!(
        series(&scrape, "pg_exporter_last_scrape_error", &[]),
        [0.0],
        "the monitoring role's scrape had no error\n{}",
        std::fs::read_to_string(&exporter.log).unwrap_or_default()
    );
    let worker = [("datname", "postgres")];
    assert_eq!(
        metric(&scrape, "session_reaper_worker_running", &worker),
        1.0
    );
    assert_eq!(
        metric(&scrape, "session_reaper_worker_enabled", &worker),
        1.0
    );

    // Switched off, the reaper shows as such on the next scrape.
    db.batch_execute("ALTER SYSTEM SET reaper.enabled = off")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        "the exporter reports reaper.enabled = off",
        Duration::from_secs(30),
        || metric(&exporter.scrape(), "session_reaper_worker_enabled", &worker) == 0.0,
    );

    // A restart that lost session_reaper from shared_preload_libraries: no worker, the
    // per-target query fails, and the SessionReaperNotRunning condition holds.
    db.batch_execute("ALTER SYSTEM RESET reaper.enabled")
        .unwrap();
    db.batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .unwrap();
    drop(db);
    pg.pg_ctl(&["restart", "-w", "-m", "fast"]);
    wait_until(
        "the exporter reports no worker, with the reaper meant to run",
        Duration::from_secs(60),
        || {
            exporter.get("/metrics").is_some_and(|scrape| {
                series(&scrape, "session_reaper_worker_running", &worker) == [0.0]
                    && series(&scrape, "session_reaper_worker_enabled", &worker) == [1.0]
                    && series(&scrape, "session_reaper_runs_total", &worker).is_empty()
            })
        },
    );
}

#[test]
fn one_exporter_covers_the_databases_it_is_told_to_discover() {
    // The README's set-up for several databases: --auto-discover-databases with
    // --include-databases naming those with the extension (in `plain` the queries would fail).
    let pg = Cluster::start("exporter_discover", &["reaper.interval = '1h'"]);
    let mut postgres = pg.connect("postgres");
    for name in ["app", "other", "plain"] {
        postgres
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
    }
    let mut dbs: Vec<(&str, postgres::Client)> =
        ["app", "other"].map(|name| (name, pg.connect(name))).into();
    for (i, (_, db)) in dbs.iter_mut().enumerate() {
        db.batch_execute("CREATE EXTENSION session_reaper").unwrap();
        sessions_table(db, "sessions", 100 * (i as i64 + 1), 10);
        db.batch_execute("SELECT reaper_register('sessions')")
            .unwrap();
    }
    for (name, db) in dbs.iter_mut() {
        wait_until(
            &format!("the worker of {name} reaped its sessions"),
            Duration::from_secs(60),
            || {
                count(
                    db,
                    "SELECT count(*) FROM reaper_stats() WHERE total_runs > 0 AND worker_state = 'idle'",
                ) == 1
            },
        );
    }

    let exporter = Exporter::start(
        &pg,
        "app",
        "postgres",
        &["--auto-discover-databases", "--include-databases=app,other"],
    );
    let scrape = exporter.scrape();
    for (name, db) in dbs.iter_mut() {
        let labels = [("datname", *name), ("target", "public.sessions")];
        let (deleted, runs) = {
            let row = db
                .query_one(
                    "SELECT total_deleted::float8, total_runs::float8 FROM reaper_stats()",
                    &[],
                )
                .unwrap();
            (row.get::<_, f64>(0), row.get::<_, f64>(1))
        };
        assert!(deleted > 0.0, "{name} had rows reaped");
        assert_eq!(
            metric(&scrape, "session_reaper_rows_deleted_total", &labels),
            deleted,
            "{name}"
        );
        assert_eq!(
            metric(&scrape, "session_reaper_runs_total", &labels),
            runs,
            "{name}"
        );
        assert_eq!(
            metric(
                &scrape,
                "session_reaper_worker_running",
                &[("datname", *name)]
            ),
            1.0,
            "{name}"
        );
    }
    assert!(
        series(
            &scrape,
            "session_reaper_worker_running",
            &[("datname", "plain")]
        )
        .is_empty(),
        "a database left out of --include-databases is not queried"
    );
    assert_eq!(
        series(&scrape, "pg_exporter_last_scrape_error", &[]),
        [0.0],
        "the scrape had no error\n{}",
        std::fs::read_to_string(&exporter.log).unwrap_or_default()
    );
}
