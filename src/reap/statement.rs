//! statement.rs — the one statement a batch of rows runs, composed here from plain inputs: the
//! target's rule (its table and dead-row condition), where the cursor stands (a page range, or a
//! pick in expiry or physical order), and the action (delete, archive or update).
//!
//! The dead-row condition is part of the data-modifying statement itself, so a row refreshed
//! after the batch began is re-checked and kept, whatever the action; that re-check is written
//! so that no index can serve it (see [`recheck`]). No row lock is taken first unless the batch
//! skips locked rows: `FOR UPDATE SKIP LOCKED` writes a lock record per row, more WAL for
//! nothing (docs/design.md, "One batch").

use crate::reap::action::Action;
use crate::reap::cursor::{page_range, Cursor};
use crate::reap::target::Target;
use crate::shared::sql::{quote_ident, quote_literal};

/// The statement of the batch of at most `limit` rows of `target` that starts at `cursor`. It
/// returns (rows acted on, rows picked, the largest expiry value picked as text, rows an update
/// left matching), except a page batch that deletes, which is a plain DELETE (its row count is
/// the rows acted on); page batches pick nothing. With `skip_locked`, rows another transaction
/// holds locked are left for a later run instead of waited for.
pub fn compose(target: &Target, cursor: &Cursor, limit: i64, skip_locked: bool) -> String {
    let table = target.qualified();
    let dead = target.dead_condition();
    let recheck = recheck(target.has_children, &dead);
    let lock = if skip_locked {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    // A page batch acts on its range at once; the other walks pick rows first, by `key` in the
    // order and up to the limit that `bound` sets.
    let (key, bound) = match cursor {
        Cursor::Pages { .. } => {
            let (first, end) = cursor.pages().expect("a page cursor has pages");
            let range = page_range(first, end);
            let which = if skip_locked {
                format!("ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {range} AND {recheck}{lock}))")
            } else {
                range
            };
            let which = format!("{which} AND {recheck}");
            return match &target.action {
                // The common case, as plain as one big DELETE: its row count is the
                // statement's own (a RETURNING CTE costs more per row).
                Action::Delete | Action::DropPartitions => delete(&table, &which),
                action => format!(
                    "WITH {} SELECT count(*), 0::bigint, NULL::text, {} FROM gone",
                    gone(action, &table, &which, &dead),
                    again(action)
                ),
            };
        }
        Cursor::Expiry(from) => {
            let col = quote_ident(&target.column);
            let from = from.as_ref().map_or(String::new(), |value| {
                format!(
                    " AND {col} >= {}::{}",
                    quote_literal(value),
                    target.column_type
                )
            });
            let bound = format!("{from} ORDER BY {col} LIMIT {limit}{lock}");
            (col, bound)
        }
        Cursor::FromStart => ("ctid".to_string(), format!(" LIMIT {limit}{lock}")),
        Cursor::Partitions => unreachable!("partitions are dropped, not reaped by statement"),
    };
    // Pick dead rows (by `key`, as `bound` orders and limits them), then act on those still
    // dead. A row is found again by its physical address; in a table with partitions or
    // children the same address exists once in each of them, so there the address is matched
    // together with the relation it is in (`tableoid`), or one batch would act on the rows at
    // those addresses in every partition.
    let (picked, which) = if target.has_children {
        (
            "tableoid AS rel, ctid",
            format!(
                "ctid = ANY (ARRAY(SELECT ctid FROM batch)) \
                 AND (tableoid, ctid) IN (SELECT rel, ctid FROM batch) AND {recheck}"
            ),
        )
    } else {
        (
            "ctid",
            format!("ctid = ANY (ARRAY(SELECT ctid FROM batch)) AND {recheck}"),
        )
    };
    format!(
        "WITH batch AS MATERIALIZED (SELECT {picked}, {key} AS key FROM {table} WHERE {dead}{bound}), \
         {} \
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch), (SELECT max(key)::text FROM batch), {}",
        gone(&target.action, &table, &which, &dead),
        again(&target.action)
    )
}

/// The dead-row condition for a statement whose rows are already found by their physical
/// address (a page range, or the ctids a batch picked): the same in a WHERE clause, but no
/// index can serve `… IS TRUE`, so the planner keeps the TID scan. With statistics older than
/// the rows' expiry (the usual case: rows expire by the clock, not by writes) it would estimate
/// one dead row and choose an index scan over every dead row of the table, each checked
/// against the batch's ctids, for every batch. A table with partitions or children keeps the
/// plain condition: partition pruning cannot read `IS TRUE` either, and without it every
/// partition, the live ones too, would be probed for the batch's ctids.
fn recheck(has_children: bool, dead: &str) -> String {
    if has_children {
        dead.to_string()
    } else {
        format!("(({dead}) IS TRUE)")
    }
}

/// The CTE `gone` that acts on the rows of `table` matching `which`, returning one row per row
/// acted on (an update's rows say whether they match the dead condition `dead` again, see
/// [`again`]), followed by any further CTE the action needs after it (an archive's INSERT).
fn gone(action: &Action, table: &str, which: &str, dead: &str) -> String {
    match action {
        Action::Delete | Action::DropPartitions => {
            format!("gone AS ({} RETURNING 1)", delete(table, which))
        }
        Action::Archive {
            table: archive,
            columns,
        } => format!(
            "gone AS ({} RETURNING {columns}), \
             moved AS (INSERT INTO {archive} ({columns}) SELECT {columns} FROM gone)",
            delete(table, which)
        ),
        // The SET list ends its line: a `--` comment in it cannot swallow the WHERE clause
        // (registration refuses any list that would, see check_update_set).
        Action::Update { set } => format!(
            "gone AS (UPDATE {table} SET {set}\n WHERE {which} RETURNING (({dead}) IS TRUE) AS _reaper_again)"
        ),
    }
}

/// How many rows of `gone` (the rows acted on) would match again: only an update can leave
/// such rows, and every run would then update them again.
fn again(action: &Action) -> &'static str {
    match action {
        Action::Update { .. } => "(SELECT count(*) FILTER (WHERE _reaper_again) FROM gone)",
        _ => "0::bigint",
    }
}

/// The DELETE of the rows of `table` matching `which`.
fn delete(table: &str, which: &str) -> String {
    format!("DELETE FROM {table} WHERE {which}")
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::compose;
    use crate::api::tests::tests::{run, sessions_table, split_table};
    use crate::reap::cursor::Cursor;
    use crate::reap::target::Target;
    use pgrx::prelude::*;

    /// The target of the registered table `table`, as a run loads it.
    fn loaded(table: &str) -> Target {
        let relid =
            Spi::get_one_with_args::<pg_sys::Oid>("SELECT $1::regclass::oid", &[table.into()])
                .unwrap()
                .unwrap();
        crate::reap::target::load(Some(relid))
            .remove(0)
            .target
            .unwrap()
    }

    /// The plan of `statement`, as JSON text.
    fn plan_of(statement: String) -> String {
        Spi::explain(&statement)
            .expect("the batch statement plans")
            .0
            .to_string()
    }

    /// A batch's DELETE finds its rows by physical address even when the table's statistics
    /// predate the rows' expiry (as they do in a steady state: they say every row expires
    /// later). Its dead-row re-check once let the planner pick an index scan over every dead
    /// row of the table instead, each checked against the batch's ctids: seconds per batch
    /// instead of milliseconds.
    #[pg_test]
    fn a_batch_keeps_its_tid_scan_when_the_statistics_predate_the_expiry() {
        sessions_table();
        run("CREATE INDEX ON sessions (expires_at)");
        run("INSERT INTO sessions (token, expires_at)
               SELECT 'live', now() + interval '1 day' FROM generate_series(1, 20000)");
        run("ANALYZE sessions");
        run("INSERT INTO sessions (token, expires_at)
               SELECT 'dead', now() - interval '1 second' * g FROM generate_series(1, 5000) g");
        run("SELECT reaper_register('sessions')");
        let target = loaded("sessions");
        // The pick still reads the dead rows through the index; the DELETE takes them by ctid.
        let expiry = compose(&target, &Cursor::Expiry(None), 1000, false);
        let plan = plan_of(expiry);
        assert!(plan.contains(r#""Node Type":"Tid Scan""#), "{plan}");
        assert!(plan.contains(r#""Node Type":"Index Scan""#), "{plan}");
        let pages = Cursor::Pages {
            next: 0,
            span: 20,
            end: 200,
            rows_per_page: 125.0,
        };
        let range_scan = "Tid Range Scan";
        for skip_locked in [false, true] {
            let plan = plan_of(compose(&target, &pages, 1000, skip_locked));
            assert!(
                plan.contains(&format!(r#""Node Type":"{range_scan}""#)),
                "{plan}"
            );
            assert!(!plan.contains("Index Scan"), "{plan}");
        }
    }

    /// A partitioned target's batch DELETE skips the partitions that hold only live rows
    /// (Postgres prunes them by the dead-row condition) instead of probing each of them for
    /// the batch's ctids, which it would if the condition were written so no index can use it.
    #[pg_test]
    fn a_partitioned_batch_delete_skips_the_live_partitions() {
        split_table("tokens", "expires_at timestamptz NOT NULL", "1 hour");
        run("CREATE INDEX ON tokens (expires_at)");
        run("INSERT INTO tokens SELECT now() + interval '1 day' FROM generate_series(1, 2000)");
        run("INSERT INTO tokens SELECT now() - interval '1 minute' FROM generate_series(1, 200)");
        run("SELECT reaper_register('tokens')");
        let target = loaded("tokens");
        let cursor = Cursor::first(&target, 1000, false);
        let statement = compose(&target, &cursor, 1000, false);
        let plan = plan_of(statement);
        let live_partition_scanned = Spi::get_one_with_args::<bool>(
            r#"SELECT jsonb_path_exists($1::jsonb, 'lax $.** ? (@."Node Type" == "ModifyTable").**
                 ? (@."Node Type" like_regex "Scan$" && @."Relation Name" == "tokens_new")')"#,
            &[plan.as_str().into()],
        )
        .unwrap()
        .unwrap();
        assert!(!live_partition_scanned, "{plan}");
    }
}
