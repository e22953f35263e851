//! clock.rs — the clocks the processes keep time by: the wall clock (Unix seconds) for what is
//! recorded and shown, and the monotonic clock, shared by every process of the host and never
//! stepped, for deadlines one process sets and another enforces.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The monotonic clock (CLOCK_MONOTONIC), in seconds: the same in every process of the host.
pub fn monotonic_now() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
