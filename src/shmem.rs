//! shmem.rs — what the processes of session_reaper tell each other, in shared memory: the
//! launcher's pid, a request to look for databases again, and one slot per database worker
//! (its pid, what it is doing, a wake-up request). `reaper_stats()` reads the slots; nothing
//! here is written by a scrape.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// More databases with the extension than this get no worker (and a WARNING saying so).
pub const MAX_WORKERS: usize = 128;

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
    /// Set by reaper_wake() and by registry changes; the worker runs every target at once.
    pub wake: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub launcher_pid: i32,
    /// Set when a database may have gained the extension: the launcher looks again.
    pub rescan: bool,
    pub slots: [Slot; MAX_WORKERS],
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_pid: 0,
            rescan: true,
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

/// Asks the worker of `database` to run every target now; false when it has no worker.
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

/// Asks the launcher to look for databases with the extension again.
pub fn request_rescan(database: u32) {
    let pid = {
        let mut shared = SHARED.exclusive();
        shared.rescan = true;
        if let Some(slot) = shared.slot_of_mut(database) {
            if slot.state == WorkerState::NoExtension {
                *slot = Slot::default();
            }
        }
        shared.launcher_pid
    };
    wake_pid(pid);
}
