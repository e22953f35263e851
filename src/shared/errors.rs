//! errors.rs — every way a user's input or a target can be wrong, each with its SQLSTATE, a
//! message that names the object and a hint that says the fix.
//!
//! SQL-facing functions raise these as Postgres ERRORs; the worker logs them as WARNINGs and
//! records them in the run history, so both speak with the same words.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::PgTryBuilder;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq)]
pub enum ReaperError {
    /// The relation exists but is not something rows can be deleted from.
    NotATable {
        table: String,
        kind: &'static str,
    },
    /// A registered target whose table was dropped.
    TableMissing {
        target: String,
    },
    ColumnMissing {
        table: String,
        column: String,
    },
    WrongColumnType {
        table: String,
        column: String,
        type_name: String,
    },
    NotOwner {
        table: String,
        action: &'static str,
    },
    NotRegistered {
        table: String,
    },
    BadBatchSize {
        table: String,
        batch_size: i32,
    },
    NegativeInterval {
        table: String,
        option: &'static str,
    },
    BadSchedule {
        table: String,
        schedule: String,
        reason: String,
    },
    BadTimezone {
        table: String,
        timezone: String,
    },
    TimezoneNotApplicable {
        table: String,
        column: String,
    },
    BadPredicate {
        table: String,
        reason: String,
        code: PgSqlErrorCode,
    },
    UnknownAction {
        table: String,
        action: String,
    },
    /// An action that needs an option it was not given (archive_table, update_set, predicate).
    ActionNeeds {
        table: String,
        action: &'static str,
        option: &'static str,
    },
    /// An option given for an action that does not use it.
    OptionUnused {
        table: String,
        action: String,
        option: &'static str,
    },
    /// drop_partitions with a predicate: a dropped partition takes every row with it.
    PredicateWithDrop {
        table: String,
    },
    NotRangePartitioned {
        table: String,
        column: String,
        reason: String,
    },
    ArchiveMissing {
        table: String,
    },
    ArchiveMismatch {
        table: String,
        archive: String,
        reason: String,
    },
    ArchiveNoInsert {
        table: String,
        archive: String,
        owner: String,
    },
    BadUpdateSet {
        table: String,
        reason: String,
        code: PgSqlErrorCode,
    },
    /// An update that left rows matching the dead condition: every run would update them again.
    UpdateRepeats {
        table: String,
        rows: i64,
    },
    BadMaxRows {
        max_rows: i64,
    },
    /// Batches that pick dead rows but remove none of them (a trigger or policy keeps them).
    NothingRemoved {
        table: String,
    },
    /// A step that went on after its statement timeout's cancel: the worker was stopped.
    Runaway {
        table: String,
        timeout: std::time::Duration,
    },
    /// A Citus table with copies on several nodes: node-local deletes would split the copies.
    CitusReplicated {
        table: String,
    },
    /// A Citus table with an action other than delete.
    CitusAction {
        table: String,
        action: String,
    },
    /// A registry call on a distributed table inside a transaction block on the coordinator.
    CitusInTransaction {
        table: String,
    },
    /// Citus' shard metadata lock could not be taken (other than by a timeout).
    CitusShardLock {
        shard: i64,
        code: PgSqlErrorCode,
        message: String,
    },
    /// A Citus worker node refused a registration the coordinator repeats there.
    CitusNode {
        node: String,
        error: String,
    },
    /// A column of type timestamp/date whose target has no time zone recorded.
    TimezoneMissing {
        table: String,
        column: String,
    },
    /// The extension's SQL objects are of another version than the loaded library.
    OldVersion {
        installed: String,
    },
    /// A NULL where the function has no meaning for one (issue 17 item 13).
    NullArgument {
        function: &'static str,
        argument: &'static str,
    },
    /// A DROP of a table that a remaining target archives its rows into (issue 17 item 6).
    ArchiveInUse {
        table: String,
        archive: String,
    },
    /// DDL on a target's table left its rule unable to run: the target was disabled
    /// (issue 17 item 15). `reason` is the check that failed; `rule` the registration call
    /// that made the target, to edit with the new names.
    DisabledByDdl {
        table: String,
        rule: String,
        reason: Box<ReaperError>,
    },
}

/// What Postgres is told of one error: its SQLSTATE, its message and its hint.
struct Parts {
    code: PgSqlErrorCode,
    message: String,
    hint: String,
}

fn parts(code: PgSqlErrorCode, message: String, hint: impl Into<String>) -> Parts {
    Parts {
        code,
        message,
        hint: hint.into(),
    }
}

/// The hint of an update that needs (or lacked) a predicate the update makes false.
const PREDICATE_THE_UPDATE_MAKES_FALSE: &str = "Pass a predicate that the update makes false, such as predicate => 'ended_at IS NULL' with update_set => 'ended_at = expires_at'.";

impl ReaperError {
    /// Each error's SQLSTATE, message and hint, written together: one arm per error.
    fn parts(&self) -> Parts {
        use PgSqlErrorCode::*;
        match self {
            Self::NotATable { table, kind } => parts(
                ERRCODE_WRONG_OBJECT_TYPE,
                format!("\"{table}\" is a {kind}, not a table: session_reaper can only reap tables"),
                "Register the table the view or foreign table reads from.",
            ),
            Self::TableMissing { target } => parts(
                ERRCODE_UNDEFINED_TABLE,
                format!("the table of target {target} no longer exists"),
                format!("Remove the target with: SELECT reaper_unregister({target});"),
            ),
            Self::ColumnMissing { table, column } => parts(
                ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{column}\" of table \"{table}\" does not exist"),
                format!(
                    "Name the expiry column: SELECT reaper_register('{table}', 'expires_at_column');"
                ),
            ),
            Self::WrongColumnType { table, column, type_name } => parts(
                ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "column \"{column}\" of table \"{table}\" has type {type_name}, which cannot hold an expiry time"
                ),
                "Use a timestamptz, timestamp, date, or integer/bigint epoch-seconds column.",
            ),
            Self::NotOwner { table, action } => parts(
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("must be owner of table \"{table}\" to {action} it"),
                "Connect as the table's owner, a member of its owning role, or a superuser.",
            ),
            Self::NotRegistered { table } => parts(
                ERRCODE_UNDEFINED_OBJECT,
                format!("table \"{table}\" is not registered with session_reaper"),
                format!("Register it first: SELECT reaper_register('{table}');"),
            ),
            Self::BadBatchSize { table, batch_size } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "invalid batch_size {batch_size} for table \"{table}\": must be a positive number of rows"
                ),
                "Pass a positive batch_size, or NULL to use reaper.batch_size.",
            ),
            Self::NegativeInterval { table, option } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid {option} for table \"{table}\": must not be negative"),
                "Pass a positive interval such as '1 hour'.",
            ),
            Self::BadSchedule { table, schedule, reason } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid schedule \"{schedule}\" for table \"{table}\": {reason}"),
                "Use an interval such as '15 min', or a 5-field cron expression in UTC such as '0 4 * * *'.",
            ),
            Self::BadTimezone { table, timezone } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "invalid timezone \"{timezone}\" for table \"{table}\": time zone not recognized"
                ),
                "Use a name from pg_timezone_names, such as 'UTC' or 'America/New_York'.",
            ),
            Self::TimezoneNotApplicable { table, column } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "timezone does not apply to column \"{column}\" of table \"{table}\": its values are already absolute times"
                ),
                "Omit timezone: it is needed only for timestamp without time zone and date columns.",
            ),
            Self::BadPredicate { table, reason, code } => parts(
                *code,
                format!("invalid predicate for table \"{table}\": {reason}"),
                "The predicate must be one boolean SQL expression over the table's columns, such as 'NOT is_pinned'.",
            ),
            Self::UnknownAction { table, action } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid action \"{action}\" for table \"{table}\""),
                "Use one of: delete, archive, drop_partitions, update.",
            ),
            Self::ActionNeeds { table, action, option } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("action \"{action}\" for table \"{table}\" needs {option}"),
                match *option {
                    "archive_table" => "Pass archive_table => 'a_table_with_the_same_columns'.",
                    "update_set" => {
                        "Pass update_set => 'ended_at = expires_at', a SET list for the dead rows."
                    }
                    _ => PREDICATE_THE_UPDATE_MAKES_FALSE,
                },
            ),
            Self::OptionUnused { table, action, option } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{option} does not apply to action \"{action}\" (table \"{table}\")"),
                "Leave the option out, or choose the action that uses it.",
            ),
            Self::PredicateWithDrop { table } => parts(
                ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "action \"drop_partitions\" for table \"{table}\" cannot take a predicate: dropping a partition removes every row in it"
                ),
                "Use action => 'delete' to reap by predicate, or register without one.",
            ),
            Self::NotRangePartitioned { table, column, reason } => parts(
                ERRCODE_WRONG_OBJECT_TYPE,
                format!(
                    "action \"drop_partitions\" needs table \"{table}\" range-partitioned by column \"{column}\": {reason}"
                ),
                format!(
                    "Partition the table with PARTITION BY RANGE ({column}) (as pg_partman's create_parent does), or use action => 'delete'."
                ),
            ),
            Self::ArchiveMissing { table } => parts(
                ERRCODE_UNDEFINED_TABLE,
                format!("the archive table of target \"{table}\" no longer exists"),
                format!(
                    "Register it again with an archive table: SELECT reaper_register('{table}', action => 'archive', archive_table => '...');"
                ),
            ),
            Self::ArchiveMismatch { table, archive, reason } => parts(
                ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "archive table \"{archive}\" cannot take the rows of table \"{table}\": {reason}"
                ),
                format!(
                    "Give the archive table every column of \"{table}\" with the same type, for example: CREATE TABLE {archive} (LIKE {table});"
                ),
            ),
            Self::ArchiveNoInsert { table, archive, owner } => parts(
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "role \"{owner}\", owner of table \"{table}\", may not insert into archive table \"{archive}\""
                ),
                format!("GRANT INSERT ON {archive} TO {owner};"),
            ),
            Self::BadUpdateSet { table, reason, code } => parts(
                *code,
                format!("invalid update_set for table \"{table}\": {reason}"),
                "update_set is the list that follows SET in an UPDATE, such as 'ended_at = expires_at'.",
            ),
            Self::UpdateRepeats { table, rows } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "update_set of table \"{table}\" left {rows} rows still matching: every run would update them again"
                ),
                PREDICATE_THE_UPDATE_MAKES_FALSE,
            ),
            Self::BadMaxRows { max_rows } => parts(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid max_rows {max_rows}: must be a positive number of rows"),
                "Pass a positive max_rows, or NULL for no limit.",
            ),
            Self::NothingRemoved { table } => parts(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "batches on table \"{table}\" pick dead rows but remove none of them: the run is stopped"
                ),
                "Look for a BEFORE DELETE (or UPDATE) trigger that returns NULL, or a row-level security policy for DELETE narrower than the one for SELECT, on the table; or narrow the target's predicate to the rows that may go.",
            ),
            Self::Runaway { table, timeout } => parts(
                ERRCODE_QUERY_CANCELED,
                format!(
                    "target \"{table}\" is disabled: its batch went on {} s past reaper.statement_timeout ({} s), so the worker was stopped",
                    crate::shared::settings::RUNAWAY_GRACE.as_secs(),
                    timeout.as_secs()
                ),
                format!(
                    "Code of the table's owner (a trigger, the predicate, a function they call) caught the statement timeout's cancel and went on. Fix it, then: SELECT reaper_enable('{table}', true);"
                ),
            ),
            Self::CitusReplicated { table } => parts(
                ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "table \"{table}\" is a Citus table with a copy of its rows on more than one node: session_reaper reaps only tables whose shards each have one placement"
                ),
                "Reap a reference table with one DELETE through the coordinator (from pg_cron), or distribute the table with citus.shard_replication_factor = 1.",
            ),
            Self::CitusAction { table, action } => parts(
                ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "action \"{action}\" is not supported for Citus table \"{table}\": only action \"delete\" is"
                ),
                "Register it with action => 'delete'.",
            ),
            Self::CitusInTransaction { table } => parts(
                ERRCODE_ACTIVE_SQL_TRANSACTION,
                format!(
                    "a session_reaper call on Citus table \"{table}\" cannot run inside a transaction block: the worker nodes apply it at once"
                ),
                "Run it on its own, outside BEGIN ... COMMIT.",
            ),
            Self::CitusShardLock {
                shard,
                code,
                message,
            } => parts(
                *code,
                format!("locking Citus shard {shard}: {message}"),
                "Check that the Citus extension is at the version its library expects (ALTER EXTENSION citus UPDATE).",
            ),
            Self::CitusNode { node, error } => parts(
                ERRCODE_CONNECTION_FAILURE,
                format!("Citus worker node {node} did not apply the change: {error}"),
                "Make sure the node is up and sees the table (a table distributed in the same transaction is not visible to the nodes until it commits), then run the same call again: it is applied on every node anew.",
            ),
            Self::TimezoneMissing { table, column } => parts(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "target \"{table}\" has no timezone recorded for its column \"{column}\", which holds wall-clock times"
                ),
                format!(
                    "Register it again with the zone the application writes in: SELECT reaper_register('{table}', timezone => 'UTC');"
                ),
            ),
            Self::OldVersion { installed } => parts(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "extension \"session_reaper\" is at version {installed} in this database, but the loaded library is version {}",
                    crate::shared::LIBRARY_VERSION
                ),
                "Update it: ALTER EXTENSION session_reaper UPDATE;",
            ),
            Self::NullArgument { function, argument } => parts(
                ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("{argument} must not be NULL in {function}"),
                null_hint(argument),
            ),
            Self::ArchiveInUse { table, archive } => parts(
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!(
                    "cannot drop table \"{archive}\": session_reaper's target \"{table}\" archives its dead rows into it"
                ),
                format!(
                    "Unregister the target first (SELECT reaper_unregister('{table}');), or register it again with another archive table (SELECT reaper_register('{table}', action => 'archive', archive_table => '...');), or drop \"{table}\" in the same command."
                ),
            ),
            // The failed check's SQLSTATE and message; the hint is how to enable it again.
            Self::DisabledByDdl { table, rule, reason } => parts(
                reason.sqlstate(),
                format!(
                    "session_reaper disabled the target of table \"{table}\": {}",
                    reason.message()
                ),
                format!(
                    "Register the table again with the new column names, which enables the target again; its rule was: {rule}"
                ),
            ),
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        self.parts().code
    }

    pub fn message(&self) -> String {
        self.parts().message
    }

    /// Every error has a hint; an `Option` for callers that print one only when there is one.
    pub fn hint(&self) -> Option<String> {
        Some(self.parts().hint)
    }

    fn report(&self) -> ErrorReport {
        let Parts {
            code,
            message,
            hint,
        } = self.parts();
        ErrorReport::new(code, message, "session_reaper").set_hint(hint)
    }

    /// Raises this error as a Postgres ERROR; nothing after this runs.
    pub fn raise(&self) -> ! {
        self.report().report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    /// Reports this error as a WARNING, with its SQLSTATE and hint; the caller goes on.
    pub fn warn(&self) {
        self.report().report(PgLogLevel::WARNING);
    }
}

/// What to pass instead of NULL, for each argument that may not be NULL.
fn null_hint(argument: &str) -> &'static str {
    match argument {
        "target" => "Name the table, such as 'public.sessions'.",
        "column" => "Name the expiry column, or leave the argument out for expires_at.",
        "action" => {
            "Use one of delete, archive, drop_partitions, update, or leave the argument out for delete."
        }
        _ => "Pass true or false, or leave the argument out for true.",
    }
}

/// Unwraps a result of ours, raising the error as a Postgres ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, ReaperError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}

/// Runs `f`, turning a Postgres ERROR raised inside it into its SQLSTATE and message. Callers
/// raise an ERROR of their own afterwards, so the transaction is aborted and whatever the failed
/// step held is released by Postgres as usual.
pub fn catch_pg_error<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, (PgSqlErrorCode, String)> {
    PgTryBuilder::new(|| Ok(f()))
        .catch_others(|error| {
            let report = match &error {
                CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            Err((report.sql_error_code(), report.message().to_string()))
        })
        .execute()
}
