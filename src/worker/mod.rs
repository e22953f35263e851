//! The background processes: the launcher (one per server) and the worker of each database.

pub mod database;
pub mod launcher;
pub mod pacing;
pub mod process;
pub mod runs;
