//! stats.rs — `reaper_stats()`: one row per target the caller can see, with what the reaper
//! has done (from `reaper_state`) and what waits (the backlog).
//!
//! The backlog is measured cheaply enough to scrape every 15 seconds: the planner's row
//! estimate for the dead-row condition (no scan), and the oldest dead row found by one probe
//! in expiry order (an index descent when the column is indexed).

use crate::history::unix_now;
use crate::security::{as_role, with_settings};
use crate::shmem::{Slot, WorkerState, SHARED};
use crate::sql::{ext_owner, ext_schema, pinned};
use crate::target::{self, Registered, Target};
use crate::txn::in_subtransaction;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use std::collections::HashMap;

/// reaper_stats reports every target the caller may read, with counters and backlog.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn reaper_stats() -> TableIterator<
    'static,
    (
        name!(target, pg_sys::Oid),
        name!(column_name, String),
        name!(enabled, bool),
        name!(schedule, Option<String>),
        name!(last_run_at, Option<TimestampWithTimeZone>),
        name!(last_success_at, Option<TimestampWithTimeZone>),
        name!(last_status, Option<String>),
        name!(last_error, Option<String>),
        name!(last_deleted, Option<i64>),
        name!(total_deleted, i64),
        name!(total_runs, i64),
        name!(total_errors, i64),
        name!(last_duration, Option<Interval>),
        name!(dead_rows_estimate, Option<i64>),
        name!(oldest_dead_age, Option<Interval>),
        name!(next_run_at, Option<TimestampWithTimeZone>),
        name!(worker_pid, Option<i32>),
        name!(worker_state, String),
        name!(current_target, Option<pg_sys::Oid>),
    ),
> {
    let rows = pinned(|| {
        let targets: HashMap<i64, Registered> =
            target::load(None).into_iter().map(|r| (r.id, r)).collect();
        let worker = worker_slot();
        let now = unix_now();
        let query = format!(
            "SELECT t.id, t.relid::oid, t.column_name::text, t.enabled, t.schedule, s.last_run_at,
                    s.last_status, s.last_error, s.last_deleted, coalesce(s.total_deleted, 0),
                    coalesce(s.total_runs, 0), coalesce(s.total_errors, 0), s.last_duration,
                    s.last_success_at
               FROM {schema}.reaper_target t
               LEFT JOIN {schema}.reaper_state s ON s.target_id = t.id
              WHERE {schema}.reaper_can_see(t.relid, $1)
              ORDER BY t.id",
            schema = ext_schema(),
        );
        // The registry is read as the extension's owner, filtered by what the caller may see.
        let caller = unsafe { pg_sys::GetUserId() };
        let visible = as_role(ext_owner(), || {
            Spi::connect(|client| {
                let mut out = Vec::new();
                for row in client.select(query.as_str(), None, &[caller.into()])? {
                    let id: i64 = row.get(1)?.expect("id");
                    let registered = targets.get(&id);
                    let (estimate, oldest) = registered
                        .and_then(|r| r.target.as_ref().ok())
                        .map(backlog)
                        .unwrap_or((None, None));
                    let next_run = registered
                        .filter(|r| r.enabled)
                        .map(|r| timestamp(r.next_run(now)));
                    out.push((
                        row.get(2)?.expect("relid"),
                        row.get(3)?.expect("column_name"),
                        row.get(4)?.unwrap_or(false),
                        row.get(5)?,
                        row.get(6)?,
                        row.get(14)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?,
                        row.get(10)?.unwrap_or(0),
                        row.get(11)?.unwrap_or(0),
                        row.get(12)?.unwrap_or(0),
                        row.get(13)?,
                        estimate,
                        oldest,
                        next_run,
                        worker.map(|w| w.pid).filter(|pid| *pid != 0),
                        worker
                            .map_or(WorkerState::Free, |w| w.state)
                            .as_str()
                            .to_string(),
                        worker
                            .map(|w| pg_sys::Oid::from(w.current))
                            .filter(|oid| *oid != pg_sys::InvalidOid),
                    ));
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        })
        .expect("reading reaper_state");
        visible
    });
    TableIterator::new(rows)
}

/// The planner's estimate of dead rows, and how long ago the oldest dead row expired. NULL
/// when the table cannot be read right now (a lock, a changed column): stats never fail.
fn backlog(t: &Target) -> (Option<i64>, Option<Interval>) {
    let oldest_query = format!(
        "SELECT (SELECT now() - {} FROM {} WHERE {} ORDER BY {} LIMIT 1)",
        t.expiry_expression(),
        t.qualified(),
        t.dead_condition(),
        crate::sql::quote_ident(&t.column)
    );
    let settings = [
        ("search_path", t.search_path()),
        ("lock_timeout", "100ms".to_string()),
    ];
    in_subtransaction(|| {
        with_settings(&settings, || {
            as_role(t.owner, || {
                let estimate = t.dead_rows_estimate();
                let oldest = Spi::get_one::<Interval>(&oldest_query).expect("oldest dead row");
                (estimate, oldest)
            })
        })
    })
    .unwrap_or((None, None))
}

/// This database's worker slot, if it has a worker.
fn worker_slot() -> Option<Slot> {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    SHARED.share().slot_of(database).copied()
}

/// A Unix time as a timestamptz.
fn timestamp(unix_seconds: f64) -> TimestampWithTimeZone {
    const POSTGRES_EPOCH: f64 = 946_684_800.0;
    if !unix_seconds.is_finite() {
        return TimestampWithTimeZone::positive_infinity();
    }
    let micros = ((unix_seconds - POSTGRES_EPOCH) * 1e6) as i64;
    TimestampWithTimeZone::try_from(micros)
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
}
