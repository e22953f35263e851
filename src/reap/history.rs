//! history.rs — what each run did: one row in `reaper_run` (read through the `reaper_history`
//! view), the target's counters in `reaper_state`, and one LOG line when rows were removed.
//!
//! Both tables belong to the extension's owner; runs are recorded as that role, whoever
//! triggered them. `reaper_stats()` only reads `reaper_state`, so scraping it writes nothing
//! and costs one row per target however long the history is. `reaper.log_history` decides
//! which runs get a history row; the counters are kept either way.

use crate::reap::batch::Progress;
use crate::reap::target::Registered;
use crate::shared::security::as_role;
use crate::shared::settings::{self, LogHistory};
use crate::shared::sql::{ext_owner, ext_schema};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    /// A lock or statement timeout: the rows are retried on the next run.
    Timeout,
    /// Another reap of the same table held its lock.
    Skipped,
    // A worker's run cut short by a shutdown or a crash is recorded as 'interrupted' by the
    // next worker, in SQL ([`record_interrupted`]).
}

impl Status {
    /// The status a run that failed with this SQLSTATE is recorded with: a lock or statement
    /// timeout is retried on the next run, anything else is an error.
    pub fn of_failure(code: PgSqlErrorCode) -> Status {
        match code {
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE | PgSqlErrorCode::ERRCODE_QUERY_CANCELED => {
                Status::Timeout
            }
            _ => Status::Error,
        }
    }

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
    /// When the run started, in Unix seconds.
    pub started_at: f64,
    pub progress: Progress,
    pub status: Status,
    pub error: Option<String>,
    /// The run went until no dead row was left (not stopped by max_runtime, max_rows or an
    /// error): what it left behind is known without looking.
    pub complete: bool,
}

/// The condition that target `$1` is still registered, locking its row (KEY SHARE) so that an
/// unregister waits for the caller's transaction. A row another transaction holds locked is
/// being unregistered (by `reaper_unregister` or a DROP's event trigger; registry changes lock
/// it only FOR NO KEY UPDATE): it counts as gone rather than be waited for, since that
/// transaction may next want the table the caller holds (`reaper_unregister` then `DROP TABLE`,
/// or a DROP that already holds the table), and each would wait for the other.
fn still_there(schema: &str) -> String {
    format!("EXISTS (SELECT FROM {schema}.reaper_target WHERE id = $1 FOR KEY SHARE SKIP LOCKED)")
}

/// Writes the run into the counters (and the history, as `reaper.log_history` says); returns
/// how long the run took in milliseconds.
pub fn record(run: &Run) -> f64 {
    let keep_history = match settings::log_history() {
        LogHistory::All => true,
        LogHistory::Errors => run.status != Status::Ok,
        LogHistory::Off => false,
    };
    let schema = ext_schema();
    // What the run left behind. A complete run left only rows that expired while it ran;
    // looking would cost an index walk over every entry it just deleted, so only a run that
    // stopped early is measured, as the table's owner.
    let backlog = match (&run.target.target, run.complete) {
        (Ok(_), true) => crate::reap::backlog::Backlog {
            rows: Some(0),
            oldest_expiry: None,
        },
        (Ok(t), false) => crate::reap::backlog::measure(t),
        (Err(_), _) => crate::reap::backlog::Backlog::default(),
    };
    let query = format!(
        "WITH r AS (SELECT gen_random_uuid() AS run_id, to_timestamp($4) AS started_at,
                           clock_timestamp() AS finished_at),
         h AS (
           INSERT INTO {schema}.reaper_run
                  (run_id, target_id, relid, trigger, started_at, finished_at, rows, batches,
                   longest_batch, status, error, partitions_dropped)
           SELECT run_id, $1, $2, $3, started_at, finished_at, $5, $6,
                  make_interval(secs => $10), $7, $8, $11 FROM r WHERE $9),
         s AS (
           INSERT INTO {schema}.reaper_state AS s
                  (target_id, last_run_at, last_success_at, last_status, last_error, last_deleted,
                   last_duration, total_deleted, total_runs, total_errors, backlog_rows,
                   oldest_dead_expiry, backlog_at)
           SELECT $1, started_at, CASE WHEN $7 = 'ok' THEN started_at END, $7, $8, $5,
                  finished_at - started_at, $5, 1, ($7 IN ('error', 'timeout'))::int, $12, $13,
                  finished_at FROM r
            -- An unregistered target keeps its history row, but has no counters left to add
            -- to; nor has one being unregistered (see still_there).
            WHERE {still_there}
           ON CONFLICT (target_id) DO UPDATE SET
                  -- The worker's run is over: its in-flight progress goes. A wake asked for
                  -- before this run started is served by it.
                  run_started_at = CASE WHEN $3 = 'worker' THEN NULL ELSE s.run_started_at END,
                  run_noted_at = CASE WHEN $3 = 'worker' THEN NULL ELSE s.run_noted_at END,
                  run_rows = CASE WHEN $3 = 'worker' THEN NULL ELSE s.run_rows END,
                  run_batches = CASE WHEN $3 = 'worker' THEN NULL ELSE s.run_batches END,
                  run_partitions = CASE WHEN $3 = 'worker' THEN NULL ELSE s.run_partitions END,
                  wake_requested_at = CASE WHEN s.wake_requested_at <= EXCLUDED.last_run_at
                                           THEN NULL ELSE s.wake_requested_at END,
                  last_run_at = EXCLUDED.last_run_at,
                  last_success_at = coalesce(EXCLUDED.last_success_at, s.last_success_at),
                  last_status = EXCLUDED.last_status,
                  last_error = EXCLUDED.last_error, last_deleted = EXCLUDED.last_deleted,
                  last_duration = EXCLUDED.last_duration,
                  total_deleted = s.total_deleted + EXCLUDED.total_deleted,
                  total_runs = s.total_runs + 1,
                  total_errors = s.total_errors + EXCLUDED.total_errors,
                  backlog_rows = EXCLUDED.backlog_rows, oldest_dead_expiry = EXCLUDED.oldest_dead_expiry,
                  backlog_at = EXCLUDED.backlog_at)
         SELECT run_id::text, extract(epoch FROM finished_at - started_at)::float8 * 1000 FROM r",
        still_there = still_there(&schema),
    );
    let (run_id, took_ms) = as_role(ext_owner(), || {
        Spi::get_two_with_args::<String, f64>(
            &query,
            &[
                run.target.id.into(),
                run.target.relid.into(),
                run.trigger.into(),
                run.started_at.into(),
                run.progress.rows.into(),
                run.progress.batches.into(),
                run.status.as_str().into(),
                run.error.clone().into(),
                keep_history.into(),
                run.progress.longest_batch.as_secs_f64().into(),
                run.progress.partitions.into(),
                backlog.rows.into(),
                backlog.oldest_expiry.into(),
            ],
        )
    })
    .expect("writing reaper_run");
    let took_ms = took_ms.unwrap_or(0.0);
    let progress = &run.progress;
    if (progress.rows > 0 || progress.partitions > 0) && settings::log_runs() {
        let verb = run
            .target
            .target
            .as_ref()
            .map_or("deleted", |t| t.action.verb());
        let partitions = match progress.partitions {
            0 => String::new(),
            n => format!(", dropped {n} partitions"),
        };
        // The database is named in the line itself: Debian's default log_line_prefix does not.
        let batches = match progress.batches {
            1 => "1 batch".to_string(),
            n => format!("{n} batches"),
        };
        log!(
            "session_reaper: {}: {}: {verb} {} rows{partitions} in {batches} in {:.0} ms (run {})",
            database_name(),
            run.target.name,
            progress.rows,
            took_ms,
            run_id.as_deref().map_or("", |id| &id[..8])
        );
    }
    took_ms
}

/// The name of the current database.
fn database_name() -> String {
    Spi::get_one::<String>("SELECT pg_catalog.current_database()::text")
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Notes, in the transaction of a worker's batch, what its run has done so far: if the worker
/// is stopped before the run is recorded, the next worker records it as `interrupted` with
/// exactly the rows that committed ([`record_interrupted`]).
pub fn note_progress(target_id: i64, started_at: f64, progress: &Progress) {
    let schema = ext_schema();
    let query = format!(
        "INSERT INTO {schema}.reaper_state AS s
                (target_id, run_started_at, run_noted_at, run_rows, run_batches, run_partitions)
         SELECT $1, to_timestamp($2), clock_timestamp(), $3, $4, $5
          -- Unregistered meanwhile, or being unregistered (its row locked: see
          -- still_there): nothing to note. Locked here, an unregister waits for this batch.
          WHERE {still_there}
         ON CONFLICT (target_id) DO UPDATE SET
                run_started_at = EXCLUDED.run_started_at, run_noted_at = EXCLUDED.run_noted_at,
                run_rows = EXCLUDED.run_rows,
                run_batches = EXCLUDED.run_batches, run_partitions = EXCLUDED.run_partitions",
        still_there = still_there(&schema),
    );
    as_role(ext_owner(), || {
        Spi::run_with_args(
            &query,
            &[
                target_id.into(),
                started_at.into(),
                progress.rows.into(),
                progress.batches.into(),
                progress.partitions.into(),
            ],
        )
    })
    .expect("noting the run's progress");
}

/// Records the runs a stopped or crashed worker left unrecorded, as `interrupted`, with the
/// rows of their committed batches; called when a worker starts, before it runs anything.
pub fn record_interrupted() -> i64 {
    let query = format!(
        "WITH cut AS (
           UPDATE {schema}.reaper_state s SET
                  last_run_at = o.run_started_at, last_status = 'interrupted',
                  last_error = 'the worker stopped before the run ended (shutdown or crash)',
                  last_deleted = o.run_rows, last_duration = o.run_noted_at - o.run_started_at,
                  total_deleted = s.total_deleted + o.run_rows, total_runs = s.total_runs + 1,
                  backlog_rows = NULL, oldest_dead_expiry = NULL, backlog_at = NULL,
                  run_started_at = NULL, run_noted_at = NULL, run_rows = NULL, run_batches = NULL,
                  run_partitions = NULL
             FROM {schema}.reaper_state o
            WHERE o.target_id = s.target_id AND o.run_started_at IS NOT NULL
           RETURNING s.target_id, o.run_started_at, o.run_noted_at, o.run_rows, o.run_batches, o.run_partitions,
                     s.last_error, (SELECT t.relid FROM {schema}.reaper_target t WHERE t.id = s.target_id) AS relid)
         INSERT INTO {schema}.reaper_run
                (run_id, target_id, relid, trigger, started_at, finished_at, rows, batches,
                 longest_batch, status, error, partitions_dropped)
         SELECT gen_random_uuid(), target_id, relid, 'worker', run_started_at, run_noted_at, run_rows,
                run_batches, '0', 'interrupted', last_error, run_partitions
           FROM cut WHERE relid IS NOT NULL AND $1",
        schema = ext_schema()
    );
    let keep_history = settings::log_history() != LogHistory::Off;
    as_role(ext_owner(), || {
        Spi::connect_mut(|client| {
            client
                .update(query.as_str(), None, &[keep_history.into()])
                .map(|t| t.len() as i64)
        })
    })
    .expect("recording interrupted runs")
}

/// Asks for a run of these targets now: the worker serves the request with the next run of
/// each, which clears it (see [`record`]).
pub fn request_wake(target_ids: &[i64]) {
    let query = format!(
        "INSERT INTO {}.reaper_state AS s (target_id, wake_requested_at)
         SELECT id, now() FROM unnest($1::bigint[]) id
         ON CONFLICT (target_id) DO UPDATE SET wake_requested_at = now()",
        ext_schema()
    );
    as_role(ext_owner(), || {
        Spi::run_with_args(&query, &[target_ids.to_vec().into()])
    })
    .expect("writing reaper_state");
}

/// Deletes up to 10,000 history rows older than `reaper.history_retention`; returns how many.
pub fn prune() -> i64 {
    let query = format!(
        "DELETE FROM {schema}.reaper_run WHERE run_id IN (
           SELECT run_id FROM {schema}.reaper_run
            WHERE started_at < now() - $1::interval LIMIT 10000)",
        schema = ext_schema()
    );
    let retention = settings::history_retention();
    as_role(ext_owner(), || {
        Spi::connect_mut(|client| {
            client
                .update(query.as_str(), None, &[retention.as_str().into()])
                .map(|t| t.len() as i64)
        })
    })
    .expect("pruning reaper_run")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::run;
    use pgrx::prelude::*;

    #[pg_test]
    fn last_success_at_is_kept_when_a_later_run_fails() {
        run("CREATE TABLE tokens (id int, expires_at timestamptz)");
        run("SELECT reaper_register('tokens')");
        run("SELECT * FROM reaper_purge('tokens')");
        let stats = "SELECT last_status || ':' || (last_success_at = last_run_at) || ':' || last_success_at FROM reaper_stats()";
        let first = Spi::get_one::<String>(stats).unwrap().unwrap();
        assert!(first.starts_with("ok:true:"), "{first}");
        run("ALTER TABLE tokens RENAME COLUMN expires_at TO valid_to");
        run("SELECT * FROM reaper_purge('tokens')");
        let second = Spi::get_one::<String>(stats).unwrap().unwrap();
        assert_eq!(
            second,
            first.replacen("ok:true:", "error:false:", 1),
            "an error moves last_run_at, not last_success_at"
        );
    }
}
