//! cursor.rs — where the next batch of a run starts, and the statement each batch runs.
//!
//! A run never scans again what its earlier batches removed. Two ways of walking a table:
//! - **Pages**: a range of physical pages per batch (`ctid >= '(p,0)' AND ctid < '(q,0)'`, a TID
//!   range scan), one pass that deletes every dead row in it, as cheap per row as one big
//!   DELETE. The range is sized from the rows deleted so far to hold about `limit` dead rows
//!   (never more than twice that). Used when the dead rows are a large share of the table, or
//!   when no index leads with the expiry column; never on a table with partitions or
//!   inheritance children, whose pages are not the parent's.
//! - **Expiry order**: pick at most `limit` dead rows through the index, from where the last
//!   batch stopped, then delete those still dead by physical address. Reads only dead rows:
//!   used for the usual small backlog, and when a run must stop at an exact row count.
//!
//! Either way the dead-row condition is part of the DELETE itself, so a row refreshed after the
//! batch began is re-checked and kept; that re-check is written so that no index can serve it
//! (see `recheck`). No row lock is taken first: `FOR UPDATE SKIP LOCKED` writes a lock record
//! per row, more WAL for nothing (docs/design.md, "One batch").

use crate::reap::action::Action;
use crate::reap::target::Target;
use crate::shared::sql::{quote_ident, quote_literal};
use pgrx::prelude::*;

/// Dead rows at or above this share of the table's rows make a run walk pages.
const PAGES_FROM_SHARE: f64 = 0.2;
/// Largest page range of one batch (64 MB of 8 kB pages): bounds a batch's transaction.
const MAX_SPAN: u32 = 8192;

#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    /// Pages [next, next + span) of the `end` pages the table had when the run began.
    Pages {
        next: u32,
        span: u32,
        end: u32,
        rows_per_page: f64,
    },
    /// In expiry order from this value of the column (None: from the lowest).
    Expiry(Option<String>),
    /// From the beginning each time: a table with partitions or children and no index on the
    /// column (physical positions repeat across them).
    FromStart,
    /// Dropping whole dead partitions (action drop_partitions), one per batch, before the rows.
    Partitions,
}

impl Cursor {
    /// Where a run of `target` starts: with whole partitions for drop_partitions, else rows.
    pub fn first(target: &Target, limit: i64, exact: bool) -> Cursor {
        match target.action {
            Action::DropPartitions => Cursor::Partitions,
            _ => Cursor::begin(target, limit, exact),
        }
    }

    /// How a run of `target` walks its rows; `exact` runs (a purge with max_rows) never walk pages,
    /// since a page range cannot stop at a row count. Runs in the batch's transaction, as the
    /// table's owner.
    pub fn begin(target: &Target, limit: i64, exact: bool) -> Cursor {
        if target.has_children || exact {
            return if target.indexed {
                Cursor::Expiry(None)
            } else {
                Cursor::FromStart
            };
        }
        let (pages, tuples, end) = Spi::get_three_with_args::<i32, f32, i64>(
            "SELECT relpages, reltuples,
                    pg_catalog.pg_relation_size(oid) / pg_catalog.current_setting('block_size')::bigint
               FROM pg_catalog.pg_class WHERE oid = $1",
            &[target.relid.into()],
        )
        .expect("reading pg_class");
        let (pages, tuples, end) = (pages.unwrap_or(0), tuples.unwrap_or(-1.0), end.unwrap_or(0));
        let large_share = || {
            let dead = target.dead_rows_estimate().unwrap_or(0) as f64;
            tuples > 0.0 && dead >= PAGES_FROM_SHARE * f64::from(tuples)
        };
        if target.indexed && !large_share() {
            return Cursor::Expiry(None);
        }
        let rows_per_page = if pages > 0 && tuples > 0.0 {
            f64::from(tuples) / f64::from(pages)
        } else {
            100.0
        };
        Cursor::Pages {
            next: 0,
            span: span_for(limit as f64 / rows_per_page, limit, rows_per_page),
            end: end.clamp(0, i64::from(u32::MAX)) as u32,
            rows_per_page,
        }
    }

    /// The statement of the next batch of rows. It returns (rows acted on, rows picked, the
    /// largest expiry value picked as text, rows an update left matching), except a page batch
    /// that deletes, which is a plain DELETE (its row count is the rows acted on); page batches
    /// pick nothing. With `skip_locked`, rows another transaction holds locked are left for a later
    /// run instead of waited for.
    pub fn statement(&self, target: &Target, limit: i64, skip_locked: bool) -> String {
        let table = target.qualified();
        let dead = target.dead_condition();
        let recheck = recheck(target, &dead);
        let action = &target.action;
        let lock = if skip_locked {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        match self {
            Cursor::Pages { .. } => {
                let (first, end) = self.pages().expect("a page cursor has pages");
                let range = page_range(first, end);
                let which = if skip_locked {
                    format!("ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {range} AND {recheck}{lock}))")
                } else {
                    range
                };
                let which = format!("{which} AND {recheck}");
                match action {
                    // The common case, as plain as one big DELETE: its row count is the
                    // statement's own (a RETURNING CTE costs more per row).
                    Action::Delete | Action::DropPartitions => {
                        crate::reap::action::delete(&table, &which)
                    }
                    _ => format!(
                        "WITH gone AS ({}){} SELECT count(*), 0::bigint, NULL::text, {} FROM gone",
                        action.modify(&table, &which, &dead),
                        action.follow_up(),
                        action.again()
                    ),
                }
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
                pick_and_act(target, (&dead, &recheck), &col, &bound)
            }
            Cursor::FromStart => pick_and_act(
                target,
                (&dead, &recheck),
                "ctid",
                &format!(" LIMIT {limit}{lock}"),
            ),
            Cursor::Partitions => unreachable!("partitions are dropped, not reaped by statement"),
        }
    }

    /// The pages a page batch covers, `[first, end)`; None for the other ways of walking.
    pub fn pages(&self) -> Option<(u32, u64)> {
        match self {
            Cursor::Pages { next, span, .. } => Some((*next, u64::from(*next) + u64::from(*span))),
            _ => None,
        }
    }

    /// Where the batch after this one starts, given what it did; None when the run is done.
    pub fn after(
        &self,
        limit: i64,
        deleted: i64,
        picked: i64,
        last_key: Option<String>,
    ) -> Option<Cursor> {
        match self {
            Cursor::Pages {
                next,
                span,
                end,
                rows_per_page,
            } => {
                let next = next.saturating_add(*span);
                (next < *end).then(|| {
                    let wanted = if deleted == 0 {
                        f64::from(*span) * 2.0
                    } else {
                        limit as f64 * f64::from(*span) / deleted as f64
                    };
                    Cursor::Pages {
                        next,
                        span: span_for(wanted, limit, *rows_per_page),
                        end: *end,
                        rows_per_page: *rows_per_page,
                    }
                })
            }
            Cursor::Expiry(_) => (picked >= limit).then_some(Cursor::Expiry(last_key)),
            Cursor::FromStart => (picked >= limit).then_some(Cursor::FromStart),
            Cursor::Partitions => Some(Cursor::Partitions),
        }
    }
}

/// The condition that holds the rows of pages `[first, end)`: a TID range scan reads only them.
/// The last range of a table near the 32 TB limit may end past the largest block number a tid
/// can spell; it ends at that number, above every real page (MaxBlockNumber is one less).
pub fn page_range(first: u32, end: u64) -> String {
    let end = end.min(u64::from(u32::MAX));
    format!("ctid >= '({first},0)'::tid AND ctid < '({end},0)'::tid")
}

/// A page span near `wanted`, small enough that even pages full of dead rows hold at most
/// twice `limit`.
fn span_for(wanted: f64, limit: i64, rows_per_page: f64) -> u32 {
    let most = (2.0 * limit as f64 / rows_per_page.max(1.0)).clamp(1.0, f64::from(MAX_SPAN));
    wanted.clamp(1.0, most) as u32
}

/// The dead-row condition for a statement whose rows are already found by their physical
/// address (a page range, or the ctids a batch picked): the same in a WHERE clause, but no
/// index can serve `… IS TRUE`, so the planner keeps the TID scan. With statistics older than
/// the rows' expiry (the usual case: rows expire by the clock, not by writes) it would estimate
/// one dead row and choose an index scan over every dead row of the table, each checked
/// against the batch's ctids, for every batch. A table with partitions or children keeps the
/// plain condition: partition pruning cannot read `IS TRUE` either, and without it every
/// partition, the live ones too, would be probed for the batch's ctids.
fn recheck(target: &Target, dead: &str) -> String {
    if target.has_children {
        dead.to_string()
    } else {
        format!("(({dead}) IS TRUE)")
    }
}

/// Picks dead rows (by `key`, as `bound` orders and limits them, with `dead`), then acts on
/// those still dead (`recheck`). A row is found again by its physical address; in a table
/// with partitions or children the same address exists once in each of them, so there the
/// address is matched together with the relation it is in (`tableoid`), or one batch would
/// act on the rows at those addresses in every partition.
fn pick_and_act(target: &Target, (dead, recheck): (&str, &str), key: &str, bound: &str) -> String {
    let table = target.qualified();
    let action = &target.action;
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
         gone AS ({}){} \
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch), (SELECT max(key)::text FROM batch), {}",
        action.modify(&table, &which, dead),
        action.follow_up(),
        action.again()
    )
}
