//! launcher.rs — the one static background worker: it finds the databases that may have
//! session_reaper and keeps one database worker (database.rs) running in each.
//!
//! It connects to no database, so it blocks no DROP DATABASE and needs no database name;
//! it reads the shared catalog pg_database directly. A database worker that finds no extension
//! leaves a marker in its slot and exits; the launcher moves the marker into its own memory,
//! freeing the slot, and does not start that worker again until a backend commits CREATE
//! EXTENSION session_reaper (hooks.rs asks for a rescan). A worker that exits with an error is
//! started again after a back-off (shmem.rs). New databases are picked up by a periodic rescan.

use crate::shared::settings;
use crate::shared::shmem::{
    Shared, Slot, WorkerState, CREATE_RING, DROPPING_HOLD_SECS, MAX_WORKERS, SHARED,
};
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// How often the launcher looks for new databases without being asked.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// A worker slot still "starting" after this is given up and started again.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest sleep between two looks at the rescan request.
const MAX_SLEEP: Duration = Duration::from_secs(10);
/// When no slot is free but some are held by workers still starting or leaving, the next scan
/// comes this soon.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// Registers the launcher with the postmaster; called from `_PG_init`. It starts once recovery
/// has finished, so a hot standby runs no reaper until it is promoted, and the postmaster
/// restarts it if it dies.
pub fn register() {
    BackgroundWorkerBuilder::new("session_reaper launcher")
        .set_type("session_reaper launcher")
        .set_library("session_reaper")
        .set_function("session_reaper_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// A database the launcher may start a worker for.
struct Database {
    oid: u32,
    name: String,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn session_reaper_launcher_main(_arg: pg_sys::Datum) {
    // SAFETY: standard background worker start-up.
    unsafe {
        crate::worker::process::handle_signals();
        pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0);
    }
    SHARED.exclusive().launcher_pid = unsafe { pg_sys::MyProcPid };
    // Says, once per start, that the preload took: the DBA's first check after a restart.
    log!(
        "session_reaper: launcher started (version {}); a worker starts in each database with the extension",
        crate::shared::LIBRARY_VERSION
    );
    let mut launcher = Launcher::default();
    loop {
        let asked = std::mem::take(&mut SHARED.exclusive().rescan);
        if asked || launcher.scan_due() {
            launcher.scan();
        }
        let next_deadline =
            crate::shared::shmem::stop_overdue_workers(crate::shared::clock::monotonic_now());
        let sleep = launcher
            .until_next_scan()
            .min(next_deadline.unwrap_or(Duration::MAX));
        crate::worker::process::sleep_unless(sleep, || SHARED.share().rescan);
    }
}

/// What the launcher keeps in its own memory between scans.
#[derive(Default)]
struct Launcher {
    last_scan: Option<Instant>,
    /// An earlier scan than RESCAN_EVERY's: a back-off ends, or a slot is about to free up.
    scan_at: Option<Instant>,
    /// Workers started and when, until they claim their slot or START_TIMEOUT passes.
    starting: Vec<(u32, Instant)>,
    /// Databases whose worker could not be started (max_worker_processes), warned about once.
    warned: HashSet<u32>,
    /// Databases left without a worker because every slot is taken, warned about once.
    no_slot: HashSet<u32>,
    /// Databases whose worker found no extension, with the extension generation it saw. Kept
    /// here rather than in a slot, so any number of them leave every slot to the databases
    /// that have the extension.
    no_extension: HashMap<u32, u64>,
    /// The generation of the last CREATE EXTENSION commit in each database, as far as read.
    created: HashMap<u32, u64>,
    /// Markers older than this are stale: commits were missed (see CREATE_RING).
    stale_below: u64,
    /// The generation up to which `created` has been read.
    read_up_to: u64,
}

/// What reserving a slot for a database found.
enum Reserve {
    /// A slot is reserved: start the worker (after `failures` error exits in a row).
    Reserved { failures: u32 },
    /// Nothing to start: it has a worker, or is known to lack the extension, or is dropped.
    NotNeeded,
    /// Its worker exited with an error and may start again at this Unix time.
    BackingOff(f64),
    /// No slot is free; `settling`: some are held by workers still starting or leaving, so one
    /// may free up in a moment.
    Full { settling: bool },
}

impl Launcher {
    fn scan_due(&self) -> bool {
        self.scan_at.is_some_and(|at| Instant::now() >= at)
            || self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY)
    }

    /// How long the launcher may sleep: at most MAX_SLEEP, and not past an early scan.
    fn until_next_scan(&self) -> Duration {
        self.scan_at.map_or(MAX_SLEEP, |at| {
            at.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
        })
    }

    fn scan_no_later_than(&mut self, at: Instant) {
        self.scan_at = Some(self.scan_at.map_or(at, |earlier| earlier.min(at)));
    }

    /// Starts a worker in every database that has none, is not known to lack the extension,
    /// and is allowed by `reaper.database_names`; forgets databases that are gone.
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.scan_at = None;
        let databases = list_databases();
        self.tidy_slots(&databases);
        let wanted = settings::database_names();
        for db in databases
            .iter()
            .filter(|db| wanted.is_empty() || wanted.contains(&db.name))
        {
            match self.reserve_slot(db.oid) {
                Reserve::Reserved { failures } => self.start(db, failures),
                Reserve::NotNeeded => {}
                Reserve::BackingOff(retry_at) => {
                    let wait = (retry_at - crate::shared::clock::unix_now()).max(0.0);
                    self.scan_no_later_than(Instant::now() + Duration::from_secs_f64(wait));
                }
                Reserve::Full { settling: true } => {
                    self.scan_no_later_than(Instant::now() + SETTLE_RETRY)
                }
                Reserve::Full { settling: false } => self.warn_no_slot(db),
            }
        }
    }

    /// Frees the slots of databases that are gone, of starts that never came, of drops held too
    /// long, and of markers of databases without the extension (remembered here instead).
    fn tidy_slots(&mut self, databases: &[Database]) {
        let present: HashSet<u32> = databases.iter().map(|d| d.oid).collect();
        let mut shared = SHARED.exclusive();
        self.collect_no_extension(&mut shared);
        for slot in shared.slots.iter_mut() {
            let stale_start = slot.state == WorkerState::Starting
                && slot.pid == 0
                && self
                    .starting
                    .iter()
                    .any(|(db, at)| *db == slot.database && at.elapsed() > START_TIMEOUT);
            let drop_over = slot.state == WorkerState::Dropping
                && crate::shared::clock::unix_now() as u64 > slot.since + DROPPING_HOLD_SECS;
            if slot.pid == 0 && (!present.contains(&slot.database) || stale_start || drop_over) {
                *slot = Default::default();
            }
        }
        self.starting
            .retain(|(_, at)| at.elapsed() <= START_TIMEOUT);
        self.no_extension.retain(|db, _| present.contains(db));
        self.created.retain(|db, _| present.contains(db));
        self.warned.retain(|db| present.contains(db));
        self.no_slot.retain(|db| present.contains(db));
    }

    /// Reads which databases committed CREATE EXTENSION since the last call.
    fn read_creations(&mut self, shared: &Shared) {
        let now = shared.generation;
        if now - self.read_up_to > CREATE_RING as u64 {
            self.stale_below = now;
        } else {
            for generation in self.read_up_to + 1..=now {
                let (database, at) = shared.created[generation as usize % CREATE_RING];
                if at == generation {
                    self.created.insert(database, generation);
                }
            }
        }
        self.read_up_to = now;
    }

    /// Whether `database` is known to lack the extension: its worker found none, and no CREATE
    /// EXTENSION committed there since (or may have: then its worker looked too early).
    fn lacks_extension(&self, database: u32) -> bool {
        self.no_extension.get(&database).is_some_and(|&seen| {
            seen >= self.stale_below && seen >= self.created.get(&database).copied().unwrap_or(0)
        })
    }

    /// Moves the NoExtension markers of workers that have left into `no_extension`, freeing
    /// their slots.
    fn collect_no_extension(&mut self, shared: &mut Shared) {
        for slot in shared.slots.iter_mut() {
            if slot.state == WorkerState::NoExtension && slot.pid == 0 {
                self.no_extension.insert(slot.database, slot.generation);
                *slot = Default::default();
            }
        }
    }

    /// Takes a slot for `database` when it needs a worker and has none.
    fn reserve_slot(&mut self, database: u32) -> Reserve {
        let mut shared = SHARED.exclusive();
        self.read_creations(&shared);
        self.collect_no_extension(&mut shared);
        if self.lacks_extension(database) {
            return Reserve::NotNeeded;
        }
        self.no_extension.remove(&database);
        if let Some(slot) = shared.slot_of_mut(database) {
            if slot.state != WorkerState::Backoff {
                return Reserve::NotNeeded;
            }
            if slot.retry_at > crate::shared::clock::unix_now() {
                return Reserve::BackingOff(slot.retry_at);
            }
            slot.state = WorkerState::Starting;
            return Reserve::Reserved {
                failures: slot.failures,
            };
        }
        let starting = Slot {
            database,
            state: WorkerState::Starting,
            ..Default::default()
        };
        if shared.take_free_slot(starting) {
            return Reserve::Reserved { failures: 0 };
        }
        let settling = shared.slots.iter().any(|s| {
            matches!(
                s.state,
                WorkerState::Starting | WorkerState::NoExtension | WorkerState::Dropping
            )
        });
        Reserve::Full { settling }
    }

    fn start(&mut self, db: &Database, failures: u32) {
        match start_worker(db) {
            Ok(()) => {
                self.starting.push((db.oid, Instant::now()));
                self.warned.remove(&db.oid);
                self.no_slot.remove(&db.oid);
                if failures > 0 {
                    log!(
                        "session_reaper: starting the worker for database \"{}\" again after {} error exits in a row (the last waited {} s)",
                        db.name,
                        failures,
                        crate::shared::shmem::backoff(failures).as_secs()
                    );
                }
            }
            Err(reason) => {
                release_reserved(db.oid);
                if self.warned.insert(db.oid) {
                    pgrx::warning!(
                        "session_reaper: could not start a worker for database \"{}\": {reason}",
                        db.name
                    );
                }
            }
        }
    }

    /// Says once per database that it gets no worker because every slot is taken by databases
    /// that have the extension.
    fn warn_no_slot(&mut self, db: &Database) {
        if self.no_slot.insert(db.oid) {
            pgrx::warning!(
                "session_reaper: database \"{}\" gets no worker: all {MAX_WORKERS} worker slots are taken by databases with session_reaper (drop the extension where it is not needed, or list the databases to reap in reaper.database_names)",
                db.name
            );
        }
    }
}

fn release_reserved(database: u32) {
    if let Some(slot) = SHARED.exclusive().slot_of_mut(database) {
        if slot.pid == 0 {
            *slot = Default::default();
        }
    }
}

fn start_worker(db: &Database) -> Result<(), String> {
    BackgroundWorkerBuilder::new(&format!("session_reaper worker for {}", db.name))
        .set_type("session_reaper worker")
        .set_library("session_reaper")
        .set_function("session_reaper_worker_main")
        .set_argument(Some(pg_sys::Datum::from(db.oid)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .map(|_| ())
        .map_err(|_| {
            // The only way load_dynamic fails: every max_worker_processes slot is taken
            // (running out of our own MAX_WORKERS slots is reserve_slot's case).
            "no background worker slot is free: raise max_worker_processes (retried every minute)"
                .to_string()
        })
}

/// Databases that accept connections and are not templates, read from pg_database.
fn list_databases() -> Vec<Database> {
    let mut out = Vec::new();
    // SAFETY: a catalog heap scan inside a transaction, as autovacuum's launcher does.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = (header as *const u8).add((*header).t_hoff as usize)
                as *const pg_sys::FormData_pg_database;
            // datconnlimit -2 marks a database whose DROP DATABASE failed part-way: no one
            // may connect to it.
            if (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2 {
                let name = CStr::from_ptr((*form).datname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                out.push(Database {
                    oid: (*form).oid.to_u32(),
                    name,
                });
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}
