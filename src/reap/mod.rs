//! The reap core: a target and its rule, how a run walks the table and what one batch runs,
//! the actions, and the history of runs.

pub mod action;
pub mod backlog;
pub mod batch;
pub mod citus;
pub mod cursor;
pub mod history;
pub mod partitions;
pub mod predicate;
pub mod schedule;
pub mod statement;
pub mod target;

#[cfg(any(test, feature = "pg_test"))]
pub mod action_tests;

#[cfg(any(test, feature = "pg_test"))]
pub mod cursor_tests;

#[cfg(any(test, feature = "pg_test"))]
pub mod target_tests;
