//! partitions.rs — the whole partitions a `drop_partitions` target drops: range partitions by
//! the expiry column whose every possible row is dead, one per batch, before the rows of the
//! partition that still holds live ones are deleted as usual.

use crate::reap::target::{ColumnKind, Target};
use pgrx::prelude::*;

/// The partitions of `target` whose every possible row is dead now (quoted names), in the order
/// of their bounds' text: a range partition [from, to) is, when the value just below `to` is
/// dead. Lazy: a run takes only the first (one partition per batch), so it does not test every
/// bound again for each partition it drops.
pub fn dead_partitions(target: &Target) -> impl Iterator<Item = String> + '_ {
    let partitions = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname),
                        pg_catalog.pg_get_expr(c.relpartbound, c.oid)
                   FROM pg_catalog.pg_inherits i
                   JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE i.inhparent = $1 AND c.relispartition
                  ORDER BY 2",
                None,
                &[target.relid.into()],
            )?
            .map(|row| Ok((row.get::<String>(1)?, row.get::<String>(2)?)))
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .expect("listing partitions");
    partitions.into_iter().filter_map(|(name, bound)| {
        let upper = upper_bound(bound.as_deref()?)?;
        all_dead_below(target, upper).then_some(name?)
    })
}

/// The upper bound of a range partition's `FOR VALUES FROM (...) TO (...)` as a SQL literal;
/// None for the default partition and an unbounded (MAXVALUE) upper end.
fn upper_bound(bound: &str) -> Option<&str> {
    let (_, to) = bound.rsplit_once(" TO (")?;
    let value = to.strip_suffix(')')?;
    (value != "MAXVALUE").then_some(value)
}

/// Whether the value just below `upper` (a literal of the column's type) is dead.
fn all_dead_below(target: &Target, upper: &str) -> bool {
    let step = match target.kind {
        ColumnKind::Timestamptz | ColumnKind::Timestamp => "'1 microsecond'::interval",
        ColumnKind::Date | ColumnKind::Epoch => "1",
    };
    let below = format!("(({upper})::{} - {step})", target.column_type);
    Spi::get_one::<bool>(&format!("SELECT {}", target.dead_condition_of(&below)))
        .expect("comparing a partition bound")
        .unwrap_or(false)
}

/// Detaches and drops one partition of `target` (its lock waits at most `lock_timeout`).
pub fn drop_partition(target: &Target, partition: &str) {
    Spi::run(&format!(
        "ALTER TABLE {} DETACH PARTITION {partition}",
        target.qualified()
    ))
    .expect("detaching a partition");
    Spi::run(&format!("DROP TABLE {partition}")).expect("dropping a partition");
}
