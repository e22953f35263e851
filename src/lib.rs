//! session_reaper — keeps tables of expiring rows bounded.
//!
//! This file only wires the pieces together: the modules, the extension's SQL (bootstrap
//! tables first, the hand-written function declarations last) and `_PG_init`.

use pgrx::prelude::*;

mod api;
mod errors;
mod history;
mod predicate;
mod reap;
mod registry;
mod schedule;
mod security;
mod settings;
mod sql;
mod stats;
mod target;
mod txn;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
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
