//! hooks.rs — how ordinary backends tell the reaper's processes about changes, at the moment
//! they commit:
//! - CREATE EXTENSION session_reaper: the launcher looks for workers to start;
//! - DROP EXTENSION, and reaper_register/unregister/enable/wake: the database's worker wakes
//!   up (and leaves, when the extension is gone);
//! - DROP DATABASE: the database's worker is stopped first, so the drop does not fail with
//!   "database is being accessed by other users" — but only when the drop will happen: the
//!   checks Postgres makes before it looks for other sessions (transaction block, owner,
//!   template, current database) are made first, so a refused drop touches no worker. A drop
//!   that fails later (other sessions connected) takes its mark back when it aborts, and the
//!   worker is started again at once.
//!
//! Requests are kept in backend-local flags and acted on by a transaction callback at commit
//! (a worker woken before the commit would see the old state); an abort drops them.

use crate::shared::shmem::{self, Slot, WorkerState, SHARED};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const WAKE_WORKER: u8 = 1;
const RESCAN: u8 = 2;

/// What this backend will tell the reaper when its transaction commits.
static PENDING: AtomicU8 = AtomicU8::new(0);

/// The database this backend's DROP DATABASE marked as Dropping (0: none), until the
/// transaction ends.
static DROPPING: AtomicU32 = AtomicU32::new(0);

/// How long DROP DATABASE waits for the database's worker to leave.
const STOP_WAIT: Duration = Duration::from_secs(5);

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

mod raw {
    // Postgres' own utility processing, as the C symbol a hook chain calls.
    use pgrx::pg_sys;
    extern "C-unwind" {
        #[allow(clippy::too_many_arguments)]
        pub fn standard_ProcessUtility(
            pstmt: *mut pg_sys::PlannedStmt,
            query: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
    }
}

/// Installs the hooks; called from `_PG_init` in every backend.
pub fn init() {
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
    }
}

/// Asks for this database's worker to wake when the current transaction commits.
pub fn wake_worker_at_commit() {
    PENDING.fetch_or(WAKE_WORKER, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            let pending = PENDING.swap(0, Ordering::Relaxed);
            let database = pg_sys::MyDatabaseId.to_u32();
            if pending & RESCAN != 0 {
                shmem::request_rescan(database);
            }
            if pending & WAKE_WORKER != 0 {
                shmem::wake_worker(database);
            }
            // The database is gone: the launcher frees its slot.
            if DROPPING.swap(0, Ordering::Relaxed) != 0 {
                shmem::ask_launcher_to_look();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            PENDING.store(0, Ordering::Relaxed);
            // The drop failed (other sessions, a cancel): the database keeps its worker.
            let dropping = DROPPING.swap(0, Ordering::Relaxed);
            if dropping != 0 {
                shmem::cancel_dropping(dropping);
            }
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let stmt = (*pstmt).utilityStmt;
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
        let top_level = context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL;
        stop_worker_before_drop((*(stmt as *mut pg_sys::DropdbStmt)).dbname, top_level);
    }
    // Only a statement that changes session_reaper, and only once it has succeeded: a refused
    // or no-op one (IF NOT EXISTS of an installed extension) by any role asks for nothing.
    let about_us = names_session_reaper(stmt);
    let installed_before = about_us && session_reaper_installed();
    let next = PREV_PROCESS_UTILITY.unwrap_or(raw::standard_ProcessUtility);
    // An ERROR inside becomes a Rust panic here, and Postgres' again at our #[pg_guard].
    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
        next(
            pstmt,
            query,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        )
    });
    if !about_us {
        return;
    }
    let installed_after = session_reaper_installed();
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_CreateExtensionStmt) {
        if !installed_before && installed_after {
            PENDING.fetch_or(RESCAN, Ordering::Relaxed);
        }
    } else if pgrx::is_a(stmt, pg_sys::NodeTag::T_AlterExtensionStmt)
        || (installed_before && !installed_after)
    {
        // After DROP EXTENSION the worker leaves; after ALTER EXTENSION UPDATE it may start.
        wake_worker_at_commit();
    }
}

/// Whether `stmt` is CREATE or ALTER EXTENSION of session_reaper, or a DROP EXTENSION.
unsafe fn names_session_reaper(stmt: *mut pg_sys::Node) -> bool {
    let ours = |name: *const std::ffi::c_char| {
        !name.is_null() && CStr::from_ptr(name).to_bytes() == b"session_reaper"
    };
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_CreateExtensionStmt) {
        return ours((*(stmt as *mut pg_sys::CreateExtensionStmt)).extname);
    }
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_AlterExtensionStmt) {
        return ours((*(stmt as *mut pg_sys::AlterExtensionStmt)).extname);
    }
    // DROP EXTENSION: whether it dropped session_reaper is seen after it ran.
    pgrx::is_a(stmt, pg_sys::NodeTag::T_DropStmt)
        && (*(stmt as *mut pg_sys::DropStmt)).removeType == pg_sys::ObjectType::OBJECT_EXTENSION
}

/// Whether session_reaper is installed in the current database (as this transaction sees it).
unsafe fn session_reaper_installed() -> bool {
    pg_sys::get_extension_oid(c"session_reaper".as_ptr(), true) != pg_sys::InvalidOid
}

/// Stops the worker of the database this DROP DATABASE drops, and waits (briefly) until it is
/// gone; nothing when Postgres is going to refuse the drop.
unsafe fn stop_worker_before_drop(dbname: *const std::ffi::c_char, top_level: bool) {
    // Postgres' own first check, made here first: it raises the same ERROR Postgres would.
    pg_sys::PreventInTransactionBlock(top_level, c"DROP DATABASE".as_ptr());
    let Some(database) = droppable_by_me(dbname) else {
        return;
    };
    DROPPING.store(database.to_u32(), Ordering::Relaxed);
    let pid = mark_dropping(database.to_u32());
    if pid == 0 {
        return;
    }
    libc::kill(pid, libc::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < STOP_WAIT
        && SHARED
            .share()
            .slot_of(database.to_u32())
            .is_some_and(|slot| slot.pid == pid)
    {
        pg_sys::pg_usleep(10_000);
        pgrx::check_for_interrupts!();
    }
}

/// The database `dbname` if it exists and the current user may drop it, as Postgres' dropdb()
/// decides: the user has the privileges of its owner (a superuser has), it is not a template
/// and not the current database. None when Postgres will refuse the drop.
unsafe fn droppable_by_me(dbname: *const std::ffi::c_char) -> Option<pg_sys::Oid> {
    let database = pg_sys::get_database_oid(dbname, true);
    if database == pg_sys::InvalidOid || database == pg_sys::MyDatabaseId {
        return None;
    }
    let tuple = pg_sys::SearchSysCache1(
        pg_sys::SysCacheIdentifier::DATABASEOID as i32,
        pg_sys::Datum::from(database),
    );
    if tuple.is_null() {
        return None;
    }
    let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
    let (owner, template) = ((*form).datdba, (*form).datistemplate);
    pg_sys::ReleaseSysCache(tuple);
    (!template && pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner)).then_some(database)
}

/// Marks the database as being dropped, so the launcher starts no worker there meanwhile;
/// returns the pid of its running worker, or 0.
fn mark_dropping(database: u32) -> i32 {
    let since = crate::shared::clock::unix_now() as u64;
    let dropping = Slot {
        database,
        state: WorkerState::Dropping,
        since,
        ..Default::default()
    };
    let mut shared = SHARED.exclusive();
    if let Some(slot) = shared.slot_of_mut(database) {
        let pid = slot.pid;
        *slot = Slot { pid, ..dropping };
        return pid;
    }
    shared.take_free_slot(dropping);
    0
}
