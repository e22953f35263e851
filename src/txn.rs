//! txn.rs — running a step in a subtransaction so one target's failure is rolled back and
//! reported while the caller's transaction, and the other targets, carry on (what a PL/pgSQL
//! `BEGIN … EXCEPTION` block does).

use crate::errors::catch_pg_error;
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
