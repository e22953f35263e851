//! Past one machine: a real Citus cluster (a coordinator and two worker nodes) on this machine.
//! A distributed table is registered on the coordinator; each node's worker reaps the shards
//! stored on it, through shard moves and a node going down, and nothing else is reaped there.
//! Skipped, said once, where Citus is not installed; under CI=true it must be.

use postgres::Client;
use session_reaper_harness::citus::{available, deleted_on, distributed_sessions, CitusCluster};
use session_reaper_harness::{count, error_of, expired, wait_until, SOON};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Live rows of the sessions table (those the test made live and no one refreshed).
fn live(db: &mut Client) -> i64 {
    count(
        db,
        "SELECT count(*) FROM sessions WHERE expires_at >= now()",
    )
}

/// The dead rows each worker node holds now, by its shard placements, read on the coordinator.
fn expired_per_worker(db: &mut Client, cluster: &CitusCluster) -> Vec<i64> {
    cluster
        .workers
        .iter()
        .map(|w| {
            count(
                db,
                &format!(
                    "SELECT count(*) FROM sessions s
                      WHERE s.expires_at < now()
                        AND get_shard_id_for_distribution_column('sessions', s.user_id) IN
                            (SELECT shardid FROM pg_dist_shard_placement WHERE nodeport = {})",
                    w.port
                ),
            )
        })
        .collect()
}

#[test]
fn a_distributed_table_over_32_shards_is_reaped_by_each_node_on_its_own_shards() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_reap", &["reaper.interval = '1s'"]);
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 32, 1_000_000, 10_000);
    let per_worker = expired_per_worker(&mut db, &cluster);
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until(
        "the worker nodes removed every expired row",
        Duration::from_secs(600),
        || expired(&mut db, "sessions") == 0,
    );
    assert_eq!(live(&mut db), 10_000, "every live row is still there");
    // Each node removed exactly the dead rows its own shards held: none went through another.
    wait_until("each node recorded its runs", SOON, || {
        cluster.deleted_per_worker("sessions") == per_worker
    });
    // The coordinator shows the cluster: each node's runs, and the total.
    let total = count(
        &mut db,
        "SELECT total_deleted FROM reaper_cluster_stats() WHERE node IS NULL AND target = 'public.sessions'",
    );
    assert_eq!(total, 1_000_000, "the cluster's total");
    let nodes = count(
        &mut db,
        "SELECT count(*) FROM reaper_cluster_stats()
          WHERE node IS NOT NULL AND target = 'public.sessions' AND last_status = 'ok'",
    );
    assert_eq!(nodes, 3, "a row per node, coordinator included");
    // The coordinator holds no shard: its runs remove nothing and fail at nothing.
    let coordinator = count(
        &mut db,
        "SELECT count(*) FROM reaper_run WHERE rows > 0 OR status <> 'ok'",
    );
    assert_eq!(coordinator, 0, "the coordinator's runs remove nothing");
    for worker in &cluster.workers {
        assert_eq!(
            worker.log_lines("WARNING:  session_reaper"),
            0,
            "no warning on a worker node:\n{}",
            worker.log()
        );
    }
}

#[test]
fn registry_calls_on_the_coordinator_reach_every_node() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_registry", &["reaper.interval = '1h'"]);
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 8, 3_000, 100);
    // Disabled, so only the purge below removes rows.
    db.execute(
        "SELECT reaper_register('sessions', batch_size => 500, enabled => false)",
        &[],
    )
    .unwrap();
    let enabled_on_nodes = || -> Vec<Option<bool>> {
        cluster
            .workers
            .iter()
            .map(|w| {
                w.connect("postgres")
                    .query_opt(
                        "SELECT enabled FROM reaper_stats() WHERE target = 'sessions'::regclass",
                        &[],
                    )
                    .unwrap()
                    .map(|r| r.get(0))
            })
            .collect()
    };
    assert_eq!(
        enabled_on_nodes(),
        vec![Some(false); 2],
        "registered on each worker node"
    );
    // The nodes apply a call at once, so it may not run where it could still roll back.
    let (code, message) =
        error_of(db.batch_execute("BEGIN; SELECT reaper_enable('sessions', true); ROLLBACK;"));
    assert_eq!(code, "25001", "{message}");
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        enabled_on_nodes(),
        vec![Some(false); 2],
        "no node took the refused call"
    );
    // The dry run on the coordinator counts the whole cluster's dead rows.
    let would = count(
        &mut db,
        "SELECT would_delete FROM reaper_dry_run('sessions')",
    );
    assert_eq!(would, 3_000);
    // A purge on the coordinator reaps every node's shards and reports the cluster's rows.
    let purged = count(&mut db, "SELECT rows_deleted FROM reaper_purge('sessions')");
    assert_eq!(purged, 3_000);
    assert_eq!(expired(&mut db, "sessions"), 0);
    assert_eq!(live(&mut db), 100);
    db.execute("SELECT reaper_enable('sessions', true)", &[])
        .unwrap();
    assert_eq!(
        enabled_on_nodes(),
        vec![Some(true); 2],
        "enabled on each worker node"
    );
    db.execute("SELECT reaper_unregister('sessions')", &[])
        .unwrap();
    assert_eq!(
        enabled_on_nodes(),
        vec![None; 2],
        "unregistered on each worker node"
    );
}

#[test]
fn copies_on_several_nodes_and_actions_other_than_delete_are_refused() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_refused", &[]);
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 4, 10, 10);
    db.batch_execute(
        "CREATE TABLE ref (id int PRIMARY KEY, expires_at timestamptz NOT NULL);
         SELECT create_reference_table('ref');
         SET citus.shard_replication_factor = 2;
         CREATE TABLE copies (id int PRIMARY KEY, expires_at timestamptz NOT NULL);
         SELECT create_distributed_table('copies', 'id');
         RESET citus.shard_replication_factor;
         CREATE TABLE archive (LIKE sessions);",
    )
    .unwrap();
    for table in ["ref", "copies"] {
        let (code, message) =
            error_of(db.execute(&format!("SELECT reaper_register('{table}')"), &[]));
        assert_eq!(code, "0A000", "{table}: {message}");
        assert!(
            message.contains(&format!("\"public.{table}\"")),
            "{message}"
        );
        assert!(message.contains("more than one node"), "{message}");
    }
    let (code, message) = error_of(db.execute(
        "SELECT reaper_register('sessions', action => 'archive', archive_table => 'archive')",
        &[],
    ));
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("only action \"delete\""), "{message}");
    // Nothing was registered anywhere.
    assert_eq!(count(&mut db, "SELECT count(*) FROM reaper_stats()"), 0);
    for worker in &cluster.workers {
        assert_eq!(
            count(
                &mut worker.connect("postgres"),
                "SELECT count(*) FROM reaper_stats()"
            ),
            0
        );
    }
}

#[test]
fn dropping_or_undistributing_the_table_unregisters_it_on_every_node() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_drop", &["reaper.interval = '1s'"]);
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 8, 100, 10);
    // Each its own transaction: the worker nodes see a distributed table once it committed.
    for statement in [
        "CREATE TABLE other (user_id bigint NOT NULL, expires_at timestamptz NOT NULL)",
        "SELECT create_distributed_table('other', 'user_id')",
        "SELECT reaper_register('sessions')",
        "SELECT reaper_register('other')",
    ] {
        db.batch_execute(statement).unwrap();
    }
    let targets = |node: &session_reaper_harness::Cluster| {
        count(
            &mut node.connect("postgres"),
            "SELECT count(*) FROM reaper_target",
        )
    };
    assert_eq!(
        cluster.workers.iter().map(targets).collect::<Vec<_>>(),
        vec![2, 2]
    );
    db.batch_execute("DROP TABLE sessions").unwrap();
    db.batch_execute("SELECT undistribute_table('other')")
        .unwrap();
    wait_until("every node forgot both targets", SOON, || {
        cluster.workers.iter().map(targets).sum::<i64>() == 0
    });
    assert_eq!(
        targets(&cluster.coordinator),
        0,
        "the coordinator forgot both"
    );
    // The workers' loops go on without a dangling target to fail on: a target registered
    // after the drops runs on each node, and no warning came before or with it.
    db.batch_execute(
        "CREATE TABLE keep (user_id bigint NOT NULL, expires_at timestamptz NOT NULL)",
    )
    .unwrap();
    db.batch_execute("SELECT create_distributed_table('keep', 'user_id')")
        .unwrap();
    db.batch_execute("SELECT reaper_register('keep')").unwrap();
    wait_until("each node ran the new target", SOON, || {
        cluster.workers.iter().all(|w| {
            count(
                &mut w.connect("postgres"),
                "SELECT count(*) FROM reaper_run WHERE relid = 'keep'::regclass",
            ) > 0
        })
    });
    for worker in &cluster.workers {
        assert_eq!(
            worker.log_lines("WARNING:  session_reaper"),
            0,
            "{}",
            worker.log()
        );
    }
}

#[test]
fn a_shard_moved_during_a_run_loses_no_live_row_and_leaves_no_dead_one() {
    reshuffled_during_a_run("citus_move", |db, cluster| {
        // Every shard of worker 1 to worker 2, one at a time.
        let (from, to) = (&cluster.workers[0], &cluster.workers[1]);
        for shard in shards_on(db, from.port) {
            db.execute(
                "SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode => 'block_writes')",
                &[
                    &shard,
                    &from.dir.display().to_string(),
                    &i32::from(from.port),
                    &to.dir.display().to_string(),
                    &i32::from(to.port),
                ],
            )
            .unwrap();
            assert_eq!(live(db), 5_000, "no live row lost by the move of {shard}");
        }
    });
}

#[test]
fn a_shard_split_during_a_run_loses_no_live_row_and_leaves_no_dead_one() {
    reshuffled_during_a_run("citus_split", |db, cluster| {
        // Every shard of worker 1 in two halves, one on each worker.
        let nodes: Vec<i32> = cluster
            .workers
            .iter()
            .map(|w| {
                db.query_one(
                    "SELECT nodeid FROM pg_dist_node WHERE nodeport = $1",
                    &[&i32::from(w.port)],
                )
                .unwrap()
                .get(0)
            })
            .collect();
        for shard in shards_on(db, cluster.workers[0].port) {
            db.execute(
                "SELECT citus_split_shard_by_split_points($1,
                        ARRAY[((shardminvalue::bigint + shardmaxvalue::bigint) / 2)::text], $2,
                        shard_transfer_mode => 'block_writes')
                   FROM pg_dist_shard WHERE shardid = $1",
                &[&shard, &nodes],
            )
            .unwrap();
            assert_eq!(live(db), 5_000, "no live row lost by the split of {shard}");
        }
    });
}

/// The shards of `sessions` on the node at `port`.
fn shards_on(db: &mut Client, port: u16) -> Vec<i64> {
    let shards: Vec<i64> = db
        .query(
            "SELECT shardid FROM pg_dist_shard_placement WHERE nodeport = $1 ORDER BY shardid",
            &[&i32::from(port)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!shards.is_empty(), "the node at {port} holds shards");
    shards
}

/// Has `reshuffle` move shards about while both worker nodes reap 200,000 dead rows in slow
/// batches; then every dead row is gone, every live row is there, each dead row was removed
/// once (a batch on rows a move was copying would have them come back, be removed again and
/// counted twice), and no run failed.
fn reshuffled_during_a_run(name: &str, reshuffle: impl Fn(&mut Client, &CitusCluster)) {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start(
        name,
        &["reaper.interval = '1s'", "reaper.batch_delay = '100ms'"],
    );
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 8, 200_000, 5_000);
    db.execute(
        "SELECT reaper_register('sessions', batch_size => 1000)",
        &[],
    )
    .unwrap();
    wait_until("the reap is under way", SOON, || {
        expired(&mut db, "sessions") < 190_000
    });
    reshuffle(&mut db, &cluster);
    wait_until(
        "every dead row is gone after the reshuffle",
        SOON * 4,
        || expired(&mut db, "sessions") == 0,
    );
    assert_eq!(live(&mut db), 5_000);
    // The runs record their rows as they end.
    wait_until("the nodes recorded 200,000 rows removed", SOON, || {
        cluster.deleted_per_worker("sessions").iter().sum::<i64>() >= 200_000
    });
    let deleted: i64 = cluster.deleted_per_worker("sessions").iter().sum();
    assert_eq!(deleted, 200_000, "every dead row was removed once");
    let errors = count(
        &mut db,
        "SELECT coalesce(sum((result)::bigint), 0)::bigint FROM run_command_on_workers('SELECT count(*) FROM reaper_run WHERE status = ''error''')",
    );
    assert_eq!(errors, 0, "no run failed over the reshuffle");
}

#[test]
fn a_worker_node_down_mid_run_holds_up_no_other_node() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start(
        "citus_down",
        &["reaper.interval = '1s'", "reaper.batch_delay = '100ms'"],
    );
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 8, 100_000, 2_000);
    let per_worker = expired_per_worker(&mut db, &cluster);
    db.execute("SELECT reaper_register('sessions', batch_size => 500)", &[])
        .unwrap();
    let (up, down) = (&cluster.workers[0], &cluster.workers[1]);
    wait_until("worker 2 is reaping", SOON, || {
        expired_per_worker(&mut db, &cluster)[1] < per_worker[1]
    });
    down.pg_ctl(&["stop", "-m", "immediate"]);
    // Worker 1 finishes every dead row of its own shards while worker 2 is down.
    wait_until("worker 1 removed all of its dead rows", SOON * 2, || {
        deleted_on(up, "sessions") == per_worker[0]
    });
    let unreachable = db
        .query_one(
            "SELECT node FROM reaper_cluster_stats() WHERE last_status = 'unreachable'",
            &[],
        )
        .unwrap()
        .get::<_, String>(0);
    assert!(
        unreachable.ends_with(&format!(":{}", down.port)),
        "{unreachable}"
    );
    down.pg_ctl(&["start", "-w"]);
    wait_until("worker 2, back, removed the rest", SOON * 2, || {
        expired(&mut db, "sessions") == 0
    });
    assert_eq!(live(&mut db), 2_000);
    // Worker 2 recorded what its cut run had committed: each node's count is its own rows.
    wait_until("both nodes recorded their rows", SOON, || {
        cluster.deleted_per_worker("sessions") == per_worker
    });
}

#[test]
fn refreshes_at_the_edge_of_expiry_through_the_coordinator_lose_no_live_row() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_race", &["reaper.interval = '1s'"]);
    let mut db = cluster.connect();
    // 20,000 sessions expiring over the next 20 seconds, 1,000 a second.
    distributed_sessions(&mut db, 16, 0, 0);
    db.batch_execute(
        "INSERT INTO sessions (user_id, token, expires_at)
           SELECT g % 1000, 'edge', now() + interval '2 seconds' + g * interval '1 millisecond'
             FROM generate_series(1, 20000) g",
    )
    .unwrap();
    db.execute("SELECT reaper_register('sessions', batch_size => 200)", &[])
        .unwrap();
    let done = AtomicBool::new(false);
    // Two clients refresh, through the coordinator, rows whose expiry is at most 50 ms away;
    // a refresh that found its row still live commits it live for an hour.
    let refreshed: Vec<Vec<(i64, i64)>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2)
            .map(|client| {
                let (cluster, done) = (&cluster, &done);
                scope.spawn(move || {
                    let mut app = cluster.connect();
                    let mut kept = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        let rows = app
                            .query(
                                "UPDATE sessions SET expires_at = now() + interval '1 hour', token = 'kept'
                                  WHERE (user_id, id) IN (
                                        SELECT user_id, id FROM sessions
                                         WHERE token = 'edge' AND user_id % 2 = $1
                                           AND expires_at BETWEEN now() AND now() + interval '50 milliseconds'
                                         LIMIT 20)
                                    AND expires_at >= now()
                                RETURNING user_id, id",
                                &[&(client as i64)],
                            )
                            .unwrap();
                        kept.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
                    }
                    kept
                })
            })
            .collect();
        wait_until("the edge rows all expired or were kept", SOON, || {
            count(
                &mut db,
                "SELECT count(*) FROM sessions WHERE token = 'edge' AND expires_at >= now()",
            ) == 0
        });
        wait_until("the nodes reaped every expired edge row", SOON, || {
            expired(&mut db, "sessions") == 0
        });
        done.store(true, Ordering::Relaxed);
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let kept: Vec<(i64, i64)> = refreshed.into_iter().flatten().collect();
    assert!(
        kept.len() > 100,
        "the clients refreshed rows at the edge ({})",
        kept.len()
    );
    let present = count(
        &mut db,
        "SELECT count(*) FROM sessions WHERE token = 'kept'",
    );
    assert_eq!(
        present,
        kept.len() as i64,
        "every refreshed row is still there"
    );
    wait_until("the nodes recorded the rest as removed", SOON, || {
        cluster.deleted_per_worker("sessions").iter().sum::<i64>() + present >= 20_000
    });
    let deleted: i64 = cluster.deleted_per_worker("sessions").iter().sum();
    assert_eq!(deleted + present, 20_000, "the rest were reaped, once");
}

#[test]
fn plain_citus_local_and_schema_sharded_tables_are_reaped_where_their_rows_are() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start("citus_single", &["reaper.interval = '1s'"]);
    let mut db = cluster.connect();
    for statement in [
        "CREATE TABLE plain (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL)",
        "CREATE TABLE loc (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL)",
        "SELECT citus_add_local_table_to_metadata('loc')",
        "SET citus.enable_schema_based_sharding = on",
        "CREATE SCHEMA tenant",
        "RESET citus.enable_schema_based_sharding",
        "CREATE TABLE tenant.s (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL)",
    ] {
        db.batch_execute(statement).unwrap();
    }
    for table in ["plain", "loc", "tenant.s"] {
        db.batch_execute(&format!(
            "INSERT INTO {table} (expires_at) SELECT now() - interval '1 hour' FROM generate_series(1, 1000);
             INSERT INTO {table} (expires_at) SELECT now() + interval '1 hour' FROM generate_series(1, 10);"
        ))
        .unwrap();
        db.execute(&format!("SELECT reaper_register('{table}')"), &[])
            .unwrap();
    }
    wait_until("the tables lost their expired rows", SOON, || {
        expired(&mut db, "plain") + expired(&mut db, "loc") + expired(&mut db, "tenant.s") == 0
    });
    assert_eq!(count(&mut db, "SELECT count(*) FROM plain"), 10);
    assert_eq!(count(&mut db, "SELECT count(*) FROM loc"), 10);
    assert_eq!(count(&mut db, "SELECT count(*) FROM tenant.s"), 10);
}

#[test]
fn a_shard_whose_copy_holds_its_metadata_lock_is_left_alone_until_released() {
    if !available() {
        return;
    }
    let cluster = CitusCluster::start(
        "citus_locked",
        &["reaper.interval = '1s'", "reaper.lock_timeout = '200ms'"],
    );
    let mut db = cluster.connect();
    distributed_sessions(&mut db, 4, 4_000, 100);
    let worker = &cluster.workers[0];
    let shard: i64 = db
        .query_one(
            "SELECT min(shardid) FROM pg_dist_shard_placement WHERE nodeport = $1",
            &[&i32::from(worker.port)],
        )
        .unwrap()
        .get(0);
    let held_dead = format!(
        "SELECT count(*) FROM sessions WHERE expires_at < now()
            AND get_shard_id_for_distribution_column('sessions', user_id) = {shard}"
    );
    let before = count(&mut db, &held_dead);
    // What a block_writes move holds while it copies the shard.
    let mut mover = worker.connect("postgres");
    mover
        .batch_execute(&format!(
            "BEGIN; SELECT lock_shard_metadata(7, ARRAY[{shard}]::bigint[])"
        ))
        .unwrap();
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    wait_until("every other shard lost its dead rows", SOON, || {
        expired(&mut db, "sessions") == before
    });
    assert_eq!(
        count(&mut db, &held_dead),
        before,
        "the held shard was not touched"
    );
    mover.batch_execute("COMMIT").unwrap();
    wait_until("the released shard is reaped", SOON, || {
        expired(&mut db, "sessions") == 0
    });
    assert_eq!(live(&mut db), 100);
}
