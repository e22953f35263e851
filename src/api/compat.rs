//! compat.rs — the C entry points of functions whose SQL signature changed since 0.1.0.
//!
//! After a package upgrade the new library runs under the old SQL objects until
//! `ALTER EXTENSION session_reaper UPDATE`. An old object whose arguments or result changed
//! must not reach the new code (it would read arguments that were never passed), so each
//! release gives those functions new symbols (`*_v2` in 0.2.0, `*_v3` in 0.3.0) and answers the
//! old symbols here with the error that says to update. Functions whose signature did not change raise the same error from
//! `sql::ext_schema`.

use crate::shared::errors::ReaperError;
use crate::shared::sql::installed_version;
use pgrx::prelude::*;

fn old_objects() -> ! {
    ReaperError::OldVersion {
        installed: installed_version().unwrap_or_default(),
    }
    .raise()
}

/// reaper_register of 0.1.0 (ten arguments).
#[pg_extern(sql = false)]
fn reaper_register() {
    old_objects()
}

/// reaper_purge of 0.1.0 (six result columns).
#[pg_extern(sql = false)]
fn reaper_purge() {
    old_objects()
}

/// reaper_dry_run of 0.1.0 (thirteen result columns).
#[pg_extern(sql = false)]
fn reaper_dry_run() {
    old_objects()
}

/// reaper_stats of 0.1.0 (eighteen result columns).
#[pg_extern(sql = false)]
fn reaper_stats() {
    old_objects()
}

/// reaper_next_run of 0.2.0 (two arguments).
#[pg_extern(sql = false)]
fn reaper_next_run() {
    old_objects()
}

/// reaper_wake of 0.2.0 (no argument, boolean result).
#[pg_extern(sql = false)]
fn reaper_wake() {
    old_objects()
}
