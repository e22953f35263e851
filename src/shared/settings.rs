//! settings.rs — every `reaper.*` setting: a documented static, its registration, a typed getter.
//!
//! Everything that shapes how hard the reaper presses on the application is SIGHUP: a DBA
//! changes it with `ALTER SYSTEM` and `pg_reload_conf()`, and a session cannot loosen it for
//! itself. Only `reaper.database_names` needs a restart, as it decides which workers exist.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;
use std::time::Duration;

/// Master switch: off leaves every worker idle (manual purges still work).
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How often each target is checked when it has no schedule of its own.
static INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);

/// Rows deleted per transaction: small enough that no transaction holds locks or an old
/// snapshot for long, large enough that the per-batch cost (one index descent, one commit)
/// stays small against the rows (the measurements: docs/design.md, "The settings' defaults").
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Pause between two batches of the worker: the application's share of the machine while a
/// backlog is cleared (chosen from the measurements in docs/design.md and bench/README.md).
static BATCH_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(75);

/// Longest one target may run per wake; the rest waits for its next scheduled run.
static MAX_RUNTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(5 * 60 * 1000);

/// How long one batch waits for a lock before giving up on that batch.
static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// Longest one batch statement may run in the worker.
static STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// How long run history is kept.
static HISTORY_RETENTION_MIN: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 60);

/// Global ceiling on rows deleted per second by one worker, across its targets (0: none).
static MAX_ROWS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Pause reaping while a streaming replica's replay lag exceeds this (0: off).
static MAX_REPLICA_LAG_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// ANALYZE a table after one run removed at least this share of its rows (0: never).
static ANALYZE_AFTER: GucSetting<f64> = GucSetting::<f64>::new(0.1);

/// Which runs go into the history table.
static LOG_HISTORY: GucSetting<LogHistory> = GucSetting::<LogHistory>::new(LogHistory::All);

/// Which databases get a worker ('' = every database with the extension).
static DATABASE_NAMES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// The per-run LOG line.
static LOG_RUNS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Registers the settings; called from `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"reaper.enabled",
        c"Whether session_reaper's workers reap at all.",
        c"Off leaves every worker idle; reaper_purge still works.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    define_int(
        c"reaper.interval",
        c"How often each target without its own schedule is reaped.",
        c"Units as for any time setting: '30s', '15min', '1h'.",
        &INTERVAL_S,
        (1, 7 * 24 * 3600),
        GucFlags::UNIT_S,
    );
    define_int(
        c"reaper.batch_size",
        c"Rows deleted per transaction by session_reaper.",
        c"Each batch is its own short transaction in the worker. Larger batches clear a backlog \
          with less overhead but hold row locks longer. A target's own batch_size, set with \
          reaper_register, overrides this.",
        &BATCH_SIZE,
        (1, 1_000_000),
        GucFlags::default(),
    );
    define_int(
        c"reaper.batch_delay",
        c"Pause between two batches of the worker.",
        c"Gives the application's queries room between batches, and the worker time to prune \
          the pages a batch deleted from (counted as part of the pause). A batch that waited for \
          a CPU (other processes had them all) more than 3/4 of its CPU time stretches the \
          pause after it: 2 times when it waited as long as it ran, up to 4 times (Linux). 0 \
          reaps as fast as possible and leaves the pruning to the pages' next reader.",
        &BATCH_DELAY_MS,
        (0, 60_000),
        GucFlags::UNIT_MS,
    );
    define_int(
        c"reaper.max_runtime",
        c"Longest one target may be reaped per wake.",
        c"What is left waits for the target's next scheduled run.",
        &MAX_RUNTIME_MS,
        (100, i32::MAX),
        GucFlags::UNIT_MS,
    );
    define_int(
        c"reaper.lock_timeout",
        c"Longest a reaper batch waits for a lock.",
        c"A batch that waits longer gives up and is retried on the next run, so the \
          application never queues behind the reaper for more than this.",
        &LOCK_TIMEOUT_MS,
        (1, i32::MAX),
        GucFlags::UNIT_MS,
    );
    define_int(
        c"reaper.statement_timeout",
        c"Longest one reaper batch may run in the worker.",
        c"A batch that runs longer is cancelled and recorded as a timeout.",
        &STATEMENT_TIMEOUT_MS,
        (1, i32::MAX),
        GucFlags::UNIT_MS,
    );
    define_int(
        c"reaper.history_retention",
        c"How long session_reaper keeps its run history.",
        c"The worker deletes older history rows itself.",
        &HISTORY_RETENTION_MIN,
        (1, i32::MAX),
        GucFlags::UNIT_MIN,
    );
    define_int(
        c"reaper.max_rows_per_second",
        c"Ceiling on rows deleted per second by one worker, across its targets.",
        c"0 means no ceiling beyond reaper.batch_delay.",
        &MAX_ROWS_PER_SECOND,
        (0, i32::MAX),
        GucFlags::default(),
    );
    define_int(
        c"reaper.max_replica_lag",
        c"Pause reaping while a streaming replica's replay lag exceeds this.",
        c"0 turns the check off. Like pt-archiver's --max-lag: deletes are WAL the replicas must \
          replay.",
        &MAX_REPLICA_LAG_MS,
        (0, i32::MAX),
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_float_guc(
        c"reaper.analyze_after",
        c"ANALYZE a table after one run removed at least this share of its rows.",
        c"Keeps the planner's estimates right after a large reap; 0 never analyzes.",
        &ANALYZE_AFTER,
        0.0,
        1.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"reaper.log_history",
        c"Which runs go into the history table: all, errors or off.",
        c"Counters in reaper_stats() are kept either way.",
        &LOG_HISTORY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"reaper.database_names",
        c"Databases that get a reaper worker, comma-separated; empty means every one with the extension.",
        c"Read at server start.",
        &DATABASE_NAMES,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"reaper.log_runs",
        c"Log one line per run that deleted rows.",
        c"The line names the table, rows, batches, time and run id.",
        &LOG_RUNS,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

fn define_int(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static GucSetting<i32>,
    (min, max): (i32, i32),
    flags: GucFlags,
) {
    GucRegistry::define_int_guc(
        name,
        short,
        long,
        setting,
        min,
        max,
        GucContext::Sighup,
        flags,
    );
}

fn millis(setting: &GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(0) as u64)
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn interval() -> Duration {
    Duration::from_secs(INTERVAL_S.get().max(1) as u64)
}

/// Rows per batch for targets without their own batch_size.
pub fn batch_size() -> i64 {
    i64::from(BATCH_SIZE.get())
}

pub fn batch_delay() -> Duration {
    millis(&BATCH_DELAY_MS)
}

pub fn max_runtime() -> Duration {
    millis(&MAX_RUNTIME_MS)
}

/// `reaper.lock_timeout` as a value for the `lock_timeout` setting.
pub fn lock_timeout() -> String {
    format!("{}ms", LOCK_TIMEOUT_MS.get())
}

pub fn statement_timeout() -> Duration {
    millis(&STATEMENT_TIMEOUT_MS)
}

/// `reaper.history_retention` as an interval literal.
pub fn history_retention() -> String {
    format!("{} minutes", HISTORY_RETENTION_MIN.get())
}

pub fn max_rows_per_second() -> Option<f64> {
    Some(f64::from(MAX_ROWS_PER_SECOND.get())).filter(|r| *r > 0.0)
}

pub fn max_replica_lag() -> Option<Duration> {
    Some(millis(&MAX_REPLICA_LAG_MS)).filter(|d| !d.is_zero())
}

pub fn analyze_after() -> Option<f64> {
    Some(ANALYZE_AFTER.get()).filter(|share| *share > 0.0)
}

/// Which runs are written to the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub enum LogHistory {
    #[name = c"all"]
    All,
    #[name = c"errors"]
    Errors,
    #[name = c"off"]
    Off,
}

pub fn log_history() -> LogHistory {
    LOG_HISTORY.get()
}

/// The databases named in `reaper.database_names`; empty means all.
pub fn database_names() -> Vec<String> {
    DATABASE_NAMES
        .get()
        .map(|s| {
            s.to_string_lossy()
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

pub fn log_runs() -> bool {
    LOG_RUNS.get()
}

/// How long past `reaper.statement_timeout` a step of the worker may go on before the launcher
/// stops the worker: the cancel came, and code of the table's owner caught it.
pub const RUNAWAY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
