//! predicate.rs — checking a target's extra SQL condition before it is ever stored.
//!
//! The predicate is SQL text that the reaper splices into its DELETE as
//! `AND ((<predicate>) IS TRUE)`. Two checks make that safe:
//! 1. Shape: Postgres' own parser must read `SELECT WHERE (<predicate>) IS TRUE` as exactly one
//!    SELECT whose only clause is that one IS TRUE test. Text that closes the parenthesis early
//!    (`true) OR (true`, `true); DROP TABLE x; SELECT (1`) parses to something else and is refused,
//!    so the predicate can never widen the expiry condition or add a statement.
//! 2. Meaning: the condition is planned against the table as the table's owner, which catches
//!    unknown columns, wrong types and objects the owner may not read.

use crate::shared::errors::{catch_pg_error, ReaperError};
use crate::shared::security::as_role;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CString;

/// Checks `predicate` against the table `qualified` (quoted `schema.table`) owned by `owner`,
/// planning it with `search_path` already set by the caller.
pub fn validate(
    table: &str,
    qualified: &str,
    owner: pg_sys::Oid,
    predicate: &str,
) -> Result<(), ReaperError> {
    let bad = |(code, reason): (PgSqlErrorCode, String)| ReaperError::BadPredicate {
        table: table.to_string(),
        reason,
        code,
    };
    let syntax = |reason: &str| bad((PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, reason.to_string()));
    if predicate.trim().is_empty() {
        return Err(syntax("it is empty"));
    }
    if !parses_as_one_condition(predicate).map_err(&bad)? {
        return Err(syntax("it is not a single SQL expression"));
    }
    plans_as(
        owner,
        &format!("SELECT 1 FROM {qualified} WHERE ({predicate}) IS TRUE"),
    )
    .map_err(&bad)
}

/// Plans `sql` as `owner`, which catches unknown columns, wrong types and objects the owner
/// may not read; the error is returned, not raised.
pub(crate) fn plans_as(owner: pg_sys::Oid, sql: &str) -> Result<(), (PgSqlErrorCode, String)> {
    catch_pg_error(|| {
        as_role(owner, || {
            Spi::connect(|client| client.prepare(sql, &[]).map(|_| ()))
                .expect("prepare raises its errors as Postgres errors")
        })
    })
}

/// Whether Postgres' parser reads `sql` as exactly one statement of node type `tag` that
/// passes `check`; the parser's error for text that does not parse.
pub(crate) fn parses_as<T>(
    sql: &CString,
    tag: pg_sys::NodeTag,
    check: impl FnOnce(&T) -> bool,
) -> Result<bool, (PgSqlErrorCode, String)> {
    catch_pg_error(std::panic::AssertUnwindSafe(|| unsafe {
        // SAFETY: raw_parse reads a valid C string and returns a palloc'd parse tree, which is
        // only read here, within the current memory context; `tag` says the node is a T.
        let list = raw_parse(sql);
        if list.is_null() || (*list).length != 1 {
            return false;
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        pgrx::is_a(stmt, tag) && check(&*(stmt as *mut T))
    }))
}

/// True when the parser sees exactly `SELECT WHERE <one IS TRUE test>`.
fn parses_as_one_condition(predicate: &str) -> Result<bool, (PgSqlErrorCode, String)> {
    let sql = CString::new(format!("SELECT WHERE ({predicate}) IS TRUE")).map_err(|_| {
        (
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "it contains a NUL byte".to_string(),
        )
    })?;
    parses_as(
        &sql,
        pg_sys::NodeTag::T_SelectStmt,
        |select: &pg_sys::SelectStmt| {
            let only_where = select.distinctClause.is_null()
                && select.intoClause.is_null()
                && select.targetList.is_null()
                && select.fromClause.is_null()
                && select.groupClause.is_null()
                && select.havingClause.is_null()
                && select.windowClause.is_null()
                && select.valuesLists.is_null()
                && select.sortClause.is_null()
                && select.limitOffset.is_null()
                && select.limitCount.is_null()
                && select.lockingClause.is_null()
                && select.withClause.is_null()
                && select.op == pg_sys::SetOperation::SETOP_NONE;
            let test = select.whereClause;
            // SAFETY: a BooleanTest node is read only after its tag says it is one.
            only_where
                && unsafe {
                    pgrx::is_a(test, pg_sys::NodeTag::T_BooleanTest)
                        && (*(test as *mut pg_sys::BooleanTest)).booltesttype
                            == pg_sys::BoolTestType::IS_TRUE
                }
        },
    )
}

/// Postgres' raw parser on one string; its tree lives in the current memory context.
pub(crate) unsafe fn raw_parse(sql: &CString) -> *mut pg_sys::List {
    pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_valid_predicate_with_parentheses_and_strings_is_kept() {
        sessions_table();
        run("SELECT reaper_register('sessions', predicate => $$(NOT pinned) AND token <> ')'$$)");
        assert_eq!(
            count("SELECT count(*) FROM reaper_targets WHERE predicate IS NOT NULL"),
            1
        );
    }
}
