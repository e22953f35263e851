//! clock.rs — the wall clock, in Unix seconds, as the processes and the history keep time.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
