//! action.rs — what a run does with dead rows: delete them (the default), move them into an
//! archive table, update them in place (soft expiry), or drop whole partitions that hold only
//! dead rows and delete the rest.
//!
//! Every action changes rows through one data-modifying statement whose WHERE clause is the
//! cursor's batch and the target's dead-row condition (composed in statement.rs), so the expiry
//! re-check that keeps refreshed rows alive is the same for all of them.

use crate::shared::errors::ReaperError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CString;

/// A target's action, as loaded for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delete,
    /// Dead rows move into `table` (quoted `schema.table`); `columns` is the target's column
    /// list (quoted, comma-separated), copied by name.
    Archive {
        table: String,
        columns: String,
    },
    /// `set` is the SET list run on dead rows instead of deleting them.
    Update {
        set: String,
    },
    DropPartitions,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Archive { .. } => "archive",
            Self::Update { .. } => "update",
            Self::DropPartitions => "drop_partitions",
        }
    }

    /// What the action did to rows, for the log line of a run.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Delete | Self::DropPartitions => "deleted",
            Self::Archive { .. } => "archived",
            Self::Update { .. } => "updated",
        }
    }
}

/// The target's column list for an archive: every stored column, quoted, in table order.
const COLUMNS_QUERY: &str =
    "SELECT string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum)
       FROM pg_catalog.pg_attribute
      WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''";

/// Loads the archive action of `target` into `archive` (an OID, or None when its table is
/// gone), checking the archive table still fits.
pub fn load_archive(
    target: &str,
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    archive: Option<pg_sys::Oid>,
) -> Result<Action, ReaperError> {
    let archive = archive.ok_or_else(|| ReaperError::ArchiveMissing {
        table: target.to_string(),
    })?;
    check_archive(target, relid, owner, archive)?;
    let (table, columns) = Spi::get_two_with_args::<String, String>(
        &format!(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), ({COLUMNS_QUERY})
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $2"
        ),
        &[relid.into(), archive.into()],
    )
    .expect("reading the archive table");
    Ok(Action::Archive {
        table: table.unwrap_or_default(),
        columns: columns.unwrap_or_default(),
    })
}

/// The archive table must exist, be another table, hold every column of the target with the
/// same type (extra columns need a default or must allow NULL), and take the owner's INSERTs.
pub fn check_archive(
    target: &str,
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    archive: pg_sys::Oid,
) -> Result<(), ReaperError> {
    let problem = Spi::get_one_with_args::<String>(
        "WITH t AS (SELECT attnum, attname, atttypid, pg_catalog.format_type(atttypid, atttypmod) AS type
                      FROM pg_catalog.pg_attribute
                     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''),
              a AS (SELECT attname, atttypid, attnotnull, atthasdef, attgenerated
                      FROM pg_catalog.pg_attribute
                     WHERE attrelid = $2 AND attnum > 0 AND NOT attisdropped)
         SELECT (SELECT problem FROM (
         SELECT CASE
           WHEN $1 = $2 THEN 'it is the table being reaped'
           WHEN (SELECT relkind FROM pg_catalog.pg_class WHERE oid = $2) NOT IN ('r', 'p')
             THEN 'it is not a table'
           ELSE (SELECT pg_catalog.format('column \"%s\" (%s) is missing from it or has another type', t.attname, t.type)
                   FROM t LEFT JOIN a USING (attname)
                  WHERE a.atttypid IS DISTINCT FROM t.atttypid OR a.attgenerated <> ''
                  ORDER BY t.attnum LIMIT 1)
           END
         UNION ALL
         SELECT pg_catalog.format('its column \"%s\" has no default and does not allow NULL', a.attname)
           FROM a WHERE a.attnotnull AND NOT a.atthasdef AND a.attname NOT IN (SELECT attname FROM t)
         ) problems (problem)
         WHERE problem IS NOT NULL LIMIT 1)",
        &[relid.into(), archive.into()],
    )
    .expect("comparing the archive table");
    let archive_name = crate::shared::sql::relation_name(archive);
    if let Some(reason) = problem {
        return Err(ReaperError::ArchiveMismatch {
            table: target.to_string(),
            archive: archive_name,
            reason,
        });
    }
    let may_insert = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, $2, 'INSERT')",
        &[owner.into(), archive.into()],
    )
    .expect("checking the archive's privileges")
    .unwrap_or(false);
    if !may_insert {
        return Err(ReaperError::ArchiveNoInsert {
            table: target.to_string(),
            archive: archive_name,
            owner: crate::shared::sql::role_name(owner),
        });
    }
    Ok(())
}

/// Checks a SET list: Postgres' parser must read `UPDATE ONLY t SET <list>` + a new line +
/// `WHERE false` as one UPDATE whose WHERE is that constant, so the list can neither add a
/// clause nor comment out the reaper's WHERE; then it is planned as the table's owner, which
/// catches unknown columns and wrong types.
pub fn check_update_set(
    table: &str,
    qualified: &str,
    owner: pg_sys::Oid,
    set: &str,
) -> Result<(), ReaperError> {
    let bad = |(code, reason): (PgSqlErrorCode, String)| ReaperError::BadUpdateSet {
        table: table.to_string(),
        reason,
        code,
    };
    let statement = format!("UPDATE ONLY {qualified} SET {set}\n WHERE false");
    if set.trim().is_empty() || !parses_as_plain_update(&statement).map_err(bad)? {
        return Err(bad((
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "it is not a single SET list such as 'ended_at = now()'".into(),
        )));
    }
    crate::reap::predicate::plans_as(owner, &statement).map_err(bad)
}

/// Whether the parser reads `sql` as exactly one UPDATE with a constant WHERE and no FROM,
/// RETURNING or WITH; the parser's error for text that does not parse.
fn parses_as_plain_update(sql: &str) -> Result<bool, (PgSqlErrorCode, String)> {
    let sql = CString::new(sql).map_err(|_| {
        (
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "it contains a NUL byte".to_string(),
        )
    })?;
    crate::reap::predicate::parses_as(
        &sql,
        pg_sys::NodeTag::T_UpdateStmt,
        |update: &pg_sys::UpdateStmt| {
            update.fromClause.is_null()
                && !has_returning(update)
                && update.withClause.is_null()
                && is_constant(update.whereClause)
        },
    )
}

/// Whether a raw parse node is a constant: an A_Const, or (as Postgres 14 parses `false`) a
/// type cast of one.
fn is_constant(node: *mut pg_sys::Node) -> bool {
    // SAFETY: is_a reads only a node's tag; a TypeCast's fields are read after its tag says so.
    unsafe {
        pgrx::is_a(node, pg_sys::NodeTag::T_A_Const)
            || (pgrx::is_a(node, pg_sys::NodeTag::T_TypeCast)
                && pgrx::is_a(
                    (*(node as *mut pg_sys::TypeCast)).arg,
                    pg_sys::NodeTag::T_A_Const,
                ))
    }
}

/// Whether an UPDATE has a RETURNING clause (a list until 17, a clause node from 18 on).
#[cfg(not(feature = "pg18"))]
fn has_returning(update: &pg_sys::UpdateStmt) -> bool {
    !update.returningList.is_null()
}

#[cfg(feature = "pg18")]
fn has_returning(update: &pg_sys::UpdateStmt) -> bool {
    !update.returningClause.is_null()
}

/// A table range-partitioned by exactly its expiry column, or why not.
pub fn check_partitioning(
    table: &str,
    relid: pg_sys::Oid,
    column: &str,
) -> Result<(), ReaperError> {
    let (strategy, matches) = Spi::get_two_with_args::<String, bool>(
        "SELECT p.partstrat::text,
                p.partnatts = 1 AND p.partattrs[0] = (SELECT attnum FROM pg_catalog.pg_attribute
                                                       WHERE attrelid = $1 AND attname = $2)
           FROM pg_catalog.pg_partitioned_table p WHERE p.partrelid = $1",
        &[relid.into(), column.into()],
    )
    .unwrap_or((None, None));
    let reason = match (strategy.as_deref(), matches) {
        (None, _) => "it is not partitioned",
        (Some("l"), _) => "it is partitioned by LIST",
        (Some("h"), _) => "it is partitioned by HASH",
        (Some(_), Some(true)) => return Ok(()),
        (Some(_), _) => "its partition key is not that one column",
    };
    Err(ReaperError::NotRangePartitioned {
        table: table.to_string(),
        column: column.to_string(),
        reason: reason.to_string(),
    })
}
