//! security.rs — who may touch a target, and running code as another role or with settings that
//! end with the block.
//!
//! The SQL functions are not SECURITY DEFINER. They check the caller's rights first, then switch
//! the user id only for the exact step that needs it: the reap itself runs as the table's owner
//! (so privileges and row-level security apply to it, never a superuser's), and writes to the
//! extension's own tables run as the extension's owner. Both switches are undone when the block
//! ends, by error or not, so the caller's transaction continues as the caller.

use crate::shared::errors::ReaperError;
use pgrx::pg_sys;
use std::ffi::CString;

/// Restores the saved user id and security context when dropped (also while unwinding from an
/// ERROR, before Postgres' own abort processing resets them again).
struct UserGuard {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        // SAFETY: restoring values read from GetUserIdAndSecContext in this same backend.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// A GUC nest level: every setting changed while it is open — by us, or by code we ran, even
/// with `set_config(…, false)` or a plain `SET` — is put back when it is dropped, as Postgres
/// does around ANALYZE and index builds (`AtEOXact_GUC(false, …)`). Dropped on success and
/// while unwinding from an ERROR alike, so nothing survives the block in the caller's session.
struct SettingsGuard {
    level: i32,
}

impl SettingsGuard {
    fn open() -> Self {
        // SAFETY: opens a nest level in this backend; closed in drop.
        SettingsGuard {
            level: unsafe { pg_sys::NewGUCNestLevel() },
        }
    }
}

impl Drop for SettingsGuard {
    fn drop(&mut self) {
        // SAFETY: closes the level opened in `open`; inner levels were closed before it.
        unsafe { pg_sys::AtEOXact_GUC(false, self.level) };
    }
}

/// Runs `f` as `role`, the way `SET LOCAL ROLE` would, but scoped to `f`. The security context
/// is restricted (as autovacuum does for index expressions) so the code `f` runs — a
/// predicate, a trigger, a SET list — can neither change role back nor leave state behind,
/// and any setting it changes is put back when `f` ends.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: plain reads and writes of this backend's current user id.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    let _user = UserGuard { user, context };
    let _settings = SettingsGuard::open();
    let restricted = context
        | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
        | pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    unsafe { pg_sys::SetUserIdAndSecContext(role, restricted) };
    f()
}

/// Runs `f` with the given settings; they, and any other setting changed inside `f`, are put
/// back when `f` ends — what a function's `SET` clause does.
pub fn with_settings<R>(settings: &[(&str, String)], f: impl FnOnce() -> R) -> R {
    let _settings = SettingsGuard::open();
    for (name, value) in settings {
        set(name, value, pg_sys::GucAction::GUC_ACTION_SAVE);
    }
    f()
}

/// Sets a setting for the rest of this process's session (outside any block): the worker
/// bounds its own lock waits this way (see `worker::database`).
pub fn set_for_session(name: &str, value: &str) {
    set(name, value, pg_sys::GucAction::GUC_ACTION_SET);
}

/// Sets a setting until the current transaction ends, as `SET LOCAL` does.
pub fn set_for_transaction(name: &str, value: &str) {
    set(name, value, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// `SET name = value` at the current nest level: SAVE to be put back when it closes, LOCAL at
/// the transaction's end, SET for the session.
fn set(name: &str, value: &str, action: pg_sys::GucAction::Type) {
    let name = CString::new(name).expect("setting names have no NUL");
    let value = CString::new(value).expect("setting values have no NUL");
    // SAFETY: a SET of a user-settable setting in this backend.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// The current user may manage tables owned by `owner`: it is that role, a member of it with
/// its privileges, or a superuser.
pub fn may_manage(owner: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups in a valid transaction.
    unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner) }
}

/// Fails with a NotOwner error unless the current user may manage a table owned by `owner`.
pub fn check_owner(
    table: &str,
    owner: pg_sys::Oid,
    action: &'static str,
) -> Result<(), ReaperError> {
    if may_manage(owner) {
        Ok(())
    } else {
        Err(ReaperError::NotOwner {
            table: table.to_string(),
            action,
        })
    }
}

/// The bootstrap superuser: stands in as the owner of a target whose table is gone, so that
/// only superusers may act on it.
pub fn superuser_role() -> pg_sys::Oid {
    pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)
}
