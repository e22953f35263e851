//! clock.rs — the clocks the processes keep time by: the wall clock (Unix seconds) for what is
//! recorded and shown, and the monotonic clock, shared by every process of the host and never
//! stepped, for deadlines one process sets and another enforces; and the scheduler's account of
//! this process, to tell a batch's work from its waiting for a CPU.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// What this process has had of the CPUs so far: the time it ran on one, and the time it was
/// ready to run but waited for one (the kernel's /proc/self/schedstat; a backend is one
/// thread). None where the kernel does not keep that account (no such file, or one of zeros).
pub fn cpu_run_and_wait() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let mut nanos = stat.split_whitespace().map(|n| n.parse::<u64>().ok());
    let ran = Duration::from_nanos(nanos.next()??);
    let waited = Duration::from_nanos(nanos.next()??);
    (!ran.is_zero()).then_some((ran, waited))
}
