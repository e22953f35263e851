//! session_reaper — keeps tables of expiring rows bounded.
//!
//! This file only wires the pieces together: the modules, the extension's SQL (bootstrap
//! tables first, the hand-written function declarations last) and `_PG_init`.

use pgrx::prelude::*;

// The layers, top to bottom; each uses only those below it.
/// The SQL functions: registration, reaping now, stats, DDL event triggers.
mod api;
/// The reap itself: targets and their rules, the batches, their history.
mod reap;
/// What every layer uses: settings, errors, SQL text, roles and settings scopes,
/// transactions, shared memory, the hooks in every backend.
mod shared;
/// The background processes: the launcher and one worker per database.
mod worker;

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
    shared::settings::init();
    shared::shmem::init();
    shared::hooks::init();
    worker::launcher::register();
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
