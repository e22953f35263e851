//! settings.rs — every `reaper.*` setting: a documented static, its registration, a typed getter.
//!
//! Settings that shape how hard the reaper presses on the app are SIGHUP: a DBA changes them
//! with `ALTER SYSTEM` and `pg_reload_conf()`, and a session cannot loosen them for itself.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Rows deleted per transaction. 10,000 rows of a 256-byte sessions table delete in 16-21 ms
/// (MEASUREMENTS.md, ctid batches with the expiry re-checked): short enough that no
/// transaction holds locks or an old snapshot for long, large enough that the per-batch cost
/// (one index descent, one commit) stays small against the rows.
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// How long one batch waits for a row or table lock before giving up on that batch. The app
/// never waits on the reaper longer than this; the rows are retried on the next run.
static LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// Registers the settings; called from `_PG_init`.
pub fn init() {
    GucRegistry::define_int_guc(
        c"reaper.batch_size",
        c"Rows deleted per transaction by session_reaper.",
        c"Each batch is its own short transaction (one per reaper_purge call). Larger batches \
          clear a backlog with less overhead but hold row locks longer. A target's own \
          batch_size, set with reaper_register, overrides this.",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"reaper.lock_timeout",
        c"Longest a reaper batch waits for a lock.",
        c"A batch that waits longer gives up and is retried on the next run, so the \
          application never queues behind the reaper for more than this.",
        &LOCK_TIMEOUT,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

/// Rows per batch for targets without their own batch_size.
pub fn batch_size() -> i64 {
    i64::from(BATCH_SIZE.get())
}

/// `reaper.lock_timeout` as a value for the `lock_timeout` setting.
pub fn lock_timeout() -> String {
    format!("{}ms", LOCK_TIMEOUT.get())
}
