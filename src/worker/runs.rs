//! runs.rs — one target's run in the worker, from its first batch to its record: what it has
//! done so far, how it ended and the status that is recorded, the ANALYZE after a large run,
//! and the runs a previous worker left behind (interrupted by a shutdown or crash, or stopped
//! for ignoring its statement timeout).

use crate::reap::batch::Locked;
use crate::reap::batch::Progress;
use crate::reap::cursor::Cursor;
use crate::reap::history::{self, Run, Status};
use crate::reap::target::{self, Registered, Target};
use crate::shared::errors::ReaperError;
use crate::shared::security::{as_role, with_settings};
use crate::shared::settings;
use crate::shared::sql::{held_version, hold_extension, pinned, LIBRARY_VERSION};
use crate::shared::txn::{in_transaction, with_statement_timeout};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::time::Instant;

/// How a target's turn ended.
pub(super) enum TurnEnd {
    Done,
    MoreWork,
    OutOfTime,
    Skipped,
    /// The target's rule, as it stands now, says to stop: disabled, unregistered, or
    /// `reaper.enabled = off`.
    Stopped,
    Failed(PgSqlErrorCode, String),
    /// DROP EXTENSION committed: the round ends without another delete or record.
    ExtensionDropped,
}

/// The running total of one target's run within a wake.
pub(super) struct Running {
    pub(super) target: Registered,
    /// When its first batch began: the run's clock (`reaper.max_runtime`) starts there, not
    /// when it was queued behind other targets.
    pub(super) started: Option<(f64, Instant)>,
    pub(super) progress: Progress,
    /// Where the target's next batch starts; None before the first.
    pub(super) cursor: Option<Cursor>,
    /// Whether batches wait for locked rows (until one timed out) or skip them.
    pub(super) locked: Locked,
    /// A Citus table's shard in progress (`cursor` is a position in it), or the first shard
    /// id the next batch may start on.
    pub(super) shard: i64,
}

impl Running {
    pub(super) fn new(target: Registered) -> Self {
        Running {
            target,
            started: None,
            progress: Progress::default(),
            cursor: None,
            locked: Locked::Wait,
            shard: 0,
        }
    }

    /// When the run started (Unix seconds) and its clock, starting both now if it has not.
    pub(super) fn start(&mut self) -> (f64, Instant) {
        *self
            .started
            .get_or_insert_with(|| (crate::shared::clock::unix_now(), Instant::now()))
    }
}

/// Disables the target a previous worker of this database was stopped in (its owner's code
/// went on past the statement timeout's cancel), so this worker does not run it again: an
/// `error` run says why, and a WARNING.
pub(super) fn disable_stuck_target() {
    let relid = crate::shared::shmem::stuck();
    if relid == 0 {
        return;
    }
    let disabled = in_transaction(|| {
        pinned(|| {
            if held_version().as_deref() != Some(LIBRARY_VERSION) {
                return None;
            }
            let registered = target::load(Some(pg_sys::Oid::from(relid)))
                .into_iter()
                .next()?;
            let e = ReaperError::Runaway {
                table: registered.name.clone(),
                timeout: settings::statement_timeout(),
            };
            crate::reap::target::set_enabled(registered.id, false);
            let run = Run {
                target: &registered,
                trigger: "worker",
                started_at: crate::shared::clock::unix_now(),
                progress: Progress::default(),
                status: Status::Error,
                error: Some(e.message()),
                complete: false,
            };
            history::record(&run);
            Some(e)
        })
    });
    if disabled.is_ok() {
        crate::shared::shmem::clear_stuck();
    }
    match disabled {
        Ok(Some(e)) => warn(
            e.sqlstate(),
            &format!(
                "session_reaper: {}; {}",
                e.message(),
                e.hint().unwrap_or_default()
            ),
        ),
        Ok(None) => {}
        Err((code, message)) => warn(
            code,
            &format!("session_reaper: disabling a runaway target: {message}"),
        ),
    }
}

/// Records, as `interrupted`, the runs a previous worker of this database was stopped in the
/// middle of (a shutdown, a crash), before this one runs anything.
pub(super) fn record_interrupted_runs() {
    let recorded = in_transaction(|| {
        pinned(|| {
            (held_version().as_deref() == Some(LIBRARY_VERSION)).then(history::record_interrupted)
        })
    });
    if let Err((code, message)) = recorded {
        warn(
            code,
            &format!("session_reaper: recording interrupted runs: {message}"),
        );
    }
}

/// How a run that ended so is recorded: its status, and the error it reports.
pub(super) fn outcome(name: &str, end: TurnEnd) -> (Status, Option<String>) {
    match end {
        TurnEnd::Done | TurnEnd::MoreWork | TurnEnd::Stopped | TurnEnd::ExtensionDropped => {
            (Status::Ok, None)
        }
        TurnEnd::OutOfTime => (
            Status::Timeout,
            Some(format!(
                "reaper.max_runtime ({} s) ran out with dead rows left; the rest waits for the next run",
                settings::max_runtime().as_secs()
            )),
        ),
        TurnEnd::Skipped => (
            Status::Skipped,
            Some("another reap of this table is running".to_string()),
        ),
        TurnEnd::Failed(code, message) => {
            warn(code, &format!("session_reaper: {name}: {message}"));
            (Status::of_failure(code), Some(message))
        }
    }
}

/// Records a finished run, logs it, and ANALYZEs the table after a large share went.
pub(super) fn finish(running: Running, end: TurnEnd) -> bool {
    let complete = matches!(end, TurnEnd::Done);
    let (status, error) = outcome(&running.target.name, end);
    let run = Run {
        target: &running.target,
        trigger: "worker",
        started_at: running
            .started
            .map_or_else(crate::shared::clock::unix_now, |(at, _)| at),
        progress: running.progress,
        status,
        error,
        complete,
    };
    // After a DROP EXTENSION there is nothing to record into, and nothing to say.
    let recorded = in_transaction(|| pinned(|| hold_extension().then(|| history::record(&run))));
    if let Err((code, message)) = &recorded {
        warn(
            *code,
            &format!(
                "session_reaper: {}: recording the run: {message}",
                running.target.name
            ),
        );
    }
    // A Citus table's shards are analyzed by each node's autovacuum: its shell holds no rows.
    let analyzed = running
        .target
        .target
        .as_ref()
        .ok()
        .filter(|t| !t.distributed);
    if let (Some(t), Some(share)) = (analyzed, settings::analyze_after()) {
        if running.progress.rows > 0 {
            let analyzed =
                in_transaction(|| pinned(|| analyze_if_large(t, running.progress.rows, share)));
            match analyzed {
                Err((_, message)) if dropped_meanwhile(t.relid) => {
                    debug1!("session_reaper: {}: ANALYZE: {message}", t.name)
                }
                Err((code, message)) => warn(
                    code,
                    &format!("session_reaper: {}: ANALYZE: {message}", t.name),
                ),
                Ok(()) => {}
            }
        }
    }
    recorded.is_ok()
}

/// ANALYZEs the table, as its owner, when `rows` is at least `share` of what it held. Bounded
/// as a batch is: it gives up rather than queue behind DDL or run past the statement timeout.
pub(super) fn analyze_if_large(t: &Target, rows: i64, share: f64) {
    let before = Spi::get_one_with_args::<f32>(
        "SELECT reltuples FROM pg_class WHERE oid = $1",
        &[t.relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0.0);
    if before > 0.0 && rows as f64 >= share * f64::from(before) {
        let statement = format!("ANALYZE {}", t.qualified());
        with_settings(&[("lock_timeout", settings::lock_timeout())], || {
            with_statement_timeout(settings::statement_timeout(), t.relid, || {
                as_role(t.owner, || Spi::run(&statement))
            })
        })
        .expect("ANALYZE");
    }
}

/// Whether the table `relid` is gone, read in a transaction of its own. A batch, prune or
/// ANALYZE that waited for a `DROP TABLE` fails once the DROP commits ("relation does not
/// exist"): that is the end of the target (the DROP's event trigger unregistered it), not an
/// error to warn of. Checked after the failure rather than prevented by taking the table
/// before each batch: that lock, upgraded later in the batch, could deadlock with DDL.
pub(super) fn dropped_meanwhile(relid: pg_sys::Oid) -> bool {
    in_transaction(|| table_gone(relid)).unwrap_or(false)
}

/// Whether a run ends because its table `relid` was dropped and the DROP unregistered it, as
/// [`dropped_meanwhile`]. A registration left behind (the event trigger did not fire) is a
/// broken target: its run is recorded as failed, and the next ones say the table is missing.
pub(super) fn unregistered_by_drop(relid: pg_sys::Oid) -> bool {
    in_transaction(|| {
        pinned(|| table_gone(relid) && (!hold_extension() || target::load(Some(relid)).is_empty()))
    })
    .unwrap_or(false)
}

fn table_gone(relid: pg_sys::Oid) -> bool {
    // SAFETY: a system cache look-up, inside the caller's transaction.
    unsafe { pg_sys::get_rel_relkind(relid) == 0 }
}

/// Logs a WARNING that carries the SQLSTATE in its text as well as in its error code.
pub(super) fn warn(code: PgSqlErrorCode, message: &str) {
    ErrorReport::new(
        code,
        format!("{message} (SQLSTATE {})", sqlstate(code)),
        "session_reaper worker",
    )
    .report(PgLogLevel::WARNING);
}

/// The five-character SQLSTATE of an error code (Postgres packs it six bits a character).
pub(super) fn sqlstate(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5)
        .map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3F) as u8))
        .collect()
}
