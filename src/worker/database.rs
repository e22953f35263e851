//! database.rs — the reaper of one database: a background worker that sleeps on its latch until
//! a target is due, then reaps the due targets round-robin, a transaction per batch.
//!
//! Signals are Postgres' own: SIGHUP sets ConfigReloadPending (settings are re-read at the top
//! of the loop), SIGTERM is `die`, so a batch in flight is cancelled and rolled back and the
//! worker exits at the next interrupt check. `pg_cancel_backend` cancels the current batch only.
//! The launcher starts this worker (launcher.rs) and never lets the postmaster restart it: a
//! worker whose database lost the extension or was dropped simply stays gone.

use crate::reap::batch::{self, Batch, Locked, Progress};
use crate::reap::cursor::Cursor;
use crate::reap::history::{self, Run, Status};
use crate::reap::target::{self, Registered, Target};
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, with_settings};
use crate::shared::settings;
use crate::shared::shmem::{claim_slot, leave_for_lack_of_extension, WorkerState, SHARED};
use crate::shared::sql::{installed_version, pinned, LIBRARY_VERSION};
use crate::shared::txn::{in_transaction, with_statement_timeout};
use crate::worker::process::{pause, reload_settings_if_asked, sleep_unless};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
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

fn set_state(state: WorkerState, current: pg_sys::Oid) {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if let Some(slot) = SHARED.exclusive().slot_of_mut(database) {
        if slot.state != WorkerState::Dropping {
            slot.state = state;
            slot.current = current.to_u32();
        }
    }
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

/// The running total of one target's run within a wake.
struct Running {
    target: Registered,
    /// When its first batch began: the run's clock (`reaper.max_runtime`) starts there, not
    /// when it was queued behind other targets.
    started: Option<(f64, Instant)>,
    progress: Progress,
    /// Where the target's next batch starts; None before the first.
    cursor: Option<Cursor>,
    /// Whether batches wait for locked rows (until one timed out) or skip them.
    locked: Locked,
}

impl Running {
    fn new(target: Registered) -> Self {
        Running {
            target,
            started: None,
            progress: Progress::default(),
            cursor: None,
            locked: Locked::Wait,
        }
    }

    /// When the run started (Unix seconds) and its clock, starting both now if it has not.
    fn start(&mut self) -> (f64, Instant) {
        *self
            .started
            .get_or_insert_with(|| (crate::shared::clock::unix_now(), Instant::now()))
    }
}

/// How a target's turn ended.
enum TurnEnd {
    Done,
    MoreWork,
    OutOfTime,
    Skipped,
    /// The target's rule, as it stands now, says to stop: disabled, unregistered, or
    /// `reaper.enabled = off`.
    Stopped,
    Failed(PgSqlErrorCode, String),
    /// DROP EXTENSION committed: the round ends without another delete or record.
    ExtensionDropped,
}

/// What one batch's transaction found and did.
enum Step {
    /// The batch ran (None: another reap holds the table's lock), under this rule.
    Ran(Option<Batch>, Box<Registered>),
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
        disable_stuck_target();
        record_interrupted_runs();
        loop {
            crate::shared::txn::check_for_interrupts();
            reload_settings_if_asked();
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
            set_state(WorkerState::Idle, pg_sys::InvalidOid);
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

    /// Runs up to TURN_BATCHES batches of one target, pausing `reaper.batch_delay` (and for
    /// `reaper.max_rows_per_second`) after each. Each batch reads the target's rule afresh, so
    /// a change, a disable, an unregister or `reaper.enabled = off` takes effect at the next
    /// batch.
    fn turn(&mut self, running: &mut Running) -> TurnEnd {
        for _ in 0..TURN_BATCHES {
            let (started_at, started) = running.start();
            if started.elapsed() >= settings::max_runtime() {
                return TurnEnd::OutOfTime;
            }
            wait_for_replicas(started);
            reload_settings_if_asked();
            set_state(WorkerState::Reaping, running.target.relid);
            let batch_started = Instant::now();
            let step = watched(|| in_transaction(|| pinned(|| batch_step(running, started_at))));
            let (batch, now) = match step {
                Ok(Step::Ran(Some(batch), now)) => (batch, now),
                Ok(Step::Ran(None, _)) => return TurnEnd::Skipped,
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
                Err((code, message)) => return TurnEnd::Failed(code, message),
            };
            if now.updated_at != running.target.updated_at {
                running.cursor = None;
            }
            running.target = *now;
            let batch_ended = Instant::now();
            running.progress.add(&batch, batch_ended - batch_started);
            let t = running
                .target
                .target
                .as_ref()
                .expect("checked by batch_step");
            debug1!(
                "session_reaper: {}: batch of {} rows committed in {:.1} ms",
                t.name,
                batch.deleted,
                (batch_ended - batch_started).as_secs_f64() * 1e3
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
            let Some(next) = batch.next else {
                return TurnEnd::Done;
            };
            running.cursor = Some(next);
            throttle(batch.deleted, batch_started, batch_ended);
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
            match in_transaction(|| pinned(history::prune)) {
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
    // the extension is still there, so a DROP EXTENSION stops the deletes at once.
    if !extension_installed() {
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
    let cursor = running
        .cursor
        .as_ref()
        .filter(|_| now.updated_at == running.target.updated_at);
    let batch = with_statement_timeout(settings::statement_timeout(), || {
        batch::try_lock(t)
            .then(|| batch::delete_batch(t, t.batch_size(), cursor, false, running.locked))
    });
    if let Some(batch) = &batch {
        let mut progress = running.progress;
        progress.add(batch, Duration::ZERO);
        history::note_progress(now.id, started_at, &progress);
    }
    Step::Ran(batch, Box::new(now))
}

/// Runs a step that runs code of a table's owner (a batch, a prune, ANALYZE, recording a run
/// with its backlog probe) under a deadline the launcher enforces (shmem::stop_overdue_workers).
fn watched<R>(f: impl FnOnce() -> R) -> R {
    let limit = settings::statement_timeout() + settings::RUNAWAY_GRACE;
    crate::shared::shmem::set_deadline(Some(
        crate::shared::clock::unix_now() + limit.as_secs_f64(),
    ));
    let result = f();
    crate::shared::shmem::set_deadline(None);
    result
}

/// Disables the target a previous worker of this database was stopped in (its owner's code
/// went on past the statement timeout's cancel), so this worker does not run it again: an
/// `error` run says why, and a WARNING.
fn disable_stuck_target() {
    let relid = crate::shared::shmem::take_stuck();
    if relid == 0 {
        return;
    }
    let disabled = in_transaction(|| {
        pinned(|| {
            if installed_version().as_deref() != Some(LIBRARY_VERSION) {
                return None;
            }
            let registered = target::load(Some(pg_sys::Oid::from(relid)))
                .into_iter()
                .next()?;
            let e = ReaperError::Runaway {
                table: registered.name.clone(),
                timeout: settings::statement_timeout(),
            };
            crate::reap::target::set_enabled(registered.id, false);
            let run = Run {
                target: &registered,
                trigger: "worker",
                started_at: crate::shared::clock::unix_now(),
                progress: Progress::default(),
                status: Status::Error,
                error: Some(e.message()),
                complete: false,
            };
            history::record(&run);
            Some(e)
        })
    });
    match disabled {
        Ok(Some(e)) => warn(
            e.sqlstate(),
            &format!(
                "session_reaper: {}; {}",
                e.message(),
                e.hint().unwrap_or_default()
            ),
        ),
        Ok(None) => {}
        Err((code, message)) => warn(
            code,
            &format!("session_reaper: disabling a runaway target: {message}"),
        ),
    }
}

/// Records, as `interrupted`, the runs a previous worker of this database was stopped in the
/// middle of (a shutdown, a crash), before this one runs anything.
fn record_interrupted_runs() {
    let recorded = in_transaction(|| {
        pinned(|| {
            (installed_version().as_deref() == Some(LIBRARY_VERSION))
                .then(history::record_interrupted)
        })
    });
    if let Err((code, message)) = recorded {
        warn(
            code,
            &format!("session_reaper: recording interrupted runs: {message}"),
        );
    }
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
    match installed_version() {
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

/// Whether session_reaper is installed in this database (as of the current snapshot).
fn extension_installed() -> bool {
    installed_version().is_some()
}

/// How a run that ended so is recorded: its status, and the error it reports.
fn outcome(name: &str, end: TurnEnd) -> (Status, Option<String>) {
    match end {
        TurnEnd::Done | TurnEnd::MoreWork | TurnEnd::Stopped | TurnEnd::ExtensionDropped => {
            (Status::Ok, None)
        }
        TurnEnd::OutOfTime => (
            Status::Timeout,
            Some(format!(
                "reaper.max_runtime ({} s) ran out with dead rows left; the rest waits for the next run",
                settings::max_runtime().as_secs()
            )),
        ),
        TurnEnd::Skipped => (
            Status::Skipped,
            Some("another reap of this table is running".to_string()),
        ),
        TurnEnd::Failed(code, message) => {
            warn(code, &format!("session_reaper: {name}: {message}"));
            (Status::of_failure(code), Some(message))
        }
    }
}

/// Records a finished run, logs it, and ANALYZEs the table after a large share went.
fn finish(running: Running, end: TurnEnd) -> bool {
    let complete = matches!(end, TurnEnd::Done);
    let (status, error) = outcome(&running.target.name, end);
    let run = Run {
        target: &running.target,
        trigger: "worker",
        started_at: running
            .started
            .map_or_else(crate::shared::clock::unix_now, |(at, _)| at),
        progress: running.progress,
        status,
        error,
        complete,
    };
    let recorded = watched(|| in_transaction(|| pinned(|| history::record(&run))));
    if let Err((code, message)) = &recorded {
        warn(
            *code,
            &format!(
                "session_reaper: {}: recording the run: {message}",
                running.target.name
            ),
        );
    }
    if let (Ok(t), Some(share)) = (&running.target.target, settings::analyze_after()) {
        if running.progress.rows > 0 {
            let analyzed = watched(|| {
                in_transaction(|| pinned(|| analyze_if_large(t, running.progress.rows, share)))
            });
            if let Err((code, message)) = analyzed {
                warn(
                    code,
                    &format!("session_reaper: {}: ANALYZE: {message}", t.name),
                );
            }
        }
    }
    recorded.is_ok()
}

/// ANALYZEs the table, as its owner, when `rows` is at least `share` of what it held. Bounded
/// as a batch is: it gives up rather than queue behind DDL or run past the statement timeout.
fn analyze_if_large(t: &Target, rows: i64, share: f64) {
    let before = Spi::get_one_with_args::<f32>(
        "SELECT reltuples FROM pg_class WHERE oid = $1",
        &[t.relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0.0);
    if before > 0.0 && rows as f64 >= share * f64::from(before) {
        let statement = format!("ANALYZE {}", t.qualified());
        with_settings(&[("lock_timeout", settings::lock_timeout())], || {
            with_statement_timeout(settings::statement_timeout(), || {
                as_role(t.owner, || Spi::run(&statement))
            })
        })
        .expect("ANALYZE");
    }
}

/// Prunes the pages a committed batch covered, in a transaction of its own (see
/// batch::prune_pages). Only a saving for the application's queries, so a failure does not end
/// the run: a lock timeout (DDL waiting on the table) is expected and logged at DEBUG1, anything
/// else (a cancel, a statement timeout, a dropped table) is a WARNING with its SQLSTATE.
/// A flat-out run (batch_delay = 0, no max_rows_per_second) skips it: it cost one about a
/// sixth of its rows/s.
fn prune_behind(t: &Target, pages: (u32, u64)) {
    let started = Instant::now();
    let pruned = watched(|| {
        in_transaction(|| {
            pinned(|| {
                with_statement_timeout(settings::statement_timeout(), || {
                    batch::prune_pages(t, pages)
                })
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
        Err((PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, message)) => {
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

/// Pauses after a batch until `reaper.batch_delay` has passed since it ended (what the worker
/// did meanwhile, such as pruning, counts as pause: a prune longer than the delay lengthens
/// the cycle), and longer when `reaper.max_rows_per_second` asks for it.
fn throttle(deleted: i64, batch_started: Instant, batch_ended: Instant) {
    let mut until = batch_ended + settings::batch_delay();
    if let Some(rate) = settings::max_rows_per_second() {
        until = until.max(batch_started + Duration::from_secs_f64(deleted as f64 / rate));
    }
    // A wake-up (a registration, reaper_wake) does not shorten the pause.
    pause(until.saturating_duration_since(Instant::now()));
}

/// Waits while a streaming replica lags more than `reaper.max_replica_lag`, checking each
/// second, for at most the target's remaining runtime.
fn wait_for_replicas(run_started: Instant) {
    while run_started.elapsed() < settings::max_runtime() {
        // Read on every check: a reload that lifts or raises the ceiling ends the wait at once.
        let Some(max_lag) = settings::max_replica_lag() else {
            return;
        };
        // GREATEST is SQL syntax, not a function: spelled pg_catalog.greatest(…) the query
        // failed on every batch, and a failed check (below) means no pause, so the setting did
        // nothing (reload.rs reloaded_max_replica_lag_pauses_the_worker_behind_a_late_standby).
        let lag = in_transaction(|| {
            pinned(|| {
                Spi::get_one::<f64>(
                    "SELECT coalesce(max(extract(epoch FROM GREATEST(write_lag, flush_lag, replay_lag))), 0)::float8
                       FROM pg_catalog.pg_stat_replication",
                )
            })
        });
        let lag = match lag {
            Ok(Ok(Some(seconds))) => Duration::from_secs_f64(seconds.max(0.0)),
            _ => return,
        };
        if lag <= max_lag {
            return;
        }
        set_state(WorkerState::PausedForReplica, pg_sys::InvalidOid);
        pause(Duration::from_secs(1));
    }
}

/// Logs a WARNING that carries the SQLSTATE in its text as well as in its error code.
fn warn(code: PgSqlErrorCode, message: &str) {
    ErrorReport::new(
        code,
        format!("{message} (SQLSTATE {})", sqlstate(code)),
        "session_reaper worker",
    )
    .report(PgLogLevel::WARNING);
}

/// The five-character SQLSTATE of an error code (Postgres packs it six bits a character).
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5)
        .map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3F) as u8))
        .collect()
}
