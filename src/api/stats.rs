//! stats.rs — what `reaper_stats()` needs from outside the registry: this database's worker
//! (shared memory) and each target's next run (its schedule, which may be cron).
//!
//! `reaper_stats()` itself is SQL (api.sql): the view `reaper_target_stats` over the registry,
//! filtered by what the caller may see, with these two functions in it. Planned and run as one
//! query, it costs less than the core's `pg_stat_user_tables` over as many tables: rows are not
//! copied out through SPI and formed again (bench/README.md, "Idle and scale"). The backlog it
//! shows is measured at the end of each run (backlog.rs), so scraping stays cheap.

use crate::reap::schedule::Schedule;
use crate::shared::clock::unix_now;
use crate::shared::shmem::{Slot, WorkerState, SHARED};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// Postgres' epoch (2000-01-01) in Unix seconds.
const POSTGRES_EPOCH: f64 = 946_684_800.0;

/// This database's worker: its pid, what it is doing and the target it is on (one row).
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn reaper_worker() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(state, String),
        name!(current_target, Option<pg_sys::Oid>),
    ),
> {
    let worker = worker_slot();
    TableIterator::once((
        worker.map(|w| w.pid).filter(|pid| *pid != 0),
        worker
            .map_or(WorkerState::Free, |w| w.state)
            .as_str()
            .to_string(),
        worker
            .map(|w| pg_sys::Oid::from(w.current))
            .filter(|oid| *oid != pg_sys::InvalidOid),
    ))
}

/// When a target with this schedule (None: `reaper.interval`), registered at `registered_at`,
/// whose last run started at `last_run_at` runs next (see `Schedule::next_run`).
#[pg_extern(sql = false)]
fn reaper_next_run_v3(
    schedule: Option<&str>,
    last_run_at: Option<TimestampWithTimeZone>,
    registered_at: Option<TimestampWithTimeZone>,
) -> TimestampWithTimeZone {
    let now = unix_now();
    let unix =
        |at: TimestampWithTimeZone| pg_sys::TimestampTz::from(at) as f64 / 1e6 + POSTGRES_EPOCH;
    let next = Schedule::of(schedule).next_run(
        last_run_at.map(unix),
        registered_at.map_or(now, unix),
        now,
    );
    timestamp(next)
}

/// This database's worker slot, if it has a worker.
fn worker_slot() -> Option<Slot> {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    SHARED.share().slot_of(database).copied()
}

/// A Unix time as a timestamptz.
fn timestamp(unix_seconds: f64) -> TimestampWithTimeZone {
    if !unix_seconds.is_finite() {
        return TimestampWithTimeZone::positive_infinity();
    }
    let micros = ((unix_seconds - POSTGRES_EPOCH) * 1e6) as i64;
    TimestampWithTimeZone::try_from(micros)
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    /// reaper_stats() is what its view says, and Postgres plans the two as one query: no call
    /// of reaper_stats() or of reaper_can_see() per row is left in the plan (what keeps it
    /// cheap with thousands of targets; bench/idle_and_scale.sh measures it).
    #[pg_test]
    fn stats_are_one_inlined_query_equal_to_their_view() {
        sessions_table();
        run("CREATE TABLE tokens (expires_at timestamptz NOT NULL)");
        run("SELECT reaper_register('sessions')");
        run("SELECT reaper_register('tokens', schedule => '0 4 * * *', enabled => false)");
        run("SELECT * FROM reaper_purge('sessions')");
        assert_eq!(
            count(
                "SELECT count(*) FROM (SELECT * FROM reaper_stats()
                                       EXCEPT SELECT * FROM reaper_target_stats) d"
            ),
            0
        );
        assert_eq!(count("SELECT count(*) FROM reaper_target_stats"), 2);
        let plan = Spi::get_one::<pgrx::Json>(
            "EXPLAIN (FORMAT JSON, VERBOSE) SELECT * FROM reaper_stats()",
        )
        .unwrap()
        .unwrap()
        .0
        .to_string();
        for call in ["reaper_stats", "reaper_can_see"] {
            assert!(!plan.contains(call), "{call} in the plan: {plan}");
        }
        assert!(plan.contains("has_table_privilege"), "{plan}");
    }
}
