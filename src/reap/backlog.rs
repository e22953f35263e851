//! backlog.rs — what a run left behind: how many dead rows remain and when the oldest of them
//! expired. Measured once at the end of every run (worker or purge) and kept in
//! `reaper_state`, so `reaper_stats()` reads one row per target and plans nothing: cheap to
//! scrape with thousands of targets. `reaper_dry_run` counts the live truth when asked.

use crate::reap::target::Target;
use crate::shared::security::{as_role, with_settings};
use crate::shared::txn::{in_subtransaction, with_statement_timeout};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// Dead rows are counted exactly up to this many; beyond, the planner's estimate is used.
const COUNT_UP_TO: i64 = 10_000;

#[derive(Debug, Default, Clone, Copy)]
pub struct Backlog {
    pub rows: Option<i64>,
    pub oldest_expiry: Option<TimestampWithTimeZone>,
}

impl Backlog {
    /// The backlog of two tables together (a Citus table's shards on one node).
    fn plus(self, other: Backlog) -> Backlog {
        Backlog {
            // Unknown when any part is.
            rows: self.rows.zip(other.rows).map(|(a, b)| a + b),
            oldest_expiry: match (self.oldest_expiry, other.oldest_expiry) {
                (Some(a), Some(b)) => Some(std::cmp::min_by_key(a, b, |t| {
                    pg_sys::TimestampTz::from(*t)
                })),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Measures the backlog of `t` now, as its owner. Both figures are NULL when the table cannot
/// be read right now (a lock held past 100 ms, a changed column): a run is recorded regardless.
pub fn measure(t: &Target) -> Backlog {
    if t.distributed {
        return crate::reap::citus::local_shards(t, 0)
            .iter()
            .map(|(_, shard)| measure(shard))
            .fold(
                Backlog {
                    rows: Some(0),
                    oldest_expiry: None,
                },
                Backlog::plus,
            );
    }
    let (table, dead) = (t.qualified(), t.dead_condition());
    let oldest = format!(
        "SELECT (SELECT {} FROM {table} WHERE {dead} ORDER BY {} LIMIT 1)",
        t.expiry_expression(),
        crate::shared::sql::quote_ident(&t.column)
    );
    let counted =
        format!("SELECT count(*) FROM (SELECT FROM {table} WHERE {dead} LIMIT {COUNT_UP_TO}) d");
    let settings = [
        ("search_path", t.search_path()),
        ("lock_timeout", "100ms".to_string()),
    ];
    // Bounded like a batch: a probe without an index scans the whole table.
    in_subtransaction(|| {
        with_statement_timeout(
            crate::shared::settings::statement_timeout(),
            t.relid,
            || {
                with_settings(&settings, || {
                    as_role(t.owner, || {
                        let oldest_expiry = Spi::get_one::<TimestampWithTimeZone>(&oldest)
                            .expect("oldest dead row");
                        let counted = Spi::get_one::<i64>(&counted)
                            .expect("counting dead rows")
                            .unwrap_or(0);
                        let rows = match counted {
                            n if n < COUNT_UP_TO => n,
                            n => t.dead_rows_estimate().unwrap_or(n).max(n),
                        };
                        Backlog {
                            rows: Some(rows),
                            oldest_expiry,
                        }
                    })
                })
            },
        )
    })
    .unwrap_or_default()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    #[pg_test]
    fn stats_show_the_backlog() {
        sessions_table();
        run("CREATE INDEX ON sessions (expires_at)");
        run("INSERT INTO sessions (token, expires_at) SELECT 't' || g, now() - g * interval '1 minute' FROM generate_series(1, 500) g");
        run("ANALYZE sessions");
        run("SELECT reaper_register('sessions')");
        // Before any run nothing was measured; a run that stops early leaves what it left.
        assert_eq!(
            count("SELECT count(*) FROM reaper_stats() WHERE dead_rows_estimate IS NULL AND backlog_at IS NULL"),
            1
        );
        run("SELECT * FROM reaper_purge('sessions', max_rows => 100)");
        assert_eq!(count("SELECT dead_rows_estimate FROM reaper_stats()"), 400);
        let oldest_minutes =
            count("SELECT extract(epoch FROM oldest_dead_age)::bigint / 60 FROM reaper_stats()");
        assert_eq!(oldest_minutes, 400);
        // A complete run leaves nothing behind.
        run("SELECT * FROM reaper_purge('sessions')");
        assert_eq!(
            count("SELECT count(*) FROM reaper_stats() WHERE dead_rows_estimate = 0 AND oldest_dead_age IS NULL"),
            1
        );
    }
}
