//! ddl.rs — keeping targets true to their tables when DDL changes them (issue 17 items 6 and 15).
//!
//! A target stores its table as an OID and its column, predicate and SET list as text, so
//! Postgres records no dependency on them. Two event triggers (sql/ddl.sql) stand in for one:
//! - `sql_drop`: a dropped table's target goes with it; dropping an archive table that a
//!   remaining target uses is refused (unless the dropper may not manage that target); targets
//!   whose table lost a column are re-checked;
//! - `ddl_command_end` of ALTER TABLE and ALTER TYPE: the targets of the altered tables, and
//!   those archiving into them, are re-checked. A target that no longer checks is disabled with
//!   a WARNING, so it neither fails on every run nor deletes by a rule that now means something
//!   else.
//!
//! The two functions here read the command's objects themselves, through
//! pg_event_trigger_dropped_objects() and pg_event_trigger_ddl_commands(), which Postgres
//! answers only inside an event trigger. Called any other way they fail, so they act on nothing
//! but the DDL that fired them, and need neither SECURITY DEFINER nor a REVOKE.

use crate::reap::action::{self, Action};
use crate::reap::predicate;
use crate::reap::target::{self, Registered};
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, may_manage, with_settings};
use crate::shared::sql::{
    ext_owner, ext_schema, installed_version, pinned, quote_literal, LIBRARY_VERSION,
};
use crate::shared::txn::in_subtransaction;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::panic::AssertUnwindSafe;

/// The tables of pg_class among the objects a DROP removed: `(oid, identity, column number)`,
/// the column number 0 for a whole table.
const DROPPED: &str = "SELECT objid, object_identity, objsubid
                          FROM pg_catalog.pg_event_trigger_dropped_objects()
                         WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass";

/// reaper_forget_dropped runs in the sql_drop event trigger: it refuses to drop an archive
/// table that a remaining target uses, unregisters the targets of dropped tables (a stored OID
/// would otherwise outlive its table, and pg_dump would write it as a number that a restore may
/// give to another relation), and re-checks targets whose table lost a column.
#[pg_extern(sql = false)]
fn reaper_forget_dropped() {
    pinned(|| {
        let Some(schema) = current_schema() else {
            return;
        };
        guard_archive_drops(&schema);
        forget_dropped_tables(&schema);
        let altered = oids(&format!(
            "SELECT DISTINCT objid FROM ({DROPPED}) d WHERE objsubid > 0"
        ));
        recheck(&schema, &altered);
    })
}

/// reaper_recheck_altered runs in the ddl_command_end event trigger of ALTER TABLE and ALTER
/// TYPE (whose CASCADE renames and retypes the columns of typed tables): a renamed, dropped or
/// retyped column, a new schema or a new owner can leave a target's rule unable to run; such
/// targets are disabled.
#[pg_extern(sql = false)]
fn reaper_recheck_altered() {
    pinned(|| {
        let Some(schema) = current_schema() else {
            return;
        };
        let altered = oids(
            "WITH d AS (SELECT classid, objid FROM pg_catalog.pg_event_trigger_ddl_commands())
             SELECT objid FROM d WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass
              UNION
             SELECT c.oid FROM d
               JOIN pg_catalog.pg_type ty
                 ON (d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND ty.oid = d.objid)
                 OR (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND ty.typrelid = d.objid)
               JOIN pg_catalog.pg_class c ON c.reloftype = ty.oid",
        );
        recheck(&schema, &altered);
    })
}

/// The extension's schema, or None (with a WARNING) while its SQL objects are of another
/// version than the library: their tables may not hold what this code reads, and DDL elsewhere
/// in the database must not fail for that.
fn current_schema() -> Option<String> {
    match installed_version() {
        Some(v) if v == LIBRARY_VERSION => Some(ext_schema()),
        installed => {
            pgrx::warning!(
                "session_reaper: targets not checked after this DDL: the extension is at version {}, the library at {LIBRARY_VERSION}",
                installed.unwrap_or_default()
            );
            None
        }
    }
}

/// The OIDs a query returns, read as the extension's owner.
fn oids(query: &str) -> Vec<pg_sys::Oid> {
    as_role(ext_owner(), || {
        Spi::connect(|client| {
            client
                .select(query, None, &[])?
                .map(|row| row.get::<pg_sys::Oid>(1).map(|oid| oid.expect("objid")))
                .collect::<Result<Vec<_>, _>>()
        })
    })
    .expect("reading the event trigger's objects")
}

/// A DROP of a table that a remaining target archives into (its own table stays). A role that
/// may manage the target gets an ERROR: it can unregister the target or give it another archive
/// first. A role that may not (the archive is its table, lent with a GRANT INSERT) is not held
/// back by another role's target: the target goes, as Postgres' DROP … CASCADE takes a foreign
/// key along, with a WARNING.
fn guard_archive_drops(schema: &str) {
    let query = format!(
        "WITH d AS ({DROPPED})
         SELECT t.id, t.relid::pg_catalog.text, d.object_identity, c.relowner
           FROM {schema}.reaper_target t
           JOIN d ON d.objid = t.archive_table AND d.objsubid = 0
           JOIN pg_catalog.pg_class c ON c.oid = t.relid
          ORDER BY t.id"
    );
    let users: Vec<(i64, String, String, pg_sys::Oid)> = as_role(ext_owner(), || {
        Spi::connect(|client| -> pgrx::spi::Result<_> {
            client
                .select(&query, None, &[])?
                .map(|row| {
                    Ok((
                        row.get(1)?.expect("id"),
                        row.get(2)?.expect("relid"),
                        row.get(3)?.unwrap_or_default(),
                        row.get(4)?.expect("relowner"),
                    ))
                })
                .collect()
        })
    })
    .expect("reading reaper_target");
    for (id, table, archive, owner) in users {
        if may_manage(owner) {
            ReaperError::ArchiveInUse { table, archive }.raise();
        }
        let delete = format!("DELETE FROM {schema}.reaper_target WHERE id = $1");
        as_role(ext_owner(), || Spi::run_with_args(&delete, &[id.into()]))
            .expect("writing reaper_target");
        pgrx::warning!(
            "session_reaper: the target of table \"{table}\" is unregistered: its archive table \"{archive}\" was dropped"
        );
        crate::shared::hooks::wake_worker_at_commit();
    }
}

/// Deletes the targets of the dropped tables, with a NOTICE naming each table.
fn forget_dropped_tables(schema: &str) {
    let query = format!(
        "WITH d AS ({DROPPED})
         DELETE FROM {schema}.reaper_target t USING d
          WHERE d.objid = t.relid AND d.objsubid = 0
         RETURNING d.object_identity"
    );
    let forgotten = as_role(ext_owner(), || {
        Spi::connect_mut(|client| {
            client
                .update(&query, None, &[])?
                .map(|row| row.get::<String>(1))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .expect("writing reaper_target");
    for table in forgotten.iter().flatten() {
        pgrx::notice!("session_reaper: table \"{table}\" was dropped: its target is unregistered");
    }
    if !forgotten.is_empty() {
        crate::shared::hooks::wake_worker_at_commit();
    }
}

/// Re-checks the enabled targets of `tables`, and those archiving into them, disabling each
/// that no longer checks. The checks run as the table's owner; whatever settings the owner's
/// code changes while they run are undone when they end, for the session as well.
fn recheck(schema: &str, tables: &[pg_sys::Oid]) {
    if tables.is_empty() {
        return;
    }
    let query = format!(
        "SELECT t.relid::pg_catalog.oid, t.column_name::pg_catalog.text, t.predicate
           FROM {schema}.reaper_target t
          WHERE t.enabled AND (t.relid = ANY ($1) OR t.archive_table = ANY ($1))
          ORDER BY t.id"
    );
    type Stored = (pg_sys::Oid, String, Option<String>);
    let stored: Vec<Stored> = as_role(ext_owner(), || {
        Spi::connect(|client| {
            client
                .select(&query, None, &[tables.to_vec().into()])?
                .map(|row| {
                    Ok((
                        row.get(1)?.expect("relid"),
                        row.get(2)?.expect("column"),
                        row.get(3)?,
                    ))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .expect("reading reaper_target");
    for (relid, column, predicate) in stored {
        for registered in target::load(Some(relid)) {
            match recheck_one(&registered) {
                Ok(()) => {}
                // Privileges are not what DDL on the table changes, and a restore by pg_dump
                // runs its ALTER TABLEs before it grants them: a missing one stays an error of
                // the target's runs, reported there.
                Err(reason)
                    if reason.sqlstate() == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE => {}
                Err(reason) => {
                    // The predicate is shown only to whom reaper_targets would show it: the
                    // DDL may be another role's, on an archive table it lent.
                    let owner = registered.owner.unwrap_or(pg_sys::InvalidOid);
                    let rule = match may_manage(owner) {
                        true => rule_of(&registered.name, &column, predicate.as_deref()),
                        false => format!(
                            "SELECT reaper_register({}, ...);",
                            quote_literal(&registered.name)
                        ),
                    };
                    disable(&registered, rule, reason)
                }
            }
        }
    }
}

/// Runs the checks in a subtransaction that a failed check rolls back, so whatever the failed
/// planning left behind (locks, relcache references, settings) is released before the DDL's
/// transaction goes on; and inside a GUC nest level that is undone even when they pass.
fn recheck_one(registered: &Registered) -> Result<(), ReaperError> {
    let mut failed = None;
    let outcome = in_subtransaction(AssertUnwindSafe(|| {
        sealed_settings(|| {
            if let Err(reason) = still_valid(registered) {
                failed = Some(reason.clone());
                reason.raise();
            }
        })
    }));
    match (outcome, failed) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(reason)) => Err(reason),
        // Not a check that failed but the checking itself: say so, and leave the target as it is.
        (Err((_, message)), None) => {
            pgrx::warning!(
                "session_reaper: the target of table \"{}\" could not be re-checked: {message}",
                registered.name
            );
            Ok(())
        }
    }
}

/// The checks reaper_register makes, on the target as it is stored now: the table and column
/// (with its type) and the archive table, read by target::load; the predicate and the SET list,
/// planned as the table's owner under the target's search_path.
fn still_valid(registered: &Registered) -> Result<(), ReaperError> {
    let t = registered.target.as_ref().map_err(Clone::clone)?;
    with_settings(&[("search_path", t.search_path())], || {
        if let Some(p) = &t.predicate {
            predicate::validate(&t.name, &t.qualified(), t.owner, p)?;
        }
        if let Action::Update { set } = &t.action {
            action::check_update_set(&t.name, &t.qualified(), t.owner, set)?;
        }
        Ok(())
    })
}

/// Runs `f` in a GUC nest level that is rolled back when it ends, as Postgres' ANALYZE does for
/// index expressions: a `set_config(…, false)` in the owner's code would otherwise outlive the
/// check and stay in the session of whoever ran the DDL.
pub(crate) fn sealed_settings<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level is opened and closed around `f` in this backend; on an ERROR the
    // transaction's abort closes it.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    let result = f();
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    result
}

/// The registration call of a target's column and predicate, for a hint to edit.
fn rule_of(table: &str, column: &str, predicate: Option<&str>) -> String {
    let predicate = predicate
        .map(|p| format!(", predicate => {}", quote_literal(p)))
        .unwrap_or_default();
    format!(
        "SELECT reaper_register({}, {}{predicate}, ...);",
        quote_literal(table),
        quote_literal(column)
    )
}

/// Switches a target off, as the extension's owner, with a WARNING naming it and the reason.
fn disable(registered: &Registered, rule: String, reason: ReaperError) {
    crate::reap::target::set_enabled(registered.id, false);
    ReaperError::DisabledByDdl {
        table: registered.name.clone(),
        rule,
        reason: Box::new(reason),
    }
    .warn();
}
