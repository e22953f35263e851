//! cluster.rs — on a Citus coordinator, the registry calls for a distributed table are
//! repeated on every worker node, which reaps its own shards (reap/citus.rs).
//!
//! The repeat goes through Citus' `run_command_on_workers`, as the calling role, so each node
//! checks the caller's rights itself. Each node commits on its own: a node that fails makes the
//! call fail here (rolling back the coordinator's change) and the same call, run again, brings
//! every node in line, since registering is idempotent. A node added later gets the table's
//! target when `reaper_register` is run again on the coordinator.

use crate::reap::citus::{self, Placement};
use crate::shared::errors::ReaperError;
use crate::shared::sql::{ext_schema, quote_literal};
use pgrx::prelude::*;

/// Whether a change to the target of `relid` is to be repeated on the worker nodes: this node
/// is the coordinator and the table is sharded.
pub fn repeats(relid: pg_sys::Oid) -> bool {
    citus::is_coordinator() && citus::placement(relid) == Placement::Sharded
}

/// Runs `call(schema, table)` — a query over `schema.reaper_stats()` naming the table as a
/// literal — on every worker node when [`repeats`] holds, and returns each node's result. The
/// query runs under the caller's search_path there, so it names every function, operator and
/// type with its schema (see [`target_is`]).
pub fn on_workers_for(relid: pg_sys::Oid, call: impl Fn(&str, &str) -> String) -> Vec<String> {
    if !repeats(relid) {
        return Vec::new();
    }
    // Each node commits the repeat at once: inside a transaction block that could still roll
    // back, the nodes would keep a change the coordinator dropped (as VACUUM, such a call runs
    // only on its own).
    // SAFETY: reads this backend's transaction state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        ReaperError::CitusInTransaction {
            table: crate::shared::sql::relation_name(relid),
        }
        .raise();
    }
    let table = quote_literal(&crate::shared::sql::relation_name(relid));
    on_workers(&call(&ext_schema(), &table))
}

/// The sum of the integers the worker nodes returned.
pub fn sum(results: &[String]) -> i64 {
    results.iter().filter_map(|r| r.parse::<i64>().ok()).sum()
}

/// Runs `command` on every active worker node through Citus, as the current user; each node
/// commits it on its own. Fails with the first node's error, naming the node: the caller's
/// change then rolls back here, and running the same call again brings every node in line.
pub fn on_workers(command: &str) -> Vec<String> {
    let rows = Spi::connect(|client| {
        client
            .select(
                "SELECT nodename || ':' || nodeport, success, result
                   FROM pg_catalog.run_command_on_workers($1) ORDER BY 1",
                None,
                &[command.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<bool>(2)?.unwrap_or(false),
                    row.get::<String>(3)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .expect("running a command on the Citus workers");
    rows.into_iter()
        .map(|(node, ok, result)| match ok {
            true => result,
            false => ReaperError::CitusNode {
                node,
                error: result,
            }
            .raise(),
        })
        .collect()
}

/// `target = <table>` with the operator and type named by schema, for the queries sent to the
/// worker nodes: a `count(void)` or `=(regclass, regclass)` planted on the caller's path there
/// would otherwise be chosen over the built-in, and run as the caller.
pub fn target_is(table: &str) -> String {
    format!("target OPERATOR(pg_catalog.=) {table}::pg_catalog.regclass")
}
