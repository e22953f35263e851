//! What every layer uses: settings, errors, SQL text, running as another role with settings
//! that end with the block, transactions, shared memory, and the hooks every backend runs.

/// The version of the extension's SQL objects this library is built for.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod clock;
pub mod errors;
pub mod hooks;
pub mod security;
pub mod settings;
pub mod shmem;
pub mod sql;
pub mod txn;
