//! run_now.rs — `reaper_purge` and `reaper_dry_run`: the reap run now, or described without
//! running it. Both act on one target or, given NULL, on every enabled target the caller may
//! manage; both run as the table's owner.

use crate::api::cluster;
use crate::api::registry::managed_target;
use crate::reap::action::Action;
use crate::reap::batch::{self, Progress};
use crate::reap::cursor::Cursor;
use crate::reap::history::{self, Run, Status};
use crate::reap::partitions;
use crate::reap::statement;
use crate::reap::target::{self, Registered, Target};
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, may_manage, with_settings};
use crate::shared::sql::pinned;
use crate::shared::txn::in_subtransaction;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgLogLevel;

/// The targets a call acts on: the named one (which must exist and be the caller's), or every
/// enabled target the caller may manage.
fn chosen_targets(relid: Option<pg_sys::Oid>, action: &'static str) -> Vec<Registered> {
    match relid {
        Some(relid) => vec![managed_target(relid, action)],
        None => target::load(None)
            .into_iter()
            .filter(|r| {
                r.enabled
                    && may_manage(r.owner.unwrap_or(crate::shared::security::superuser_role()))
            })
            .collect(),
    }
}

/// reaper_purge reaps now, in the caller's transaction, with the same rule, lock and history
/// as the worker. A target that fails is rolled back alone, reported with a WARNING and in
/// its row, and the others still run.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn reaper_purge_v2(
    target: Option<pg_sys::Oid>,
    max_rows: Option<i64>,
) -> TableIterator<
    'static,
    (
        name!(target, pg_sys::Oid),
        name!(rows_deleted, i64),
        name!(batches, i32),
        name!(duration, Interval),
        name!(status, String),
        name!(error, Option<String>),
        name!(partitions_dropped, i32),
    ),
> {
    if let Some(max_rows) = max_rows.filter(|m| *m <= 0) {
        ReaperError::BadMaxRows { max_rows }.raise();
    }
    let rows = pinned(|| {
        let mut budget = max_rows;
        let mut rows = Vec::new();
        for registered in chosen_targets(target, "purge") {
            let run = purge_one(&registered, budget);
            budget = budget.map(|b| b - run.progress.rows);
            let took_ms = history::record(&run);
            // The worker nodes record their own runs; the caller sees the cluster's rows.
            let on_workers = match &registered.target {
                Ok(t) if t.distributed && budget.is_none_or(|b| b > 0) => {
                    purge_on_workers(registered.relid, budget)
                }
                _ => 0,
            };
            budget = budget.map(|b| b - on_workers);
            rows.push((
                registered.relid,
                run.progress.rows + on_workers,
                run.progress.batches,
                Interval::from_micros((took_ms * 1000.0) as i64),
                run.status.as_str().to_string(),
                run.error.clone(),
                run.progress.partitions,
            ));
        }
        rows
    });
    TableIterator::new(rows)
}

fn purge_one(registered: &Registered, max_rows: Option<i64>) -> Run<'_> {
    let started_at = crate::shared::clock::unix_now();
    let (progress, status, error) = match &registered.target {
        Err(e) => (Progress::default(), Status::Error, Some(e.message())),
        Ok(t) if max_rows.is_some_and(|m| m <= 0) => (Progress::default(), Status::Skipped, None),
        Ok(t) => match in_subtransaction(|| purge_locally(t, max_rows)) {
            Ok(Some(progress)) => (progress, Status::Ok, None),
            Ok(None) => (
                Progress::default(),
                Status::Skipped,
                Some("another reap of this table is running".into()),
            ),
            Err((code, message)) => {
                ErrorReport::new(
                    code,
                    format!("session_reaper: {}: {message}", t.name),
                    "reaper_purge",
                )
                .report(PgLogLevel::WARNING);
                (Progress::default(), Status::of_failure(code), Some(message))
            }
        },
    };
    // A purge that spent its max_rows may have stopped before the last dead row.
    let complete = status == Status::Ok && max_rows.is_none_or(|max| progress.rows < max);
    Run {
        target: registered,
        trigger: "manual",
        started_at,
        progress,
        status,
        error,
        complete,
    }
}

/// Reaps `t` here, or each of its shards on this node when Citus distributes it (a shard that
/// another reap holds is left to it); None when another reap holds `t`'s lock.
fn purge_locally(t: &Target, max_rows: Option<i64>) -> Option<Progress> {
    if !t.distributed {
        return batch::try_lock(t).then(|| batch::delete_until_done(t, max_rows));
    }
    let mut progress = Progress::default();
    let mut from = 0;
    while let Some((id, shard)) = crate::reap::citus::next_shard(t, from) {
        from = id + 1;
        let left = max_rows.map(|max| max - progress.rows);
        if left.is_some_and(|left| left <= 0) {
            break;
        }
        if !batch::try_lock(&shard) {
            continue;
        }
        let done = batch::delete_until_done(&shard, left);
        progress.rows += done.rows;
        progress.batches += done.batches;
        progress.longest_batch = progress.longest_batch.max(done.longest_batch);
    }
    Some(progress)
}

/// On a Citus coordinator, purges a distributed table on every worker node (each with
/// `max_rows` of its own); returns the rows they removed.
fn purge_on_workers(relid: pg_sys::Oid, max_rows: Option<i64>) -> i64 {
    let max_rows = max_rows.map_or("NULL".to_string(), |m| m.to_string());
    cluster::sum(&cluster::on_workers_for(relid, |schema, name| {
        format!("SELECT coalesce(pg_catalog.sum(p.rows_deleted), 0) FROM {schema}.reaper_stats() s, {schema}.reaper_purge(s.target, {max_rows}) p WHERE s.{}", cluster::target_is(name))
    }))
}

/// reaper_dry_run says what a reap would remove now and how, deleting nothing.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn reaper_dry_run_v2(
    target: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(target, pg_sys::Oid),
        name!(column_name, String),
        name!(timezone, Option<String>),
        name!(would_delete, i64),
        name!(oldest_expiry, Option<TimestampWithTimeZone>),
        name!(oldest_dead_age, Option<Interval>),
        name!(expired_lt_1h, i64),
        name!(expired_1h_6h, i64),
        name!(expired_6h_24h, i64),
        name!(expired_gt_24h, i64),
        name!(statement, String),
        name!(uses_index, bool),
        name!(index_advice, Option<String>),
        name!(action, String),
        name!(partitions_to_drop, Vec<String>),
    ),
> {
    let rows = pinned(|| {
        chosen_targets(target, "inspect")
            .into_iter()
            .filter_map(|registered| match registered.target {
                Ok(t) => Some(describe(&t)),
                // Named explicitly: say what is wrong. Among all targets: skip it, loudly.
                Err(e) if target.is_some() => e.raise(),
                Err(e) => {
                    pgrx::warning!("session_reaper: {}: {}", registered.name, e.message());
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

#[allow(clippy::type_complexity)]
fn describe(
    t: &Target,
) -> (
    pg_sys::Oid,
    String,
    Option<String>,
    i64,
    Option<TimestampWithTimeZone>,
    Option<Interval>,
    i64,
    i64,
    i64,
    i64,
    String,
    bool,
    Option<String>,
    String,
    Vec<String>,
) {
    let query = format!(
        "SELECT count(*), min(e), now() - min(e),
                count(*) FILTER (WHERE now() - e < '1 hour'),
                count(*) FILTER (WHERE now() - e >= '1 hour' AND now() - e < '6 hours'),
                count(*) FILTER (WHERE now() - e >= '6 hours' AND now() - e < '24 hours'),
                count(*) FILTER (WHERE now() - e >= '24 hours')
           FROM (SELECT {} AS e FROM {} WHERE {}) dead",
        t.expiry_expression(),
        t.qualified(),
        t.dead_condition()
    );
    let counts = with_settings(&[("search_path", t.search_path())], || {
        as_role(t.owner, || {
            // The first batch a run would start with now: its way of walking the table
            // depends on the backlog, as in a real run.
            let cursor = Cursor::begin(t, t.batch_size(), false);
            let statement = statement::compose(t, &cursor, t.batch_size(), false);
            let partitions = match t.action {
                Action::DropPartitions => partitions::dead_partitions(t).collect(),
                _ => Vec::new(),
            };
            Spi::connect(|client| {
                let row = client.select(query.as_str(), Some(1), &[])?.first();
                Ok::<_, pgrx::spi::Error>((
                    row.get::<i64>(1)?.unwrap_or(0),
                    row.get::<TimestampWithTimeZone>(2)?,
                    row.get::<Interval>(3)?,
                    [4, 5, 6, 7].map(|i| row.get::<i64>(i).ok().flatten().unwrap_or(0)),
                    statement,
                    partitions,
                ))
            })
        })
    })
    .expect("counting dead rows");
    let (would_delete, oldest, age, buckets, statement, partitions) = counts;
    let uses_index = t.indexed;
    (
        t.relid,
        t.column.clone(),
        t.timezone.clone(),
        would_delete,
        oldest,
        age,
        buckets[0],
        buckets[1],
        buckets[2],
        buckets[3],
        statement,
        uses_index,
        (!uses_index).then(|| t.index_advice()),
        t.action.name().to_string(),
        partitions,
    )
}

/// reaper_wake asks this database's worker to run the named target now (NULL: every enabled
/// target the caller may manage), with its usual per-batch commits; returns how many targets
/// it will run. Naming a target the caller may not manage is refused, as purging it is.
#[pg_extern(sql = false)]
fn reaper_wake_v3(target: Option<pg_sys::Oid>) -> i64 {
    pinned(|| {
        let (ids, woken): (Vec<i64>, Vec<pg_sys::Oid>) = chosen_targets(target, "wake")
            .into_iter()
            .filter(|r| {
                if !r.enabled {
                    pgrx::notice!("target \"{}\" is disabled: it is not run", r.name);
                }
                r.enabled
            })
            .map(|r| (r.id, r.relid))
            .unzip();
        if !ids.is_empty() {
            history::request_wake(&ids);
            crate::shared::hooks::wake_worker_at_commit();
        }
        let on_workers: i64 = woken
            .iter()
            .map(|relid| {
                cluster::sum(&cluster::on_workers_for(*relid, |schema, name| {
                    format!("SELECT coalesce(pg_catalog.sum({schema}.reaper_wake(target)), 0) FROM {schema}.reaper_stats() WHERE {} AND enabled", cluster::target_is(name))
                }))
            })
            .sum();
        if !crate::shared::shmem::has_worker(unsafe { pg_sys::MyDatabaseId }.to_u32()) {
            pgrx::notice!(
                "this database has no session_reaper worker running: the targets run when it starts"
            );
        }
        ids.len() as i64 + on_workers
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    #[pg_test]
    fn dry_run_reports_and_deletes_nothing() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES
               ('a', now() - interval '30 minutes'), ('b', now() - interval '2 hours'),
               ('c', now() - interval '7 hours'), ('d', now() - interval '2 days'), ('e', now() + interval '1 hour')");
        run("SELECT reaper_register('sessions')");
        let buckets = Spi::get_one::<String>(
            "SELECT concat_ws(',', would_delete, expired_lt_1h, expired_1h_6h, expired_6h_24h, expired_gt_24h, uses_index)
               FROM reaper_dry_run('sessions')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(buckets, "4,1,1,1,1,f");
        assert_eq!(count("SELECT count(*) FROM sessions"), 5);
        let advice = Spi::get_one::<String>("SELECT index_advice FROM reaper_dry_run('sessions')")
            .unwrap()
            .unwrap();
        assert_eq!(
            advice,
            "CREATE INDEX CONCURRENTLY ON public.sessions (expires_at);"
        );
        run("CREATE INDEX ON sessions (expires_at)");
        assert_eq!(
            Spi::get_one::<bool>("SELECT uses_index FROM reaper_dry_run('sessions')").unwrap(),
            Some(true)
        );
        // The statement shown is the one purge runs: running it by hand deletes the same rows.
        let statement = Spi::get_one::<String>("SELECT statement FROM reaper_dry_run('sessions')")
            .unwrap()
            .unwrap();
        run(&statement);
        assert_eq!(count("SELECT count(*) FROM sessions"), 1);
    }

    #[pg_test]
    fn a_broken_target_is_reported_and_the_others_still_run() {
        sessions_table();
        run("CREATE TABLE tokens (id int, expires_at timestamptz)");
        run("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 day')");
        run("INSERT INTO tokens VALUES (1, now() - interval '1 day')");
        run("SELECT reaper_register('tokens'); SELECT reaper_register('sessions')");
        run("ALTER TABLE tokens RENAME COLUMN expires_at TO valid_to");
        // The rename disabled the target (issue 17 item 15); switched back on, it fails each run.
        run("SELECT reaper_enable('tokens', true)");
        let statuses = Spi::get_one::<String>(
            "SELECT string_agg(target::text || ':' || status || ':' || rows_deleted, ',' ORDER BY target::text) FROM reaper_purge()",
        )
        .unwrap()
        .unwrap();
        assert_eq!(statuses, "sessions:ok:1,tokens:error:0");
        assert_eq!(
            count("SELECT total_errors FROM reaper_stats() WHERE target = 'tokens'::regclass"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM tokens"), 1);
    }

    #[pg_test]
    fn disabled_targets_are_left_alone_by_a_purge_of_all() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES ('dead', now() - interval '1 day')");
        run("SELECT reaper_register('sessions', enabled => false)");
        assert_eq!(count("SELECT count(*) FROM reaper_purge()"), 0);
        run("SELECT reaper_enable('sessions', true)");
        assert_eq!(
            count("SELECT sum(rows_deleted)::bigint FROM reaper_purge()"),
            1
        );
        run("SELECT reaper_unregister('sessions')");
        assert_eq!(count("SELECT count(*) FROM reaper_targets"), 0);
    }
}
