//! pacing.rs — how the worker keeps its batches gentle and bounded: the pause after each batch
//! (`reaper.batch_delay`, stretched when the batch had to wait, and `reaper.max_rows_per_second`),
//! the wait for lagging replicas (`reaper.max_replica_lag`), and pruning the pages a batch
//! emptied during that pause.

use crate::reap::batch;
use crate::reap::target::Target;
use crate::shared::clock::cpu_run_and_wait;
use crate::shared::settings;
use crate::shared::shmem::{set_worker_state, WorkerState};
use crate::shared::sql::pinned;
use crate::shared::txn::{in_transaction, with_statement_timeout};
use crate::worker::process::pause;
use crate::worker::runs::{dropped_meanwhile, warn};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::time::{Duration, Instant};

/// Prunes the pages a committed batch covered, in a transaction of its own (see
/// batch::prune_pages). Only a saving for the application's queries, so a failure does not end
/// the run: a lock timeout (DDL waiting on the table) and a DROP TABLE that committed while the
/// prune waited for it are expected and logged at DEBUG1, anything else (a cancel, a statement
/// timeout) is a WARNING with its SQLSTATE.
/// A flat-out run (batch_delay = 0, no max_rows_per_second) skips it: it cost one about a
/// sixth of its rows/s.
pub(super) fn prune_behind(t: &Target, pages: (u32, u64)) {
    let started = Instant::now();
    let pruned = in_transaction(|| {
        pinned(|| {
            with_statement_timeout(settings::statement_timeout(), t.relid, || {
                batch::prune_pages(t, pages)
            })
        })
    });
    match pruned {
        Ok(()) => debug1!(
            "session_reaper: {}: pruned pages {}..{} in {:.1} ms",
            t.name,
            pages.0,
            pages.1,
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err((code, message))
            if code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE || dropped_meanwhile(t.relid) =>
        {
            debug1!("session_reaper: {}: pruning behind: {message}", t.name)
        }
        Err((code, message)) => warn(
            code,
            &format!(
                "session_reaper: {}: pruning pages {}..{} after a batch: {message}",
                t.name, pages.0, pages.1
            ),
        ),
    }
}

/// The most a batch's waiting for a CPU stretches the pause after it: 4 times
/// `reaper.batch_delay`.
const MAX_STRETCH: f64 = 4.0;
/// How long a batch may wait for a CPU, per unit of CPU time it ran, before its pause is
/// stretched. Some waiting is normal on a server with CPU to spare: the worker's batches waited
/// about half their run time on 2 cores kept half busy by the app, and about as long as they ran
/// on 2 saturated ones, counted as below (docs/design.md, "A pause that gives way to a
/// saturated server"). Stretching from the first waited millisecond cost a third of the rate on
/// the half-busy server and bought its app nothing measurable; from three quarters, the rate
/// stays.
const WAIT_BEFORE_STRETCH: f64 = 0.75;
/// A batch's CPU time is counted as at least this, so that a few milliseconds of waiting
/// after a small batch do not stretch its pause all the way.
const MIN_CPU: Duration = Duration::from_millis(10);

/// A batch's clock, started before its transaction and stopped after its commit.
pub(super) struct BatchClock {
    started: Instant,
    cpu_at_start: Option<(Duration, Duration)>,
}

/// What a batch took: from its start to its commit, and meanwhile the time it ran on a CPU and
/// the time it was ready to run but waited for one (None where the kernel does not say).
pub(super) struct BatchTime {
    pub(super) started: Instant,
    pub(super) ended: Instant,
    pub(super) cpu: Option<(Duration, Duration)>,
}

impl BatchClock {
    pub(super) fn start() -> Self {
        BatchClock {
            started: Instant::now(),
            cpu_at_start: cpu_run_and_wait(),
        }
    }

    pub(super) fn stop(&self) -> BatchTime {
        let since_start = |(ran0, waited0): (Duration, Duration)| {
            let (ran, waited) = cpu_run_and_wait()?;
            Some((ran.saturating_sub(ran0), waited.saturating_sub(waited0)))
        };
        BatchTime {
            started: self.started,
            ended: Instant::now(),
            cpu: self.cpu_at_start.and_then(since_start),
        }
    }
}

impl BatchTime {
    pub(super) fn wall(&self) -> Duration {
        self.ended - self.started
    }

    /// For the log: "12.9 ms on a CPU, 11.8 ms waiting for one".
    pub(super) fn cpu_account(&self) -> String {
        match self.cpu {
            Some((ran, waited)) => format!(
                "{:.1} ms on a CPU, {:.1} ms waiting for one",
                ran.as_secs_f64() * 1e3,
                waited.as_secs_f64() * 1e3
            ),
            None => "the kernel does not say how long it waited for a CPU".into(),
        }
    }

    /// How many times `reaper.batch_delay` the pause after this batch is, from `wait`, the time
    /// it waited for a CPU per unit of CPU time it ran: 1 up to WAIT_BEFORE_STRETCH, then
    /// growing in proportion, 2 when it waited as long as it ran, at most MAX_STRETCH. The
    /// waiting is behind other processes (the app's backends, or anything else; a container's
    /// CPU quota counts too). Disk reads and lock waits are not waiting for a CPU and do not
    /// count: a quiet server with a cold table gets the plain pause. Where the kernel does not
    /// keep the account (not Linux), 1.
    pub(super) fn stretch(&self) -> f64 {
        let Some((ran, waited)) = self.cpu else {
            return 1.0;
        };
        let wait = waited.as_secs_f64() / ran.max(MIN_CPU).as_secs_f64();
        let beyond = (wait - WAIT_BEFORE_STRETCH).max(0.0) / (1.0 - WAIT_BEFORE_STRETCH);
        (1.0 + beyond).min(MAX_STRETCH)
    }
}

/// Pauses after a batch until `reaper.batch_delay`, times the batch's stretch, has passed
/// since it ended (what the worker did meanwhile, such as pruning, counts as pause: a prune
/// longer than that lengthens the cycle), and longer when `reaper.max_rows_per_second` asks for
/// it. The stretch makes the worker give way to a saturated server: a batch that waited for a
/// CPU as long as it ran is followed by twice the pause, so the worker's share of the machine
/// falls as the app's load nears what the CPUs can do, and flat out (`batch_delay` 0) stays
/// flat out.
pub(super) fn throttle(deleted: i64, batch: &BatchTime) {
    let mut until = batch.ended + settings::batch_delay().mul_f64(batch.stretch());
    if let Some(rate) = settings::max_rows_per_second() {
        until = until.max(batch.started + Duration::from_secs_f64(deleted as f64 / rate));
    }
    // A wake-up (a registration, reaper_wake) does not shorten the pause.
    pause(until.saturating_duration_since(Instant::now()));
}

/// Waits while a streaming replica lags more than `reaper.max_replica_lag`, checking each
/// second, for at most the target's remaining runtime.
pub(super) fn wait_for_replicas(run_started: Instant) {
    while run_started.elapsed() < settings::max_runtime() {
        // Read on every check: a reload that lifts or raises the ceiling ends the wait at once.
        let Some(max_lag) = settings::max_replica_lag() else {
            return;
        };
        // GREATEST is SQL syntax, not a function: spelled pg_catalog.greatest(…) the query
        // failed on every batch, and a failed check (below) means no pause, so the setting did
        // nothing (reload.rs reloaded_max_replica_lag_pauses_the_worker_behind_a_late_standby).
        // Read-only, so its commit neither writes a commit record nor waits for a flush.
        let lag = in_transaction(|| {
            pinned(|| {
                Spi::connect(|client| {
                    client
                        .select(
                            "SELECT coalesce(max(extract(epoch FROM GREATEST(write_lag, flush_lag, replay_lag))), 0)::float8
                               FROM pg_catalog.pg_stat_replication",
                            Some(1),
                            &[],
                        )?
                        .first()
                        .get_one::<f64>()
                })
            })
        });
        let lag = match lag {
            Ok(Ok(Some(seconds))) => Duration::from_secs_f64(seconds.max(0.0)),
            _ => return,
        };
        if lag <= max_lag {
            return;
        }
        set_worker_state(WorkerState::PausedForReplica, pg_sys::InvalidOid);
        pause(Duration::from_secs(1));
    }
}
