//! citus.rs — tables that Citus distributes: each node reaps the shards stored on it.
//!
//! A distributed table is registered on the coordinator; the registration is repeated on every
//! worker node (`on_workers`), where the table exists as Citus' shell with the same OID-free
//! name. Every node's worker then walks the shard placements in its own group, shard by shard,
//! each as an ordinary table with the target's rule: the same batches, expiry re-check, locks
//! and timeouts, and no statement ever goes through the coordinator. The placements are read
//! afresh before each batch, so a shard moved away mid-run is left to its new node and one
//! moved in is reaped by the next run here.
//!
//! Only tables whose every shard has a single placement are reaped this way. A reference table
//! (a copy on every node) or a shard with replicas would have its copies drift apart under
//! node-local deletes, so those are refused at registration.

use crate::reap::target::Target;
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, with_settings};
use pgrx::prelude::*;

/// How Citus holds a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Not a Citus table (or no Citus here): an ordinary table.
    Local,
    /// Every shard has one placement, on some node: each node reaps its own.
    Sharded,
    /// Copies on several nodes: a reference table, or shards with replicas.
    Replicated,
}

/// Whether Citus' metadata is in this database.
pub fn installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
    )
    .expect("reading the catalog")
    .unwrap_or(false)
}

/// How Citus holds the rows of `relid`.
pub fn placement(relid: pg_sys::Oid) -> Placement {
    if !installed() {
        return Placement::Local;
    }
    let replicated = Spi::get_one_with_args::<bool>(
        "SELECT (SELECT p.repmodel = 't' OR EXISTS (
                          SELECT 1 FROM pg_catalog.pg_dist_shard s
                            JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = s.shardid
                           WHERE s.logicalrelid = p.logicalrelid
                           GROUP BY s.shardid HAVING count(*) > 1)
                   FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)",
        &[relid.into()],
    )
    .expect("reading Citus' metadata");
    match replicated {
        None => Placement::Local,
        Some(false) => Placement::Sharded,
        Some(true) => Placement::Replicated,
    }
}

/// A SQL condition on the relation OID `relid` (SQL text): whether it is a Citus table whose
/// shards each node reaps. Plain `false` when Citus is not installed, since its catalog is then
/// not there to name.
pub fn sharded_condition(relid: &str) -> String {
    match installed() {
        true => format!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
                      WHERE p.logicalrelid = {relid} AND p.repmodel <> 't'
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_shard s
                                          JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = s.shardid
                                         WHERE s.logicalrelid = p.logicalrelid
                                         GROUP BY s.shardid HAVING count(*) > 1))"
        ),
        false => "false".to_string(),
    }
}

/// Refuses what node-local reaping cannot do right: copies on several nodes, and actions other
/// than delete (an archive table would need colocated shards of its own, an update could move
/// a row's distribution key off its shard, and partitions are Citus' to drop).
pub fn check_registrable(table: &str, relid: pg_sys::Oid, action: &str) -> Result<(), ReaperError> {
    match placement(relid) {
        Placement::Local => Ok(()),
        Placement::Replicated => Err(ReaperError::CitusReplicated {
            table: table.to_string(),
        }),
        Placement::Sharded if action != "delete" => Err(ReaperError::CitusAction {
            table: table.to_string(),
            action: action.to_string(),
        }),
        Placement::Sharded => Ok(()),
    }
}

/// Whether this node is a Citus coordinator, which repeats registrations on the workers.
pub fn is_coordinator() -> bool {
    installed()
        && Spi::get_one::<bool>("SELECT groupid = 0 FROM pg_catalog.pg_dist_local_group")
            .expect("reading Citus' metadata")
            .unwrap_or(false)
}

/// The shard placements of `t` on this node at or after shard `from`, in shard order, each
/// as a target of its own (an ordinary table with `t`'s rule). A placement whose table is gone
/// (moved away or dropped since the metadata was read) is left out.
pub fn local_shards(t: &Target, from: i64) -> Vec<(i64, Target)> {
    // shard_name() leaves out the schema when it is public: read it with the table's own path.
    let path = [("search_path", t.search_path())];
    let shards = with_settings(&path, || Spi::connect(|client| {
        client
            .select(
                "SELECT s.shardid, pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid))
                   FROM pg_catalog.pg_dist_shard s
                   JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
                  WHERE s.logicalrelid = $1 AND s.shardid >= $2
                    AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
                  ORDER BY s.shardid",
                None,
                &[t.relid.into(), from.into()],
            )?
            .map(|row| Ok((row.get::<i64>(1)?.unwrap_or(0), row.get::<pg_sys::Oid>(2)?)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    }))
    .expect("reading Citus' shard placements");
    shards
        .into_iter()
        .filter_map(|(shard, relid)| Some((shard, shard_target(t, relid?)?)))
        .collect()
}

/// The first of [`local_shards`] that is still here once locked. The batch takes what a
/// write through Citus takes: the shard's metadata lock in share mode (through Citus' own
/// `lock_shard_metadata`, as the table's owner, which it requires), which a shard move or split
/// holds exclusively while it copies the shard, so no batch deletes rows a copy is reading;
/// then the table's own lock. Both wait at most `reaper.lock_timeout`. A placement gone
/// meanwhile is passed over.
pub fn next_shard(t: &Target, from: i64) -> Option<(i64, Target)> {
    local_shards(t, from).into_iter().find(|(shard, on)| {
        lock_shard(t.owner, *shard) && {
            // SAFETY: a relation lock in the current transaction.
            unsafe {
                pg_sys::LockRelationOid(on.relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE)
            };
            still_here(*shard)
        }
    })
}

/// Takes `shard`'s metadata lock in share mode; false when a move or split holds it past
/// `reaper.lock_timeout` (that shard is passed over in this run: its copy may take hours), or
/// when the shard is gone from Citus' metadata since it was read.
fn lock_shard(owner: pg_sys::Oid, shard: i64) -> bool {
    let timeout = [("lock_timeout", crate::shared::settings::lock_timeout())];
    let locked = crate::shared::txn::in_subtransaction(|| {
        with_settings(&timeout, || {
            as_role(owner, || {
                Spi::run_with_args(
                    "SELECT pg_catalog.lock_shard_metadata(5, ARRAY[$1]::pg_catalog.int8[])",
                    &[shard.into()],
                )
            })
        })
        .expect("locking the shard's metadata")
    });
    match locked {
        Ok(()) => true,
        Err((pgrx::PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, _)) => false,
        // Dropped or undistributed since its placements were read: nothing left to reap.
        Err(_) if !still_here(shard) => false,
        Err((code, message)) => ReaperError::CitusShardLock {
            shard,
            code,
            message,
        }
        .raise(),
    }
}

/// Whether `shard` still has its placement on this node, read after the locks: a move that
/// finished meanwhile took it away. Read as a writing statement does, with a snapshot of its
/// own: a read-only one would reuse the snapshot taken before the lock wait.
fn still_here(shard: i64) -> bool {
    Spi::connect_mut(|client| {
        client
            .update(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement
                                 WHERE shardid = $1
                                   AND groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))",
                None,
                &[shard.into()],
            )?
            .first()
            .get_one::<bool>()
    })
    .expect("reading Citus' shard placements")
    .unwrap_or(false)
}

/// `t`'s rule on one of its shards, read from the system caches: Citus hides shards from
/// queries on pg_class.
fn shard_target(t: &Target, relid: pg_sys::Oid) -> Option<Target> {
    // SAFETY: syscache lookups in a valid transaction; NULL when the relation is gone.
    let (table, schema) = unsafe {
        let table = pg_sys::get_rel_name(relid);
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if table.is_null() || schema.is_null() {
            return None;
        }
        (
            std::ffi::CStr::from_ptr(table)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(schema)
                .to_string_lossy()
                .into_owned(),
        )
    };
    // SAFETY: as above. Citus shards have no inheritance children, only partitions.
    let has_children = unsafe {
        pg_sys::get_rel_relkind(relid) == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char
    };
    let mut shard = t.clone();
    shard.name = format!(
        "{}.{}",
        crate::shared::sql::quote_ident(&schema),
        crate::shared::sql::quote_ident(&table)
    );
    shard.relid = relid;
    shard.schema = schema;
    shard.table = table;
    shard.has_children = has_children;
    shard.distributed = false;
    Some(shard)
}
