//! stats.rs — `reaper_stats()`: one row per target the caller can see, with what the reaper
//! has done and what it left behind (both from `reaper_state`), and when it runs next.
//!
//! One query, nothing planned per target: the backlog is measured at the end of each run
//! (backlog.rs), so scraping every few seconds stays cheap with thousands of targets.

use crate::history::unix_now;
use crate::schedule::Schedule;
use crate::security::as_role;
use crate::shmem::{Slot, WorkerState, SHARED};
use crate::sql::{ext_owner, ext_schema, pinned};
use crate::target::SCHEDULE_SECONDS;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

/// reaper_stats reports every target the caller may read: counters, backlog, next run.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn reaper_stats_v2() -> TableIterator<
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
        name!(backlog_at, Option<TimestampWithTimeZone>),
    ),
> {
    let rows = pinned(|| {
        let worker = worker_slot();
        let now = unix_now();
        let query = format!(
            "SELECT t.relid::oid, t.column_name::text, t.enabled, t.schedule, s.last_run_at,
                    s.last_status, s.last_error, s.last_deleted, coalesce(s.total_deleted, 0),
                    coalesce(s.total_runs, 0), coalesce(s.total_errors, 0), s.last_duration,
                    s.backlog_rows, now() - s.oldest_dead_expiry, s.backlog_at,
                    {SCHEDULE_SECONDS}, extract(epoch FROM s.last_run_at)::float8, s.last_success_at
               FROM {schema}.reaper_target t
               LEFT JOIN {schema}.reaper_state s ON s.target_id = t.id
              WHERE {schema}.reaper_can_see(t.relid, $1)
              ORDER BY t.id",
            schema = ext_schema(),
        );
        // The registry is read as the extension's owner, filtered by what the caller may see.
        let caller = unsafe { pg_sys::GetUserId() };
        as_role(ext_owner(), || {
            Spi::connect(|client| {
                let mut out = Vec::new();
                for row in client.select(query.as_str(), None, &[caller.into()])? {
                    let enabled = row.get(3)?.unwrap_or(false);
                    let schedule: Option<String> = row.get(4)?;
                    let next_run = enabled.then(|| {
                        let schedule =
                            Schedule::of(schedule.as_deref(), row.get(16).ok().flatten());
                        timestamp(schedule.next_run(row.get(17).ok().flatten(), now))
                    });
                    out.push((
                        row.get(1)?.expect("relid"),
                        row.get(2)?.expect("column_name"),
                        enabled,
                        schedule,
                        row.get(5)?,
                        row.get(18)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?.unwrap_or(0),
                        row.get(10)?.unwrap_or(0),
                        row.get(11)?.unwrap_or(0),
                        row.get(12)?,
                        row.get(13)?,
                        row.get(14)?,
                        next_run,
                        worker.map(|w| w.pid).filter(|pid| *pid != 0),
                        worker
                            .map_or(WorkerState::Free, |w| w.state)
                            .as_str()
                            .to_string(),
                        worker
                            .map(|w| pg_sys::Oid::from(w.current))
                            .filter(|oid| *oid != pg_sys::InvalidOid),
                        row.get(15)?,
                    ));
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        })
        .expect("reading reaper_state")
    });
    TableIterator::new(rows)
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
