//! session_reaper — keeps tables of expiring rows bounded.
//!
//! This file only wires the pieces together: the modules, the extension's SQL (bootstrap
//! tables first, the hand-written function declarations last) and `_PG_init`.

use pgrx::prelude::*;

mod action;
mod api;
mod backlog;
mod compat;
mod cursor;
mod ddl;
mod errors;
mod history;
mod hooks;
mod launcher;
mod predicate;
mod process;
mod reap;
mod registry;
mod schedule;
mod security;
mod settings;
mod shmem;
mod sql;
mod stats;
mod target;
mod txn;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

#[cfg(any(test, feature = "pg_test"))]
mod action_tests;

#[cfg(any(test, feature = "pg_test"))]
mod trust_tests;

#[cfg(any(test, feature = "pg_test"))]
mod ddl_tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/api.sql", name = "api", finalize);
// The event triggers that keep targets true to their tables. They need only bootstrap's
// reaper_target, which every non-bootstrap file follows; pgrx cannot order a file after the
// `finalize` one (finalize requires every other), so this runs before api.sql, which has no
// ALTER TABLE or DROP for them to fire on.
pgrx::extension_sql_file!("../sql/ddl.sql", name = "ddl");

/// Registers the settings, shared memory, hooks and the launcher. session_reaper must be in
/// shared_preload_libraries: its workers and shared memory exist only then.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "session_reaper must be loaded via shared_preload_libraries",
            "_PG_init",
        )
        .set_hint("Add session_reaper to shared_preload_libraries in postgresql.conf and restart the server.")
        .report(pgrx::PgLogLevel::ERROR);
    }
    settings::init();
    shmem::init();
    hooks::init();
    launcher::register();
}

/// Required by `cargo pgrx test`: settings for the throwaway test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'session_reaper'"]
    }
}
