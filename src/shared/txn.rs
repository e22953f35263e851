//! txn.rs — running a step in a subtransaction so one target's failure is rolled back and
//! reported while the caller's transaction, and the other targets, carry on (what a PL/pgSQL
//! `BEGIN … EXCEPTION` block does).

use crate::shared::errors::catch_pg_error;
use pgrx::{pg_sys, PgSqlErrorCode};

/// Runs `f` in a subtransaction: committed into the caller's transaction when it succeeds,
/// rolled back (with every lock, setting and user switch it made) when it raises an ERROR,
/// whose SQLSTATE and message are returned.
pub fn in_subtransaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, (PgSqlErrorCode, String)> {
    // SAFETY: the saved memory context and resource owner belong to the enclosing transaction
    // and outlive the subtransaction; they are restored after it ends either way.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::CurrentMemoryContext = context;
    }
    let result = catch_pg_error(f);
    unsafe {
        pg_sys::CurrentMemoryContext = context;
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::CurrentMemoryContext = context;
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}

/// Runs `f` in a transaction of its own (the worker's unit of work: one batch, one history
/// write): committed when it succeeds, aborted when it raises an ERROR, whose SQLSTATE and
/// message are returned. `now()` inside is the time the transaction started.
pub fn in_transaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, (PgSqlErrorCode, String)> {
    // A cancel still pending from before (it came as the last transaction committed) was
    // meant for that one: it must not cancel this one. A SIGTERM ends the process here.
    check_for_interrupts();
    // SAFETY: called from the worker's main loop, outside any transaction.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = catch_pg_error(f);
    unsafe {
        if result.is_ok() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    result
}

/// Postgres' timeout id for statement_timeout (timeout.h, stable since 9.3); the bindings do
/// not include timeout.h.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;

extern "C-unwind" {
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
}

/// Runs `f`, code that may run code of the owner of table `relid`, with a statement timeout
/// armed, as a client backend does for each statement (a background worker's SPI calls get none
/// otherwise). Expiry cancels `f` with SQLSTATE 57014. Should the owner's code catch that cancel
/// and go on, the deadline left in the worker's slot lets the launcher stop the worker
/// (`shmem::stop_overdue_workers`). In a client's session (reaper_purge) the caller's own
/// statement_timeout already bounds the call, and is left as it is.
pub fn with_statement_timeout<R>(
    timeout: std::time::Duration,
    relid: pg_sys::Oid,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: a process-local value set once at start-up.
    if unsafe { pg_sys::MyBackendType } != pg_sys::BackendType::B_BG_WORKER {
        return f();
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as std::ffi::c_int;
    let deadline = crate::shared::clock::monotonic_now()
        + (timeout + crate::shared::settings::RUNAWAY_GRACE).as_secs_f64();
    crate::shared::shmem::set_deadline(Some((deadline, relid.to_u32())));
    // SAFETY: the statement timeout is registered by InitPostgres for every connected backend.
    unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) };
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            unsafe { disable_timeout(STATEMENT_TIMEOUT, false) };
            crate::shared::shmem::set_deadline(None);
        }
    }
    let _disarm = Disarm;
    f()
}

/// What the worker's and the launcher's loops call between transactions instead of
/// `pgrx::check_for_interrupts!()`: a SIGTERM still ends the process, but a cancel that
/// arrives outside a transaction (`pg_cancel_backend`, or a statement timeout that fired just as
/// a batch committed) has nothing left to cancel and is dropped; raised here, outside any
/// transaction, it would be an ERROR that ends the process.
pub fn check_for_interrupts() {
    // SAFETY: QueryCancelPending is set by signal handlers and cleared by this process; the
    // transaction state is this process's own.
    unsafe {
        if pg_sys::QueryCancelPending != 0 && !pg_sys::IsTransactionState() {
            pg_sys::QueryCancelPending = 0;
        }
    }
    pgrx::check_for_interrupts!();
}
