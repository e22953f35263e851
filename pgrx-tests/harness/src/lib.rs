//! A throwaway Postgres 15 cluster with session_reaper preloaded, driven from tests the way a
//! DBA drives one: initdb and pg_ctl as the `postgres` user, postgresql.conf lines, clients over
//! the unix socket, signals to processes, the server log.
//!
//! Every wait is a bounded poll ([`wait_until`]) that fails with a message saying what did not
//! happen.

pub mod citus;

use postgres::{Client, Config, NoTls};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Postgres programs to run: those of `$PG_CONFIG` (default: Debian's Postgres 15).
pub fn pg_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let pg_config = std::env::var("PG_CONFIG")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
        let out = Command::new(&pg_config)
            .arg("--bindir")
            .output()
            .unwrap_or_else(|e| panic!("running {pg_config}: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// Where clusters live: `$SR_TMP/session_reaper_harness` (default /tmp).
fn harness_root() -> String {
    format!(
        "{}/session_reaper_harness",
        std::env::var("SR_TMP").unwrap_or_else(|_| "/tmp".into())
    )
}
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a Postgres program as the cluster's owner (`postgres` when we are root).
fn as_owner(program: &str, args: &[&str]) -> std::process::Output {
    as_cluster_owner(&format!("{}/{program}", pg_bin()), args)
}

/// Runs a program as the clusters' owner (`postgres` when we are root), who may do to the
/// server's processes what their owner may (such as `taskset`) without CAP_SYS_NICE.
pub fn as_cluster_owner(program: &str, args: &[&str]) -> std::process::Output {
    let output = if is_root() {
        Command::new("sudo")
            .args(["-u", "postgres", "--", program])
            .args(args)
            .output()
    } else {
        Command::new(program).args(args).output()
    };
    output.unwrap_or_else(|e| panic!("running {program}: {e}"))
}

impl Cluster {
    /// initdb, the given postgresql.conf lines, and start. Each test gets its own port and
    /// directory, so tests may run in parallel.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let (dir, port) = fresh_dir(name);
        let data = dir.join("data");
        let out = as_owner(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = vec![
            format!("port = {port}"),
            "listen_addresses = ''".to_string(),
            format!("unix_socket_directories = '{}'", dir.display()),
            "shared_preload_libraries = 'session_reaper'".to_string(),
            "fsync = off".to_string(),
            "log_line_prefix = '%m [%p] %e '".to_string(),
        ];
        lines.extend(conf.iter().map(|l| l.to_string()));
        append_conf(&dir, &lines);
        let cluster = Cluster { dir, port };
        cluster.pg_ctl(&["start", "-w"]);
        cluster
    }

    /// A streaming standby of `primary`, made with pg_basebackup over its socket, and started.
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let (dir, port) = fresh_dir(name);
        let data = dir.join("data");
        let out = as_owner(
            "pg_basebackup",
            &[
                "-h",
                primary.dir.to_str().unwrap(),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "--checkpoint=fast",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The copied postgresql.conf names the primary's port and socket: later lines win.
        append_conf(
            &dir,
            &[
                format!("port = {port}"),
                format!("unix_socket_directories = '{}'", dir.display()),
            ],
        );
        let standby = Cluster { dir, port };
        standby.pg_ctl(&["start", "-w"]);
        standby
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = as_owner("pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The client settings for `dbname` as `user` over the cluster's socket.
    fn config(&self, dbname: &str, user: &str) -> Config {
        let mut config = Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(user)
            .dbname(dbname);
        config
    }

    /// A client connected to `dbname` over the cluster's socket.
    pub fn connect(&self, dbname: &str) -> Client {
        self.config(dbname, "postgres")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connecting to {dbname}: {e}\n{}", self.log()))
    }

    /// A client connected to `dbname` as the login role `user` (trust authentication).
    pub fn connect_as(&self, dbname: &str, user: &str) -> Client {
        self.config(dbname, user)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connecting to {dbname} as {user}: {e}\n{}", self.log()))
    }

    /// A client to `dbname` once the server accepts connections again (after a restart or
    /// crash recovery), polling for at most `SOON`.
    pub fn reconnect(&self, dbname: &str) -> Client {
        let mut client = None;
        wait_until("the server accepts connections again", SOON, || {
            client = self
                .config(dbname, "postgres")
                .connect(NoTls)
                .ok()
                .filter(|c| !c.is_closed());
            client.is_some()
        });
        client.unwrap()
    }

    /// How many lines of the server log contain `text`.
    pub fn log_lines(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The pid of the session_reaper worker of `dbname`, waiting for it to be running.
    pub fn worker_pid(&self, dbname: &str) -> i32 {
        let mut client = self.connect("postgres");
        let mut pid = 0;
        wait_until(
            &format!("a session_reaper worker runs in {dbname}"),
            Duration::from_secs(30),
            || {
                let row = client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'session_reaper worker' AND datname = $1",
                    &[&dbname],
                )
                .expect("pg_stat_activity");
                pid = row.map_or(0, |r| r.get(0));
                pid != 0
            },
        );
        pid
    }

    /// Sends a signal to a server process (as root, or as the owner).
    pub fn signal(&self, pid: i32, signal: &str) {
        // We are root or the cluster's owner: either may signal its processes.
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "kill -{signal} {pid}"
        );
    }

    /// What a failed test leaves for whoever reads its output: the reaper's processes as
    /// pg_stat_activity sees them (missing, sleeping, or waiting on a lock), reaper_stats(),
    /// and the end of the server log. Best effort: the server may be down or stuck.
    fn print_post_mortem(&self) {
        eprintln!("--- cluster {} at the failure", self.dir.display());
        let mut config = self.config("postgres", "postgres");
        config
            .connect_timeout(Duration::from_secs(5))
            .options("-c statement_timeout=3s -c lock_timeout=1s");
        // In a thread of its own, waited for at most 15 s: a query stuck on an LWLock, which
        // no timeout ends, must not hang the failing test (its output shows only when it ends).
        let (sent, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sent.send(reaper_state(config));
        });
        match received.recv_timeout(Duration::from_secs(15)) {
            Ok(state) => eprint!("{state}"),
            Err(_) => eprintln!("(the server did not answer within 15 s)"),
        }
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("--- the last lines of its server log");
        lines[lines.len().saturating_sub(40)..]
            .iter()
            .for_each(|l| eprintln!("{l}"));
    }
}

/// The reaper's processes and reaper_stats() in `postgres`, as text, for a post-mortem.
fn reaper_state(config: Config) -> String {
    let mut client = match config.connect(NoTls) {
        Ok(client) => client,
        Err(e) => return format!("(not connected: {e})\n"),
    };
    let sections = [
        (
            "session_reaper processes",
            "SELECT format('%s pid %s in %s: %s %s/%s, %s', backend_type, pid, datname, \
                    state, wait_event_type, wait_event, left(query, 80)) \
               FROM pg_stat_activity WHERE backend_type LIKE 'session_reaper%'",
        ),
        (
            "reaper_stats() in postgres",
            "SELECT row_to_json(s)::text FROM reaper_stats() s",
        ),
    ];
    let mut out = String::new();
    for (title, query) in sections {
        out.push_str(&format!("-- {title}:\n"));
        match client.query(query, &[]) {
            Ok(rows) if rows.is_empty() => out.push_str("none\n"),
            Ok(rows) => rows
                .iter()
                .for_each(|r| out.push_str(&format!("{}\n", r.get::<_, String>(0)))),
            Err(e) => out.push_str(&format!("(not read: {e})\n")),
        }
    }
    out
}

/// A new, empty directory for a cluster called `name` that the owner can enter, and a port.
/// Each test gets its own, so tests may run in parallel.
fn fresh_dir(name: &str) -> (PathBuf, u16) {
    let base = 40000 + (std::process::id() % 1000) as u16 * 20;
    let port = base + NEXT_PORT.fetch_add(1, Ordering::SeqCst);
    let root = harness_root();
    let dir = PathBuf::from(format!("{root}/{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create cluster dir");
    if is_root() {
        let _ = Command::new("chmod").args(["755", &root]).status();
        Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status()
            .expect("chown");
    }
    (dir, port)
}

/// Appends lines to the cluster's postgresql.conf (written as its owner would).
fn append_conf(dir: &std::path::Path, lines: &[String]) {
    let conf_path = dir.join("data").join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
    text.push_str(&lines.join("\n"));
    text.push('\n');
    let tmp = dir.join("postgresql.conf.new");
    std::fs::write(&tmp, text).expect("write conf");
    Command::new("cp")
        .args([tmp.to_str().unwrap(), conf_path.to_str().unwrap()])
        .status()
        .expect("cp conf");
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_post_mortem();
        }
        let data = self.dir.join("data");
        let _ = as_owner(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// How long a bounded poll waits by default for something the worker does on its own.
pub const SOON: Duration = Duration::from_secs(30);

/// A cluster with session_reaper created in its `postgres` database, and a client to it.
pub fn with_reaper(name: &str, conf: &[&str]) -> (Cluster, Client) {
    let pg = Cluster::start(name, conf);
    let mut db = pg.connect("postgres");
    db.batch_execute("CREATE EXTENSION session_reaper").unwrap();
    (pg, db)
}

/// Registers `sessions` and waits until the worker has removed its expired rows.
pub fn register_and_drain(db: &mut Client, what: &str) {
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until(what, SOON, || expired(db, "sessions") == 0);
}

/// Rows of `table` whose `expires_at` has passed.
pub fn expired(client: &mut Client, table: &str) -> i64 {
    count(
        client,
        &format!("SELECT count(*) FROM {table} WHERE expires_at < now()"),
    )
}

/// `ALTER SYSTEM SET name = value` and `pg_reload_conf()`, as a DBA changes a setting.
pub fn reload(client: &mut Client, name: &str, value: &str) {
    // Two statements: ALTER SYSTEM cannot run inside the implicit transaction of a multi-statement query.
    client
        .batch_execute(&format!("ALTER SYSTEM SET {name} = {value}"))
        .unwrap_or_else(|e| panic!("ALTER SYSTEM SET {name} = {value}: {e}"));
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// The message of a failed statement's ERROR (panics when it did not fail).
pub fn error_of(result: Result<impl std::fmt::Debug, postgres::Error>) -> (String, String) {
    let err = result.expect_err("the statement fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a Postgres error: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Polls `condition` every 50 ms until it holds, failing after `timeout` with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A single bigint from a query.
pub fn count(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The usual sessions table with `expired` dead rows and `live` rows an hour from expiry.
pub fn sessions_table(client: &mut Client, table: &str, expired: i64, live: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL);
             CREATE INDEX ON {table} (expires_at);
             INSERT INTO {table} (token, expires_at)
               SELECT 'dead', now() - interval '1 minute' - g * interval '1 second' FROM generate_series(1, {expired}) g;
             INSERT INTO {table} (token, expires_at)
               SELECT 'live', now() + interval '1 hour' FROM generate_series(1, {live}) g;"
        ))
        .expect("create sessions table");
}

/// A cluster whose reaper serves only `app_one` (`reaper.database_names`), with databases
/// `app_one` and `app_two` each holding a registered `sessions` table of 100 expired rows, and a
/// client to its `postgres` database.
pub fn two_databases_one_named(name: &str) -> (Cluster, Client) {
    let pg = Cluster::start(
        name,
        &[
            "reaper.interval = '1s'",
            "reaper.database_names = 'app_one'",
        ],
    );
    let mut admin = pg.connect("postgres");
    for database in ["app_one", "app_two"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        let mut db = pg.connect(database);
        db.batch_execute("CREATE EXTENSION session_reaper").unwrap();
        sessions_table(&mut db, "sessions", 100, 0);
        db.execute("SELECT reaper_register('sessions')", &[])
            .unwrap();
    }
    (pg, admin)
}
