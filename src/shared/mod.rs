//! What every layer uses: settings, errors, SQL text, running as another role with settings
//! that end with the block, transactions, shared memory, and the hooks every backend runs.

pub mod clock;
pub mod errors;
pub mod hooks;
pub mod security;
pub mod settings;
pub mod shmem;
pub mod sql;
pub mod txn;
