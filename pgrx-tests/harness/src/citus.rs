//! A Citus cluster on one machine: a coordinator and two worker nodes, each a [`Cluster`] with
//! `citus` and `session_reaper` preloaded, joined over their unix sockets.

use crate::{count, Cluster};
use postgres::Client;

pub struct CitusCluster {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
}

/// Whether Citus is installed into the Postgres under test. Under `CI=true` it must be
/// (scripts/setup.sh builds it); elsewhere its tests say once that they are skipped.
pub fn available() -> bool {
    let pkglib = std::process::Command::new(format!("{}/pg_config", crate::pg_bin()))
        .arg("--pkglibdir")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let found = std::path::Path::new(&format!("{pkglib}/citus.so")).exists();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but Citus is not installed in {pkglib}: scripts/setup.sh builds it from ../shared/vendor/citus"
        );
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("Citus is not installed in {pkglib}: the Citus tests are skipped")
        });
    }
    found
}

impl CitusCluster {
    /// Starts the three nodes with `conf` added to each, makes the cluster, and creates
    /// session_reaper on the coordinator (Citus creates it on the workers).
    pub fn start(name: &str, conf: &[&str]) -> CitusCluster {
        let node = |role: &str| {
            let mut lines = vec!["shared_preload_libraries = 'citus,session_reaper'"];
            lines.extend_from_slice(conf);
            let node = Cluster::start(&format!("{name}_{role}"), &lines);
            // Citus connects a node to itself (shard moves) by this host: its socket directory.
            let mut db = node.connect("postgres");
            db.batch_execute(&format!(
                "ALTER SYSTEM SET citus.local_hostname = '{}'",
                node.dir.display()
            ))
            .unwrap();
            db.batch_execute("SELECT pg_reload_conf()").unwrap();
            db.batch_execute("CREATE EXTENSION citus").unwrap();
            node
        };
        let cluster = CitusCluster {
            coordinator: node("coordinator"),
            workers: vec![node("worker1"), node("worker2")],
        };
        let mut db = cluster.connect();
        db.execute(
            "SELECT citus_set_coordinator_host($1, $2)",
            &[
                &cluster.coordinator.dir.display().to_string(),
                &i32::from(cluster.coordinator.port),
            ],
        )
        .unwrap();
        for worker in &cluster.workers {
            db.execute(
                "SELECT citus_add_node($1, $2)",
                &[&worker.dir.display().to_string(), &i32::from(worker.port)],
            )
            .unwrap();
        }
        db.batch_execute("CREATE EXTENSION session_reaper").unwrap();
        cluster
    }

    /// A client to the coordinator's `postgres` database.
    pub fn connect(&self) -> Client {
        self.coordinator.connect("postgres")
    }

    /// The rows `total_deleted` of `table`'s target says each worker node removed, read on
    /// that node.
    pub fn deleted_per_worker(&self, table: &str) -> Vec<i64> {
        self.workers.iter().map(|w| deleted_on(w, table)).collect()
    }
}

/// The rows `total_deleted` of `table`'s target on `node` says it removed.
pub fn deleted_on(node: &Cluster, table: &str) -> i64 {
    count(
        &mut node.connect("postgres"),
        &format!("SELECT coalesce(sum(total_deleted), 0)::bigint FROM reaper_stats() WHERE target = '{table}'::regclass"),
    )
}

/// A `sessions` table distributed by `user_id` over `shards` shards, with `expired` dead rows
/// and `live` rows an hour from expiry, spread over 1000 users.
pub fn distributed_sessions(db: &mut Client, shards: i32, expired: i64, live: i64) {
    db.batch_execute(&format!(
        "SET citus.shard_count = {shards};
         CREATE TABLE sessions (user_id bigint NOT NULL, id bigserial, token text NOT NULL,
                                expires_at timestamptz NOT NULL, PRIMARY KEY (user_id, id));
         CREATE INDEX ON sessions (expires_at);
         SELECT create_distributed_table('sessions', 'user_id');
         INSERT INTO sessions (user_id, token, expires_at)
           SELECT g % 1000, 'dead', now() - interval '1 minute' - g * interval '1 millisecond'
             FROM generate_series(1, {expired}) g;
         INSERT INTO sessions (user_id, token, expires_at)
           SELECT g % 1000, 'live', now() + interval '1 hour' FROM generate_series(1, {live}) g;
         RESET citus.shard_count;"
    ))
    .expect("create the distributed sessions table");
}
