//! history.rs — what each run did: one row in `reaper_history`, the target's counters in
//! `reaper_state`, and one LOG line when rows were removed.
//!
//! Both tables belong to the extension's owner; runs are recorded as that role, whoever
//! triggered them. `reaper_stats()` only reads `reaper_state`, so scraping it writes nothing
//! and costs one row per target however long the history is.

use crate::security::as_role;
use crate::sql::{ext_owner, ext_schema};
use crate::target::Registered;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    /// A lock or statement timeout: the rows are retried on the next run.
    Timeout,
    /// Another reap of the same table held its lock.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
        }
    }
}

/// One finished run of one target.
pub struct Run<'a> {
    pub target: &'a Registered,
    pub trigger: &'static str,
    pub started_at: TimestampWithTimeZone,
    pub rows: i64,
    pub batches: i32,
    pub status: Status,
    pub error: Option<String>,
}

/// The current time, for a run's start.
pub fn clock() -> TimestampWithTimeZone {
    Spi::get_one::<TimestampWithTimeZone>("SELECT clock_timestamp()")
        .expect("reading the clock")
        .expect("clock_timestamp() is not null")
}

/// Writes the run into the history and the target's counters; returns the run id and how long
/// the run took in milliseconds.
pub fn record(run: &Run) -> (String, f64) {
    let schema = ext_schema();
    let query = format!(
        "WITH h AS (
           INSERT INTO {schema}.reaper_run
                  (run_id, target_id, relid, trigger, started_at, finished_at, rows, batches, status, error)
           VALUES (gen_random_uuid(), $1, $2, $3, $4, clock_timestamp(), $5, $6, $7, $8)
           RETURNING run_id, finished_at - started_at AS took),
         s AS (
           INSERT INTO {schema}.reaper_state AS s
                  (target_id, last_run_at, last_status, last_error, last_deleted, last_duration,
                   total_deleted, total_runs, total_errors)
           SELECT $1, $4, $7, $8, $5, took, $5, 1, ($7 IN ('error', 'timeout'))::int FROM h
           ON CONFLICT (target_id) DO UPDATE SET
                  last_run_at = EXCLUDED.last_run_at, last_status = EXCLUDED.last_status,
                  last_error = EXCLUDED.last_error, last_deleted = EXCLUDED.last_deleted,
                  last_duration = EXCLUDED.last_duration,
                  total_deleted = s.total_deleted + EXCLUDED.total_deleted,
                  total_runs = s.total_runs + 1,
                  total_errors = s.total_errors + EXCLUDED.total_errors)
         SELECT run_id::text, extract(epoch FROM took)::float8 * 1000 FROM h"
    );
    let (run_id, took_ms) = as_role(ext_owner(), || {
        Spi::get_two_with_args::<String, f64>(
            &query,
            &[
                run.target.id.into(),
                run.target.relid.into(),
                run.trigger.into(),
                run.started_at.into(),
                run.rows.into(),
                run.batches.into(),
                run.status.as_str().into(),
                run.error.clone().into(),
            ],
        )
    })
    .expect("writing reaper_run");
    let run_id = run_id.expect("run id");
    let took_ms = took_ms.unwrap_or(0.0);
    if run.rows > 0 {
        log!(
            "session_reaper: {}: deleted {} rows in {} batches in {:.0} ms (run {})",
            run.target.name,
            run.rows,
            run.batches,
            took_ms,
            &run_id[..8]
        );
    }
    (run_id, took_ms)
}
