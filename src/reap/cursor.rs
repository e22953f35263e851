//! cursor.rs — where the next batch of a run starts, and how the run walks the table.
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
//! The statement a batch runs from a cursor is composed in statement.rs.

use crate::reap::action::Action;
use crate::reap::target::Target;
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
