//! shmem.rs — what the processes of session_reaper tell each other, in shared memory: the
//! launcher's pid, a request to look for databases again, and one slot per database worker
//! (its pid, what it is doing, a wake-up request). `reaper_stats()` reads the slots; nothing
//! here is written by a scrape.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// More databases with the extension than this get no worker (and a WARNING saying so).
pub const MAX_WORKERS: usize = 128;

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
    /// DROP DATABASE is under way: no worker may start there (until DROPPING_HOLD has passed,
    /// in case the drop failed).
    Dropping,
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
}

#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub launcher_pid: i32,
    /// Set when a database may have gained the extension: the launcher looks again.
    pub rescan: bool,
    /// Counts commits of CREATE EXTENSION session_reaper. A worker that found no extension
    /// records the count it saw before looking; a higher count means it may have looked too
    /// early, and the launcher starts it again.
    pub generation: u64,
    pub slots: [Slot; MAX_WORKERS],
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_pid: 0,
            rescan: true,
            generation: 0,
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

/// Asks the launcher to look for databases with the extension again (after a commit of
/// CREATE EXTENSION session_reaper).
pub fn request_rescan() {
    let pid = {
        let mut shared = SHARED.exclusive();
        shared.rescan = true;
        shared.generation += 1;
        shared.launcher_pid
    };
    wake_pid(pid);
}
