//! process.rs — what the launcher and the database workers do alike as background processes:
//! Postgres' own signal handlers, sleeping on the latch, reloading settings.

use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set each time the settings are re-read; see [`take_reloaded`].
static RELOADED: AtomicBool = AtomicBool::new(false);

mod raw {
    // The C handlers themselves: pgrx's pg_sys wrappers are Rust functions, and a signal
    // handler must be the plain C symbol.
    extern "C-unwind" {
        pub fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
        pub fn die(signal: std::ffi::c_int);
    }
}

/// SIGHUP marks the settings for reloading; SIGTERM is `die`: the statement in flight is
/// cancelled, its transaction rolled back, and the process exits at the next interrupt check.
pub fn handle_signals() {
    // SAFETY: installing Postgres' standard handlers before unblocking signals.
    unsafe {
        install_handler(libc::SIGHUP, raw::SignalHandlerForConfigReload);
        install_handler(libc::SIGTERM, raw::die);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Postgres' own `pqsignal` for a backend: named `pqsignal_be` from 18 on (pgrx's
/// bgworkers.rs makes the same split).
#[cfg(not(feature = "pg18"))]
unsafe fn install_handler(
    signal: std::ffi::c_int,
    handler: unsafe extern "C-unwind" fn(std::ffi::c_int),
) {
    pg_sys::pqsignal(signal, Some(handler));
}

#[cfg(feature = "pg18")]
unsafe fn install_handler(
    signal: std::ffi::c_int,
    handler: unsafe extern "C-unwind" fn(std::ffi::c_int),
) {
    pg_sys::pqsignal_be(signal, Some(handler));
}

/// Sleeps until `timeout` passes or the latch is set, then handles interrupts (a SIGTERM ends
/// the process here, a stray cancel is dropped: see [`check_for_interrupts`]) and reloads
/// settings after a SIGHUP.
pub fn sleep(timeout: Duration) {
    wait_latch(timeout);
    crate::shared::txn::check_for_interrupts();
    reload_settings_if_asked();
}

/// Sleeps the whole of `d`, even when the latch is set meanwhile (a wake-up request must not
/// shorten a throttle pause): each wake-up handles interrupts and reloads as [`sleep`] does,
/// then the rest of the pause is slept. The request that set the latch stays in its slot for
/// the next look. The worker's throttle (`reaper.batch_delay`, `reaper.max_rows_per_second`)
/// and its wait for a lagging replica pause this way.
pub fn pause(d: Duration) {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        sleep(left);
    }
}

/// Waits on this process's latch for at most `timeout` (or until the postmaster dies, which
/// ends the process), and resets it.
fn wait_latch(timeout: Duration) {
    // Rounded up: a pause's last fraction of a millisecond is slept, not spun through.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as std::ffi::c_long;
    // SAFETY: waiting on this process's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Sleeps as [`sleep`] does, unless a request is already waiting: `asked()`, or a reload
/// (which is done here). The latch protocol: a request that came during the caller's last step
/// set the latch, but a wait inside that step (a lock wait) may have reset it; a request after
/// this check leaves the latch set, so nothing is slept through.
pub fn sleep_unless(timeout: Duration, asked: impl FnOnce() -> bool) {
    // SAFETY: ConfigReloadPending is set by the signal handler and read here only.
    let reload_pending = unsafe { pg_sys::ConfigReloadPending } != 0;
    reload_settings_if_asked();
    if !timeout.is_zero() && !reload_pending && !asked() {
        sleep(timeout);
    }
}

/// Re-reads postgresql.conf when a SIGHUP asked for it (`pg_reload_conf()`).
pub fn reload_settings_if_asked() {
    // SAFETY: ConfigReloadPending is set by the signal handler and read here only.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            RELOADED.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether the settings were re-read since the last call: what depends on a setting only
/// now and then (pruning the history) is redone at once rather than on its next turn.
pub fn take_reloaded() -> bool {
    RELOADED.swap(false, Ordering::Relaxed)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use std::time::{Duration, Instant};

    /// Issue 17 item 3: a set latch (a wake-up request) does not shorten a throttle pause,
    /// where `sleep` returns at once.
    #[pg_test]
    fn issue17_item3_pause_sleeps_its_whole_duration_though_the_latch_is_set() {
        let set_latch = || unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
        set_latch();
        let started = Instant::now();
        super::sleep(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "sleep ends on the latch"
        );
        set_latch();
        let started = Instant::now();
        super::pause(Duration::from_millis(300));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "pause ended after {:?}",
            started.elapsed()
        );
    }
}
