//! batch.rs — the reap itself: the one place that deletes rows. `reaper_purge` calls it now;
//! the background worker calls the same functions with a transaction per batch.
//!
//! A run of a target takes the target's advisory lock (so a purge and the worker never reap
//! the same table at once), then deletes batches of about `batch_size` dead rows as the
//! table's owner, with `lock_timeout` set, each starting where the last stopped (cursor.rs),
//! until the cursor says the run is done or the row budget is spent. Every batch re-checks the
//! expiry condition inside its DELETE.

use crate::reap::cursor::{page_range, Cursor};
use crate::reap::partitions;
use crate::reap::statement;
use crate::reap::target::Target;
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, with_settings};
use crate::shared::settings;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The second field of every lock tag session_reaper takes ("REAP").
const LOCK_CLASS: u32 = 0x5245_4150;
/// The fourth field of its lock tags. The SQL advisory lock functions use only 1 (a bigint key)
/// and 2 (two integer keys), so no role can take, hold or wait on the reaper's lock from SQL:
/// with a key it could name, any role could make another role's target skip every run.
const LOCK_SPACE: u16 = 3;

/// What one run has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub rows: i64,
    pub batches: i32,
    /// Whole partitions dropped (action drop_partitions); their rows are not counted.
    pub partitions: i32,
    /// The longest batch: in the worker, the longest transaction the run held.
    pub longest_batch: Duration,
    /// Batches in a row that picked dead rows and removed none of them.
    pub stalls: u32,
}

impl Progress {
    pub fn add(&mut self, batch: &Batch, took: Duration) {
        self.rows += batch.deleted;
        self.partitions += batch.partitions;
        self.batches += 1;
        self.longest_batch = self.longest_batch.max(took);
        self.stalls = match batch.picked > 0 && batch.deleted == 0 {
            true => self.stalls + 1,
            false => 0,
        };
    }

    /// The error that ends a run whose batches keep picking dead rows they cannot remove (a
    /// BEFORE DELETE trigger that returns NULL, a DELETE policy narrower than the SELECT one):
    /// the next batch would pick the same rows again, for ever. One such batch may be a race
    /// (every picked row refreshed meanwhile); two in a row are not.
    pub fn stuck(&self, target: &Target) -> Option<ReaperError> {
        (self.stalls >= 2).then(|| ReaperError::NothingRemoved {
            table: target.name.clone(),
        })
    }
}

/// Takes the target's transaction-level lock without waiting (an advisory lock in a key space
/// SQL cannot reach, released at commit or abort); false when another reap of the same table
/// holds it. `pg_locks` shows it as an advisory lock with objsubid 3.
pub fn try_lock(target: &Target) -> bool {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: the connected database of this backend.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: LOCK_CLASS,
        locktag_field3: target.relid.to_u32(),
        locktag_field4: LOCK_SPACE,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a transaction lock on a tag built above, inside a transaction; dontWait.
    let taken = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, false, true) };
    taken != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Rows acted on: deleted, moved to the archive, or updated.
    pub deleted: i64,
    /// Dead rows the batch picked before acting (0 for page batches, which pick nothing).
    pub picked: i64,
    pub partitions: i32,
    /// The pages `[first, end)` a page batch covered, for [`prune_pages`].
    pub pages: Option<(u32, u64)>,
    /// Where the next batch of the same run starts; None when the run is done.
    pub next: Option<Cursor>,
}

/// How a batch treats rows that other transactions hold locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Wait for them, up to `reaper.lock_timeout` (no extra WAL: the usual case).
    Wait,
    /// Leave them for a later run (`FOR UPDATE SKIP LOCKED`: a lock record per row).
    Skip,
}

/// Acts on about `limit` dead rows of `target` (or drops one dead partition) in the current
/// transaction, as the table's owner, from `cursor` (None: a run's first batch, which chooses
/// how to walk the table; `exact` runs stop at exactly `limit` rows).
pub fn delete_batch(
    target: &Target,
    limit: i64,
    cursor: Option<&Cursor>,
    exact: bool,
    locked: Locked,
) -> Batch {
    as_owner(target, || {
        let mut cursor = cursor
            .cloned()
            .unwrap_or_else(|| Cursor::first(target, limit, exact));
        if cursor == Cursor::Partitions {
            if let Some(partition) = partitions::dead_partitions(target).next() {
                partitions::drop_partition(target, &partition);
                return Batch {
                    deleted: 0,
                    picked: 0,
                    partitions: 1,
                    pages: None,
                    next: Some(Cursor::Partitions),
                };
            }
            cursor = Cursor::begin(target, limit, exact);
        }
        let statement = statement::compose(target, &cursor, limit, locked == Locked::Skip);
        let (deleted, picked, last_key, again) = Spi::connect_mut(|client| {
            let table = client.update(statement.as_str(), None, &[])?;
            if table.columns().is_err() {
                // A plain DELETE (see statement::compose): it returns its row count only.
                return Ok((table.len() as i64, 0, None, 0));
            }
            let row = table.first();
            Ok::<_, pgrx::spi::Error>((
                row.get::<i64>(1)?.unwrap_or(0),
                row.get::<i64>(2)?.unwrap_or(0),
                row.get::<String>(3)?,
                row.get::<i64>(4)?.unwrap_or(0),
            ))
        })
        .expect("running the reap batch");
        if again > 0 {
            // Raised, so the batch's update is rolled back with the transaction.
            ReaperError::UpdateRepeats {
                table: target.name.clone(),
                rows: again,
            }
            .raise();
        }
        Batch {
            deleted,
            picked,
            partitions: 0,
            pages: cursor.pages(),
            next: cursor.after(limit, deleted, picked, last_key),
        }
    })
}

/// Prunes the pages `[first, end)` of `target` once the batch that deleted from them has
/// committed: reading a page lets Postgres remove its dead row versions and compact it
/// (heap_page_prune_opt, which every heap read does), so the reaper does that now instead of
/// the first application query that reads each page after the batch (bench/interference.sh
/// counts the app's prunes: see bench/README.md). Read-only, as the owner; it prunes only row
/// versions no snapshot can see, so it never touches a live row.
pub fn prune_pages(target: &Target, (first, end): (u32, u64)) {
    let statement = format!(
        "SELECT count(*) FROM {} WHERE {}",
        target.qualified(),
        page_range(first, end)
    );
    // A read-only query (`Spi::run` would assign a transaction id, and its commit would then
    // wait for a WAL flush).
    as_owner(target, || {
        Spi::connect(|client| client.select(&statement, None, &[]).map(drop))
    })
    .expect("reading the pages of the last batch");
}

/// Runs `f` as the table's owner, with the target's search_path and `reaper.lock_timeout`.
fn as_owner<R>(target: &Target, f: impl FnOnce() -> R) -> R {
    let settings = [
        ("search_path", target.search_path()),
        ("lock_timeout", settings::lock_timeout()),
    ];
    with_settings(&settings, || as_role(target.owner, f))
}

/// Deletes batches in the current transaction until the run is done or `max_rows` went.
pub fn delete_until_done(target: &Target, max_rows: Option<i64>) -> Progress {
    let mut progress = Progress::default();
    let mut cursor = None;
    loop {
        let remaining = max_rows.map_or(i64::MAX, |max| max - progress.rows);
        let limit = target.batch_size().min(remaining);
        if limit <= 0 {
            return progress;
        }
        let started = Instant::now();
        let batch = delete_batch(
            target,
            limit,
            cursor.as_ref(),
            max_rows.is_some(),
            Locked::Wait,
        );
        progress.add(&batch, started.elapsed());
        if let Some(stuck) = progress.stuck(target) {
            stuck.raise();
        }
        match batch.next {
            Some(next) => cursor = Some(next),
            None => return progress,
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    #[pg_test]
    fn purge_deletes_in_batches_and_respects_max_rows() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) SELECT 't' || g, now() - interval '1 hour' FROM generate_series(1, 250) g");
        run("SELECT reaper_register('sessions', batch_size => 100)");
        let (rows, batches) = Spi::get_two::<i64, i32>(
            "SELECT rows_deleted, batches FROM reaper_purge('sessions', max_rows => 120)",
        )
        .unwrap();
        assert_eq!((rows, batches), (Some(120), Some(2)));
        // Without max_rows and without an index, the rest goes by page ranges.
        let rows = count("SELECT rows_deleted FROM reaper_purge('sessions')");
        assert_eq!(rows, 130);
        assert_eq!(count("SELECT total_deleted FROM reaper_stats()"), 250);
        assert_eq!(count("SELECT total_runs FROM reaper_stats()"), 2);
        assert_eq!(
            count("SELECT count(*) FROM reaper_history WHERE trigger = 'manual' AND status = 'ok'"),
            2
        );
    }

    #[pg_test]
    fn a_purge_acts_as_the_table_owner_so_row_level_security_applies() {
        sessions_table();
        run("INSERT INTO sessions (token, expires_at) VALUES ('mine', now() - interval '1 day'), ('theirs', now() - interval '1 day')");
        run("CREATE ROLE reaper_rls_owner");
        run("ALTER TABLE sessions OWNER TO reaper_rls_owner");
        run("ALTER TABLE sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY");
        run("CREATE POLICY only_mine ON sessions USING (token = 'mine')");
        // Run as a superuser: the policy still binds, because the DELETE runs as the owner.
        run("SELECT reaper_register('sessions')");
        assert_eq!(
            count("SELECT rows_deleted FROM reaper_purge('sessions')"),
            1
        );
        run("ALTER TABLE sessions NO FORCE ROW LEVEL SECURITY");
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE token = 'theirs'"),
            1
        );
    }
}
