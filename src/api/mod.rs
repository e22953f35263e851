//! The SQL API: thin `#[pg_extern]` functions that check the caller's rights and call the reap
//! core. Their SQL names, defaults and grants are in sql/api.sql and sql/ddl.sql.

pub mod cluster;
pub mod compat;
pub mod ddl;
pub mod registry;
pub mod run_now;
pub mod stats;

#[cfg(any(test, feature = "pg_test"))]
pub mod tests;

#[cfg(any(test, feature = "pg_test"))]
pub mod registry_tests;

#[cfg(any(test, feature = "pg_test"))]
pub mod trust_tests;

#[cfg(any(test, feature = "pg_test"))]
pub mod ddl_tests;
