//! shmem.rs — what the processes of session_reaper tell each other, in shared memory: the
//! launcher's pid, a request to look for databases again, and one slot per database worker
//! (its pid, what it is doing, a wake-up request). `reaper_stats()` reads the slots; nothing
//! here is written by a scrape.
//!
//! The slot protocol: the launcher reserves a slot (Starting) before it starts a worker; the
//! worker claims it ([`claim_slot`]) and gives it back when it exits ([`release_slot`]). A
//! worker that finds no extension leaves a NoExtension marker, which the launcher takes into
//! its own memory and frees, so such databases hold no slot; a worker that exits with an error
//! leaves a Backoff marker that tells the launcher when to start it again.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::time::Duration;

/// More databases with the extension than this get no worker (and a WARNING naming each).
pub const MAX_WORKERS: usize = 128;

/// The first wait before a worker that exited with an error is started again; it doubles with
/// each failure in a row, up to MAX_BACKOFF.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A worker that ran this long before it failed starts again after FIRST_BACKOFF: its failure
/// is not part of a crash loop.
const RAN_FINE: Duration = Duration::from_secs(60);

/// How long a DROP DATABASE keeps the launcher from starting a worker in that database.
pub const DROPPING_HOLD_SECS: u64 = 60;

/// What a database worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerState {
    #[default]
    Free,
    Starting,
    Idle,
    Reaping,
    /// Waiting for a replica to catch up (`reaper.max_replica_lag`).
    PausedForReplica,
    /// The database has no session_reaper: the worker left; started again on CREATE EXTENSION.
    NoExtension,
    /// DROP DATABASE is under way: no worker may start there. A failed drop takes the mark
    /// back (hooks.rs); DROPPING_HOLD_SECS is the safety net should that not happen.
    Dropping,
    /// The worker exited with an error: the launcher starts it again at `retry_at`.
    Backoff,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "stopped",
            Self::Starting => "starting",
            Self::Idle => "idle",
            Self::Reaping => "reaping",
            Self::PausedForReplica => "paused for replica lag",
            Self::NoExtension => "no extension",
            Self::Dropping => "database being dropped",
            Self::Backoff => "restarting after an error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    pub database: u32,
    pub pid: i32,
    pub state: WorkerState,
    /// The table being reaped, while Reaping.
    pub current: u32,
    /// Set by reaper_wake() and by registry changes: the worker looks at its targets again at
    /// once (which of them run is up to their schedules and wake requests).
    pub wake: bool,
    /// For a NoExtension slot: the extension generation its worker looked at.
    pub generation: u64,
    /// For a Dropping slot: when the drop began (Unix seconds).
    pub since: u64,
    /// Error exits in a row of this database's worker (kept while a restarted worker runs).
    pub failures: u32,
    /// For a Backoff slot: when the launcher may start the worker again (Unix seconds).
    pub retry_at: f64,
    /// When the running worker claimed the slot (Unix seconds).
    pub started_at: f64,
    /// While the worker runs code of a table's owner under a statement timeout: when that must
    /// be over (monotonic seconds; 0: none), and the table. Past it, the owner's code ignored the
    /// timeout's cancel, and the launcher stops the worker.
    pub deadline: f64,
    pub deadline_table: u32,
    /// The table whose batch the launcher stopped the worker in; kept through the restart, so
    /// the next worker disables that target instead of running it again.
    pub stuck: u32,
}

impl Slot {
    /// Turns the slot of a worker that exited with an error at `now` into a Backoff marker.
    fn back_off(&mut self, now: f64) {
        let failures = if now - self.started_at >= RAN_FINE.as_secs_f64() {
            1
        } else {
            self.failures.saturating_add(1)
        };
        *self = Slot {
            database: self.database,
            state: WorkerState::Backoff,
            failures,
            retry_at: now + backoff(failures).as_secs_f64(),
            stuck: self.stuck,
            ..Default::default()
        };
    }
}

/// How long the launcher waits before the start after the `failures`-th error exit in a row:
/// FIRST_BACKOFF, doubling, at most MAX_BACKOFF.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub launcher_pid: i32,
    /// Set when a database may have gained the extension: the launcher looks again.
    pub rescan: bool,
    /// Counts commits of CREATE EXTENSION session_reaper. A worker that found no extension
    /// records the count it saw before looking; a later commit in its database means it may
    /// have looked too early, and the launcher starts it again.
    pub generation: u64,
    /// Where the last CREATE_RING commits of CREATE EXTENSION were: `(database, generation)`
    /// at `generation % CREATE_RING`, so the launcher restarts only those databases' workers.
    pub created: [(u32, u64); CREATE_RING],
    pub slots: [Slot; MAX_WORKERS],
}

/// How many CREATE EXTENSION commits shared memory remembers the database of. A launcher that
/// missed more (it was asleep or restarting) treats every database as possibly changed.
pub const CREATE_RING: usize = 64;

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_pid: 0,
            rescan: true,
            generation: 0,
            created: [(0, 0); CREATE_RING],
            slots: [Slot::default(); MAX_WORKERS],
        }
    }
}

unsafe impl PGRXSharedMemory for Shared {}

pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"session_reaper") };

/// Requests the shared memory; called from `_PG_init` under shared_preload_libraries.
pub fn init() {
    pg_shmem_init!(SHARED);
}

impl Shared {
    pub fn slot_of(&self, database: u32) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.database == database && s.state != WorkerState::Free)
    }

    pub fn slot_of_mut(&mut self, database: u32) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|s| s.database == database && s.state != WorkerState::Free)
    }

    /// Fills a free slot with `slot`; false when every slot is taken.
    pub fn take_free_slot(&mut self, slot: Slot) -> bool {
        match self.slots.iter_mut().find(|s| s.state == WorkerState::Free) {
            Some(free) => {
                *free = slot;
                true
            }
            None => false,
        }
    }
}

/// Sets the latch of the process `pid`, if it is still a backend.
pub fn wake_pid(pid: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: BackendPidGetProc returns null or a live PGPROC in shared memory.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&mut (*proc_).procLatch);
        }
    }
}

/// Whether `database` has a running worker.
pub fn has_worker(database: u32) -> bool {
    SHARED
        .share()
        .slot_of(database)
        .is_some_and(|slot| slot.pid != 0)
}

/// Asks the worker of `database` to look at its targets again now (a registry change, a
/// reaper_wake request); false when it has no worker.
pub fn wake_worker(database: u32) -> bool {
    let pid = {
        let mut shared = SHARED.exclusive();
        match shared.slot_of_mut(database) {
            Some(slot) if slot.pid != 0 => {
                slot.wake = true;
                slot.pid
            }
            _ => 0,
        }
    };
    wake_pid(pid);
    pid != 0
}

/// Asks the launcher to look for databases with the extension again after a commit of
/// CREATE EXTENSION session_reaper in `database`: its worker may have looked too early.
pub fn request_rescan(database: u32) {
    {
        let mut shared = SHARED.exclusive();
        shared.generation += 1;
        let generation = shared.generation;
        shared.created[generation as usize % CREATE_RING] = (database, generation);
    }
    ask_launcher_to_look();
}

/// Asks the launcher to go over the databases and the slots now.
pub fn ask_launcher_to_look() {
    let pid = {
        let mut shared = SHARED.exclusive();
        shared.rescan = true;
        shared.launcher_pid
    };
    wake_pid(pid);
}

/// Takes back the Dropping mark of a database whose DROP DATABASE failed: its worker, if it is
/// still running, carries on; if it is gone, the launcher starts it again at once.
pub fn cancel_dropping(database: u32) {
    if let Some(slot) = SHARED
        .exclusive()
        .slot_of_mut(database)
        .filter(|slot| slot.state == WorkerState::Dropping)
    {
        if slot.pid == 0 {
            *slot = Default::default();
        } else {
            slot.state = WorkerState::Idle;
        }
    }
    ask_launcher_to_look();
}

/// Takes this database's slot for the calling worker; false when a live worker already holds
/// it or the database is being dropped.
pub fn claim_slot(database: u32) -> bool {
    let me = unsafe { pg_sys::MyProcPid };
    let now = crate::shared::clock::unix_now();
    let mut shared = SHARED.exclusive();
    if let Some(slot) = shared.slot_of_mut(database) {
        let taken = slot.pid != 0 && slot.pid != me && unsafe { libc::kill(slot.pid, 0) } == 0;
        if taken || slot.state == WorkerState::Dropping {
            return false;
        }
        slot.pid = me;
        slot.state = WorkerState::Idle;
        slot.started_at = now;
        return true;
    }
    shared.take_free_slot(Slot {
        database,
        pid: me,
        state: WorkerState::Idle,
        started_at: now,
        ..Default::default()
    })
}

/// The worker's exit callback (`before_shmem_exit`, argument: the database): gives its slot
/// back. A worker that left for lack of the extension, or because its database is being
/// dropped, leaves its marker; one that exited with an error (`code` != 0: an ERROR, a FATAL,
/// a SIGTERM) leaves a Backoff marker. The launcher is told, but of a drop (hooks.rs tells it
/// when the drop ends).
#[pg_guard]
pub unsafe extern "C-unwind" fn release_slot(code: i32, arg: pg_sys::Datum) {
    let database = arg.value() as u32;
    let me = pg_sys::MyProcPid;
    let launcher = {
        let mut shared = SHARED.exclusive();
        let Some(slot) = shared.slot_of_mut(database).filter(|slot| slot.pid == me) else {
            return;
        };
        match slot.state {
            WorkerState::Dropping => {
                slot.pid = 0;
                return;
            }
            // The launcher takes the marker and frees the slot for a database waiting for one.
            WorkerState::NoExtension => slot.pid = 0,
            _ if code == 0 => *slot = Default::default(),
            _ => slot.back_off(crate::shared::clock::unix_now()),
        }
        shared.rescan = true;
        shared.launcher_pid
    };
    wake_pid(launcher);
}

/// Marks this database as lacking the extension and exits, so the launcher starts the worker
/// again only after the next CREATE EXTENSION — unless one committed since the worker looked
/// (`generation` is the count it saw before looking): then it returns, to look again.
pub fn leave_for_lack_of_extension(generation: u64) {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    {
        let mut shared = SHARED.exclusive();
        if shared.generation != generation {
            return;
        }
        if let Some(slot) = shared.slot_of_mut(database) {
            slot.state = WorkerState::NoExtension;
            slot.generation = generation;
        }
    }
    unsafe { pg_sys::proc_exit(0) }
}

/// Stops the workers whose owner code is past its deadline: the statement timeout fired, and
/// code of the table's owner (a trigger, the predicate, a function they call) caught the
/// cancel and went on, holding the database's only worker and a transaction. SIGTERM is
/// Postgres' `die`: a FATAL at the next interrupt check, which no exception handler can catch.
/// It is sent under the lock (the worker cannot have released its slot, so its pid is not
/// reused). The table is kept in the slot for the next worker (see `stuck`). Returns how long
/// until the next deadline, for the launcher's sleep.
pub fn stop_overdue_workers(now: f64) -> Option<Duration> {
    let mut next: Option<f64> = None;
    let mut stopped = Vec::new();
    {
        let mut shared = SHARED.exclusive();
        for slot in shared.slots.iter_mut() {
            if slot.pid == 0 || slot.deadline == 0.0 {
                continue;
            }
            if now < slot.deadline {
                next = Some(next.map_or(slot.deadline, |n| n.min(slot.deadline)));
                continue;
            }
            slot.stuck = slot.deadline_table;
            slot.deadline = 0.0;
            // SAFETY: a signal to a live process of this cluster that holds one of our slots.
            unsafe { libc::kill(slot.pid, libc::SIGTERM) };
            stopped.push((slot.pid, slot.deadline_table));
        }
    }
    for (pid, table) in stopped {
        pgrx::warning!(
            "session_reaper: the worker with pid {pid} went on with code of table {table}'s owner after its statement timeout: stopped; the next worker disables that target"
        );
    }
    next.map(|at| Duration::from_secs_f64((at - now).max(0.0)))
}

/// Sets (with the table whose owner's code runs) or clears (None) this worker's deadline.
pub fn set_deadline(deadline: Option<(f64, u32)>) {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if let Some(slot) = SHARED.exclusive().slot_of_mut(database) {
        (slot.deadline, slot.deadline_table) = deadline.unwrap_or((0.0, 0));
    }
}

/// The table a stopped worker of this database was stuck in (0: none).
pub fn stuck() -> u32 {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    SHARED
        .share()
        .slot_of(database)
        .map_or(0, |slot| slot.stuck)
}

/// Forgets the stuck table, once its target is disabled.
pub fn clear_stuck() {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if let Some(slot) = SHARED.exclusive().slot_of_mut(database) {
        slot.stuck = 0;
    }
}

/// Says in this database's slot what its worker is doing, and on which table; a slot being
/// dropped keeps saying so.
pub fn set_worker_state(state: WorkerState, current: pg_sys::Oid) {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if let Some(slot) = SHARED.exclusive().slot_of_mut(database) {
        if slot.state != WorkerState::Dropping {
            slot.state = state;
            slot.current = current.to_u32();
        }
    }
}
