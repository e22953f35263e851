//! database.rs — the reaper of one database: a background worker that sleeps on its latch until
//! a target is due, then reaps the due targets round-robin, a transaction per batch.
//!
//! Signals are Postgres' own: SIGHUP sets ConfigReloadPending (settings are re-read at the top
//! of the loop), SIGTERM is `die`, so a batch in flight is cancelled and rolled back and the
//! worker exits at the next interrupt check. `pg_cancel_backend` cancels the current batch only.
//! The launcher starts this worker (launcher.rs) and never lets the postmaster restart it: a
//! worker whose database lost the extension or was dropped simply stays gone.

use crate::reap::batch::{self, Batch, Locked};
use crate::reap::history;
use crate::reap::target::{self, Registered, Target};
use crate::shared::errors::ReaperError;
use crate::shared::security::set_for_transaction;
use crate::shared::settings;
use crate::shared::shmem::{
    claim_slot, leave_for_lack_of_extension, set_worker_state, WorkerState, SHARED,
};
use crate::shared::sql::{held_version, hold_extension, pinned, LIBRARY_VERSION};
use crate::shared::txn::{in_transaction, with_statement_timeout};
use crate::worker::pacing::{prune_behind, throttle, wait_for_replicas, BatchClock};
use crate::worker::process::{reload_settings_if_asked, sleep_unless};
use crate::worker::runs::{
    disable_stuck_target, finish, record_interrupted_runs, unregistered_by_drop, warn, Running,
    TurnEnd,
};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Batches one target may run before the next due target gets its turn.
const TURN_BATCHES: u32 = 10;
/// How often the worker deletes history older than `reaper.history_retention`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often a long round looks for targets that fell due meanwhile.
const LOOK_DURING_ROUND: Duration = Duration::from_secs(1);
/// Longest sleep without looking at the registry: only a safety net, since registry changes,
/// reloads, reaper_wake() and ALTER EXTENSION wake the worker at once. Long, so an idle worker
/// with a thousand targets costs next to nothing (bench/idle_and_scale.sh).
const MAX_SLEEP: Duration = Duration::from_secs(300);
/// How soon the registry is read again after reading it failed.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);

/// Entry point of a database worker; its argument is the database's OID.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn session_reaper_worker_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    // SAFETY: standard background worker start-up, before any other work.
    unsafe {
        crate::worker::process::handle_signals();
        pg_sys::BackgroundWorkerInitializeConnectionByOid(database, pg_sys::InvalidOid, 0);
        pg_sys::pgstat_report_appname(c"session_reaper worker".as_ptr());
    }
    if !claim_slot(database.to_u32()) {
        return; // another worker already serves this database
    }
    unsafe {
        pg_sys::before_shmem_exit(
            Some(crate::shared::shmem::release_slot),
            pg_sys::Datum::from(database.to_u32()),
        )
    };
    Worker {
        last_prune: None,
        warned_version: None,
    }
    .run();
}

/// Whether reaper_wake() or a registry change left a wake-up request for this worker; `take`
/// clears it (the worker acts on it), otherwise it stays for the next look.
fn wake_request(take: bool) -> bool {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut shared = SHARED.exclusive();
    let Some(slot) = shared.slot_of_mut(database) else {
        return false;
    };
    let asked = slot.wake;
    if take {
        slot.wake = false;
    }
    asked
}

/// What one look at the registry found.
enum Look {
    NoExtension,
    /// The extension's SQL objects are of this other version: wait for ALTER EXTENSION UPDATE.
    OtherVersion(String),
    Due(Vec<Registered>, Duration),
}

/// What one batch's transaction found and did.
enum Step {
    /// The batch ran (None: another reap holds the table's lock), under this rule, on this
    /// Citus shard.
    Ran(Option<Batch>, Box<Registered>, Option<(i64, Box<Target>)>),
    /// A Citus table has no shard left on this node after the one in progress.
    NoMoreShards,
    Stop,
    Broken(PgSqlErrorCode, String),
    ExtensionDropped,
}

struct Worker {
    last_prune: Option<Instant>,
    /// The other version of the SQL objects this worker last warned about.
    warned_version: Option<String>,
}

impl Worker {
    fn run(&mut self) -> ! {
        crate::shared::security::set_for_session("lock_timeout", &settings::lock_timeout());
        disable_stuck_target();
        record_interrupted_runs();
        loop {
            crate::shared::txn::check_for_interrupts();
            reload_settings_if_asked();
            // The worker's own reads and writes of the registry and the history wait for a row
            // or table lock no longer than its batches do: a client holding one (an open
            // reaper_purge, an uncommitted DROP) cannot hold the database's worker.
            crate::shared::security::set_for_session("lock_timeout", &settings::lock_timeout());
            wake_request(true);
            let generation = SHARED.share().generation;
            let look = in_transaction(|| pinned(look));
            let pause = match look {
                Ok(Look::NoExtension) => {
                    leave_for_lack_of_extension(generation);
                    Duration::ZERO
                }
                Ok(Look::OtherVersion(installed)) => {
                    self.warn_other_version(installed);
                    MAX_SLEEP
                }
                Ok(Look::Due(due, pause)) => {
                    let ran = !due.is_empty();
                    let recorded = self.reap_round_robin(due);
                    self.prune_history();
                    match (ran, recorded) {
                        // Look again at once: the runs just recorded set each target's next run.
                        (true, true) => Duration::ZERO,
                        // A run could not be recorded, so it would look due again: back off.
                        (true, false) => Duration::from_secs(10),
                        (false, _) => pause,
                    }
                }
                Err((code, message)) => {
                    warn(
                        code,
                        &format!("session_reaper: reading the registry: {message}"),
                    );
                    RETRY_AFTER_ERROR
                }
            };
            set_worker_state(WorkerState::Idle, pg_sys::InvalidOid);
            sleep_unless(pause, || wake_request(false));
        }
    }

    /// Says once per version that the SQL objects wait for ALTER EXTENSION UPDATE (which wakes
    /// the worker).
    fn warn_other_version(&mut self, installed: String) {
        if self.warned_version.as_ref() == Some(&installed) {
            return;
        }
        let e = ReaperError::OldVersion {
            installed: installed.clone(),
        };
        warn(
            e.sqlstate(),
            &format!(
                "session_reaper: not reaping: {}; {}",
                e.message(),
                e.hint().unwrap_or_default()
            ),
        );
        self.warned_version = Some(installed);
    }

    /// Gives each due target a turn of at most TURN_BATCHES batches, round-robin, until every
    /// one is done or out of its `reaper.max_runtime`: a large backlog never starves a small
    /// table.
    /// Returns false when a run could not be recorded.
    fn reap_round_robin(&mut self, due: Vec<Registered>) -> bool {
        let mut recorded = true;
        let mut queue: VecDeque<Running> = due.into_iter().map(Running::new).collect();
        let mut last_look = Instant::now();
        while let Some(mut running) = queue.pop_front() {
            let end = match &running.target.target {
                Err(e) => TurnEnd::Failed(e.sqlstate(), e.message()),
                Ok(_) => self.turn(&mut running),
            };
            match end {
                TurnEnd::MoreWork => queue.push_back(running),
                // Nothing is left to record into; the loop finds the extension gone and leaves.
                TurnEnd::ExtensionDropped => return recorded,
                end => recorded &= finish(running, end),
            }
            // Targets that fell due during a long round join it, rather than wait for its end.
            if last_look.elapsed() >= LOOK_DURING_ROUND {
                last_look = Instant::now();
                join_newly_due(&mut queue);
            }
        }
        recorded
    }

    /// Runs up to TURN_BATCHES batches of one target, pausing `reaper.batch_delay` (stretched
    /// when the batch waited for a CPU; longer for `reaper.max_rows_per_second`) after each.
    /// Each batch reads the target's rule afresh, so a change, a disable, an unregister or
    /// `reaper.enabled = off` takes effect at the next batch.
    fn turn(&mut self, running: &mut Running) -> TurnEnd {
        for _ in 0..TURN_BATCHES {
            let (started_at, started) = running.start();
            if started.elapsed() >= settings::max_runtime() {
                return TurnEnd::OutOfTime;
            }
            wait_for_replicas(started);
            reload_settings_if_asked();
            set_worker_state(WorkerState::Reaping, running.target.relid);
            let clock = BatchClock::start();
            let step = in_transaction(|| {
                // A batch's commit need not wait for its WAL to reach disk: a crash can only
                // undo the last batches, whose rows are still expired and go in the next run,
                // and their progress note with them. Waiting, the worker would stop for the
                // write (and fsync) of each batch's WAL; this way the WAL writer does it.
                set_for_transaction("synchronous_commit", "off");
                pinned(|| {
                    immediate_constraints();
                    batch_step(running, started_at)
                })
            });
            let (batch, now, shard) = match step {
                Ok(Step::Ran(Some(batch), now, shard)) => (batch, now, shard),
                Ok(Step::Ran(None, ..)) => return TurnEnd::Skipped,
                Ok(Step::NoMoreShards) => return TurnEnd::Done,
                Ok(Step::Stop) => return TurnEnd::Stopped,
                Ok(Step::Broken(code, message)) => return TurnEnd::Failed(code, message),
                Ok(Step::ExtensionDropped) => return TurnEnd::ExtensionDropped,
                // The app held a row of this batch longer than reaper.lock_timeout: the batch
                // gave up; try it again leaving locked rows for a later run, and keep doing so
                // for the rest of this run, so one held row cannot stall the whole table.
                Err((PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, _))
                    if running.locked == Locked::Wait =>
                {
                    running.locked = Locked::Skip;
                    continue;
                }
                Err((_, message)) if unregistered_by_drop(running.target.relid) => {
                    debug1!(
                        "session_reaper: {}: dropped during the run: {message}",
                        running.target.name
                    );
                    return TurnEnd::Stopped;
                }
                Err((code, message)) => return TurnEnd::Failed(code, message),
            };
            if now.updated_at != running.target.updated_at {
                running.cursor = None;
                running.shard = 0;
            }
            running.target = *now;
            let took = clock.stop();
            running.progress.add(&batch, took.wall());
            let t = match &shard {
                Some((_, on)) => on,
                None => running
                    .target
                    .target
                    .as_ref()
                    .expect("checked by batch_step"),
            };
            debug1!(
                "session_reaper: {}: batch of {} rows committed in {:.1} ms ({})",
                t.name,
                batch.deleted,
                took.wall().as_secs_f64() * 1e3,
                took.cpu_account()
            );
            if let Some(stuck) = running.progress.stuck(t) {
                return TurnEnd::Failed(stuck.sqlstate(), stuck.message());
            }
            // Pruning is gentleness for the app, done in the pause between batches: flat out
            // (batch_delay = 0 and no max_rows_per_second) the pages are left to their next
            // reader, as one big DELETE leaves them.
            let pausing =
                !settings::batch_delay().is_zero() || settings::max_rows_per_second().is_some();
            if let Some(pages) = batch.pages.filter(|_| batch.deleted > 0 && pausing) {
                prune_behind(t, pages);
            }
            running.cursor = batch.next;
            match (&running.cursor, shard) {
                (None, None) => return TurnEnd::Done,
                // This shard is done: the next batch starts on the next one.
                (None, Some((id, _))) => running.shard = id + 1,
                (Some(_), Some((id, _))) => running.shard = id,
                (Some(_), None) => {}
            }
            throttle(batch.deleted, &took);
        }
        TurnEnd::MoreWork
    }

    /// Deletes history older than `reaper.history_retention`, in batches, once an hour — and
    /// right after a reload, which may have shortened the retention.
    fn prune_history(&mut self) {
        let reloaded = crate::worker::process::take_reloaded();
        if !reloaded && self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        loop {
            let pruned =
                in_transaction(|| pinned(|| hold_extension().then(history::prune).unwrap_or(0)));
            match pruned {
                Ok(pruned) if pruned > 0 => continue,
                Ok(_) => return,
                Err((code, message)) => {
                    warn(code, &format!("session_reaper: pruning history: {message}"));
                    return;
                }
            }
        }
    }
}

/// One batch of `running`'s target, in the current transaction, under the target's rule as it
/// stands now (a changed rule starts its walk of the table afresh). The batch's progress is
/// noted in the same transaction, so a run cut short is recorded with exactly what committed.
fn batch_step(running: &Running, started_at: f64) -> Step {
    // A run goes on for many batches after its look at the registry: each batch checks that
    // the extension is still there, so a DROP EXTENSION stops the deletes at once; and holds
    // it, so one that comes during the batch waits for its commit rather than fail it.
    if !hold_extension() {
        return Step::ExtensionDropped;
    }
    let Some(now) = target::load(Some(running.target.relid))
        .into_iter()
        .find(|r| r.id == running.target.id)
    else {
        return Step::Stop;
    };
    if !now.enabled || !settings::enabled() {
        return Step::Stop;
    }
    let t = match &now.target {
        Ok(t) => t,
        Err(e) => return Step::Broken(e.sqlstate(), e.message()),
    };
    // A Citus table's batch runs on the shard in progress here, or the next one.
    let shard = match t.distributed {
        false => None,
        true => match crate::reap::citus::next_shard(t, running.shard) {
            Some(shard) => Some(shard),
            None => return Step::NoMoreShards,
        },
    };
    let (on, cursor) = match &shard {
        None => (t, running.cursor.as_ref()),
        // A shard passed over (moved away meanwhile) leaves its cursor behind.
        Some((id, on)) => (on, running.cursor.as_ref().filter(|_| *id == running.shard)),
    };
    let cursor = cursor.filter(|_| now.updated_at == running.target.updated_at);
    let batch = with_statement_timeout(settings::statement_timeout(), on.relid, || {
        batch::try_lock(on)
            .then(|| batch::delete_batch(on, on.batch_size(), cursor, false, running.locked))
    });
    if let Some(batch) = &batch {
        let mut progress = running.progress;
        progress.add(batch, Duration::ZERO);
        history::note_progress(now.id, started_at, &progress);
    }
    let shard = shard.map(|(id, on)| (id, Box::new(on)));
    Step::Ran(batch, Box::new(now), shard)
}

/// Makes the batch's deferrable constraints (a foreign key `DEFERRABLE INITIALLY DEFERRED`
/// that references the table, or a constraint trigger) fire at the end of its statement, still
/// as the owner. Postgres refuses to defer them from owner code, which runs as a
/// security-restricted operation: deferred to the commit, they would run as whoever commits.
/// Owner code that defers them again (`SET CONSTRAINTS … DEFERRED`) fails its batch.
fn immediate_constraints() {
    Spi::run("SET CONSTRAINTS ALL IMMEDIATE").expect("SET CONSTRAINTS ALL IMMEDIATE");
}

/// Adds to the round the targets that are due now and not already in it.
fn join_newly_due(queue: &mut VecDeque<Running>) {
    wake_request(true);
    if let Ok(Look::Due(due, _)) = in_transaction(|| pinned(look)) {
        for target in due {
            if !queue.iter().any(|running| running.target.id == target.id) {
                queue.push_back(Running::new(target));
            }
        }
    }
}

/// Reads the registry: the targets due now, by their schedules and wake requests, and how
/// long until the next one is due.
fn look() -> Look {
    match held_version() {
        None => return Look::NoExtension,
        Some(version) if version != LIBRARY_VERSION => return Look::OtherVersion(version),
        Some(_) => {}
    }
    if !settings::enabled() {
        return Look::Due(Vec::new(), MAX_SLEEP);
    }
    let now = crate::shared::clock::unix_now();
    let (due, later): (Vec<_>, Vec<_>) = target::load(None)
        .into_iter()
        .filter(|r| r.enabled)
        .partition(|r| r.next_run(now) <= now);
    let next = later
        .iter()
        .map(|r| r.next_run(now))
        .fold(f64::INFINITY, f64::min);
    let pause = Duration::from_secs_f64((next - now).clamp(0.0, MAX_SLEEP.as_secs_f64()));
    Look::Due(due, pause)
}
