//! launcher.rs — the one static background worker: it finds the databases that may have
//! session_reaper and keeps one database worker (worker.rs) running in each.
//!
//! It connects to no database, so it blocks no DROP DATABASE and needs no database name;
//! it reads the shared catalog pg_database directly. A database worker that finds no extension
//! leaves a marker in its slot and exits; the launcher does not start it again until a backend
//! commits CREATE EXTENSION session_reaper there (hooks.rs asks for a rescan). New databases
//! are picked up by a periodic rescan.

use crate::settings;
use crate::shmem::{Slot, WorkerState, DROPPING_HOLD_SECS, SHARED};
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::collections::HashSet;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// How often the launcher looks for new databases without being asked.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// A worker slot still "starting" after this is given up and started again.
const START_TIMEOUT: Duration = Duration::from_secs(60);

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
        crate::process::handle_signals();
        pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0);
    }
    SHARED.exclusive().launcher_pid = unsafe { pg_sys::MyProcPid };
    let mut last_scan: Option<Instant> = None;
    let mut starting: Vec<(u32, Instant)> = Vec::new();
    let mut warned: HashSet<u32> = HashSet::new();
    loop {
        let asked = std::mem::take(&mut SHARED.exclusive().rescan);
        if asked || last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY) {
            last_scan = Some(Instant::now());
            start_missing_workers(&mut starting, &mut warned);
        }
        crate::process::sleep_unless(Duration::from_secs(10), || SHARED.share().rescan);
    }
}

/// Starts a worker in every database that has none, is not known to lack the extension, and is
/// allowed by `reaper.database_names`; forgets slots of databases that are gone.
fn start_missing_workers(starting: &mut Vec<(u32, Instant)>, warned: &mut HashSet<u32>) {
    let databases = list_databases();
    let wanted = settings::database_names();
    let present: HashSet<u32> = databases.iter().map(|d| d.oid).collect();
    {
        let mut shared = SHARED.exclusive();
        for slot in shared.slots.iter_mut() {
            let stale_start = slot.state == WorkerState::Starting
                && slot.pid == 0
                && starting
                    .iter()
                    .any(|(db, at)| *db == slot.database && at.elapsed() > START_TIMEOUT);
            let drop_over = slot.state == WorkerState::Dropping
                && crate::history::unix_now() as u64 > slot.since + DROPPING_HOLD_SECS;
            if slot.pid == 0 && (!present.contains(&slot.database) || stale_start || drop_over) {
                *slot = Default::default();
            }
        }
    }
    starting.retain(|(_, at)| at.elapsed() <= START_TIMEOUT);
    for db in databases {
        if !wanted.is_empty() && !wanted.contains(&db.name) {
            continue;
        }
        if !reserve_slot(db.oid) {
            continue;
        }
        match start_worker(&db) {
            Ok(()) => {
                starting.push((db.oid, Instant::now()));
                warned.remove(&db.oid);
            }
            Err(reason) => {
                release_reserved(db.oid);
                if warned.insert(db.oid) {
                    pgrx::warning!(
                        "session_reaper: could not start a worker for database \"{}\": {reason}",
                        db.name
                    );
                }
            }
        }
    }
}

/// Takes a free slot for `database` when it has none; false when it has one (running,
/// starting, or marked as lacking the extension) or no slot is free.
fn reserve_slot(database: u32) -> bool {
    let mut shared = SHARED.exclusive();
    let generation = shared.generation;
    if let Some(slot) = shared.slot_of_mut(database) {
        // Only a worker that found no extension, and may have looked before a CREATE
        // EXTENSION committed, is started again.
        let looked_too_early =
            slot.state == WorkerState::NoExtension && slot.generation < generation;
        if looked_too_early {
            *slot = Slot {
                database,
                state: WorkerState::Starting,
                ..Default::default()
            };
        }
        return looked_too_early;
    }
    shared.take_free_slot(Slot {
        database,
        state: WorkerState::Starting,
        ..Default::default()
    })
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
            if (*form).datallowconn && !(*form).datistemplate {
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
