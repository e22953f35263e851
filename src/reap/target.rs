//! target.rs — a registered target as the reaper sees it, read fresh from the catalog each
//! time, and the SQL its rule becomes.
//!
//! A target row stores the table's OID, the expiry column's name and the options. The column's
//! type is looked up on every load, so a column that was dropped, renamed or retyped after
//! registration shows up as an error of that target instead of a wrong delete.

use crate::reap::action::{self, Action};
use crate::reap::schedule::Schedule;
use crate::shared::errors::ReaperError;
use crate::shared::security::as_role;
use crate::shared::sql::{ext_owner, ext_schema, kept_plan, quote_ident, quote_literal};
use pgrx::prelude::*;
use pgrx::PgOid;

/// How the expiry column's values become points in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Timestamptz,
    /// Wall-clock times in the target's `timezone`.
    Timestamp,
    /// A day in the target's `timezone`; the row expires at the end of that day.
    Date,
    /// Seconds since 1970-01-01 UTC in an integer or bigint column.
    Epoch,
}

impl ColumnKind {
    /// The kind for a column type, or None when the type cannot hold an expiry time.
    pub fn from_type(type_oid: pg_sys::Oid) -> Option<Self> {
        match type_oid {
            pg_sys::TIMESTAMPTZOID => Some(Self::Timestamptz),
            pg_sys::TIMESTAMPOID => Some(Self::Timestamp),
            pg_sys::DATEOID => Some(Self::Date),
            pg_sys::INT8OID | pg_sys::INT4OID => Some(Self::Epoch),
            _ => None,
        }
    }

    /// Wall-clock kinds need a time zone to be read as instants.
    pub fn needs_timezone(self) -> bool {
        matches!(self, Self::Timestamp | Self::Date)
    }
}

/// A target whose table and column were found and whose rule can run.
#[derive(Debug, Clone)]
pub struct Target {
    pub relid: pg_sys::Oid,
    /// `schema.table` as regclass prints it: for messages and logs.
    pub name: String,
    pub schema: String,
    pub table: String,
    pub owner: pg_sys::Oid,
    pub column: String,
    /// The column's type as format_type prints it.
    pub column_type: String,
    pub kind: ColumnKind,
    /// A valid, non-partial btree index leads with the expiry column.
    pub indexed: bool,
    /// Its rows live in more than one relation: partitions, or inheritance children (which a
    /// `DELETE FROM` it reaches too). Physical positions repeat across them.
    pub has_children: bool,
    pub timezone: Option<String>,
    /// grace + ttl as interval text: how far before now() the cutoff lies.
    pub offset: String,
    pub ttl: Option<String>,
    pub predicate: Option<String>,
    pub batch_size: Option<i32>,
    pub action: Action,
    /// A Citus table: its rows are in the shards on each node (citus.rs), not in `relid`.
    pub distributed: bool,
}

/// One row of the registry: its identity, and the target or why it cannot run.
pub struct Registered {
    pub id: i64,
    pub relid: pg_sys::Oid,
    pub name: String,
    pub owner: Option<pg_sys::Oid>,
    pub enabled: bool,
    pub schedule: Schedule,
    /// When its last run started (Unix seconds), from `reaper_state`.
    pub last_run: Option<f64>,
    /// When it was registered (Unix seconds): a cron target's first run is the cron time after.
    pub registered_at: f64,
    /// When its rule last changed (Unix seconds): a run in progress takes up a new rule.
    pub updated_at: f64,
    /// Someone who may manage it asked for a run now (`reaper_wake`).
    pub wake_requested: bool,
    pub target: Result<Target, ReaperError>,
}

impl Registered {
    /// When this target is next due (Unix seconds).
    pub fn next_run(&self, now: f64) -> f64 {
        if self.wake_requested {
            return now;
        }
        self.schedule
            .next_run(self.last_run, self.registered_at, now)
    }
}

/// Reads the registry (one table, or all when `relid` is None), joined with the catalog.
pub fn load(relid: Option<pg_sys::Oid>) -> Vec<Registered> {
    let query = format!(
        "SELECT t.id, t.relid::oid, t.relid::text, c.relowner, n.nspname::text, c.relname::text,
                c.relkind::text, t.column_name::text, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod),
                t.timezone, (t.grace + coalesce(t.ttl, '0'))::text, t.ttl::text, t.predicate,
                t.batch_size, t.enabled, t.schedule, extract(epoch FROM s.last_run_at)::float8,
                EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                          JOIN pg_catalog.pg_am am ON am.oid = ic.relam
                         WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum AND am.amname = 'btree'
                           AND i.indisvalid AND i.indpred IS NULL),
                t.action, t.update_set,
                (SELECT ac.oid FROM pg_catalog.pg_class ac WHERE ac.oid = t.archive_table),
                c.relkind = 'p' OR c.relhassubclass,
                extract(epoch FROM t.registered_at)::float8, extract(epoch FROM t.updated_at)::float8,
                s.wake_requested_at IS NOT NULL, {sharded}
           FROM {schema}.reaper_target t
           LEFT JOIN {schema}.reaper_state s ON s.target_id = t.id
           LEFT JOIN pg_catalog.pg_class c ON c.oid = t.relid
           LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = t.column_name
                                               AND a.attnum > 0 AND NOT a.attisdropped
          {only}
          ORDER BY t.id",
        schema = ext_schema(),
        // Two queries rather than `$1 IS NULL OR …`, whose one generic plan would read the
        // whole of pg_attribute for one target.
        only = relid.map_or("", |_| "WHERE t.relid = $1"),
        sharded = crate::reap::citus::sharded_condition("c.oid")
    );
    // Read as the extension's owner: callers filter by their own rights afterwards.
    as_role(ext_owner(), || {
        Spi::connect(|client| {
            let rows = match relid {
                Some(relid) => {
                    let types = [PgOid::BuiltIn(PgBuiltInOids::OIDOID)];
                    client.select(kept_plan(client, &query, &types)?, None, &[relid.into()])?
                }
                None => client.select(kept_plan(client, &query, &[])?, None, &[])?,
            };
            let mut out = Vec::new();
            for row in rows {
                out.push(from_row(&row)?);
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .expect("reading the session_reaper registry")
}

fn from_row(row: &pgrx::spi::SpiHeapTupleData) -> pgrx::spi::Result<Registered> {
    let id: i64 = row.get(1)?.expect("id is not null");
    let relid: pg_sys::Oid = row.get(2)?.expect("relid is not null");
    let name: String = row.get(3)?.expect("regclass prints");
    let owner: Option<pg_sys::Oid> = row.get(4)?;
    let enabled: bool = row.get(16)?.unwrap_or(false);
    let schedule_text: Option<String> = row.get(17)?;
    let schedule = Schedule::of(schedule_text.as_deref());
    let last_run: Option<f64> = row.get(18)?;
    let registered_at: f64 = row.get(24)?.unwrap_or(0.0);
    let updated_at: f64 = row.get(25)?.unwrap_or(0.0);
    let wake_requested: bool = row.get(26)?.unwrap_or(false);
    let target = match owner {
        None => Err(ReaperError::TableMissing {
            target: name.clone(),
        }),
        Some(owner) => {
            let column: String = row.get(8)?.expect("column_name is not null");
            let timezone: Option<String> = row.get(11)?;
            let relkind: String = row.get(7)?.unwrap_or_default();
            let column_type: Option<String> = row.get(10)?;
            match check_loaded(
                &name,
                &relkind,
                &column,
                row.get(9)?,
                column_type.clone(),
                &timezone,
            ) {
                Err(e) => Err(e),
                Ok(kind) => match load_action(&name, relid, owner, row) {
                    Err(e) => Err(e),
                    Ok(action) => Ok(Target {
                        column_type: column_type.unwrap_or_default(),
                        indexed: row.get(19)?.unwrap_or(false),
                        has_children: row.get(23)?.unwrap_or(false),
                        relid,
                        name: name.clone(),
                        schema: row.get(5)?.expect("schema"),
                        table: row.get(6)?.expect("table"),
                        owner,
                        column,
                        kind,
                        timezone,
                        offset: row.get(12)?.expect("offset"),
                        ttl: row.get(13)?,
                        predicate: row.get(14)?,
                        batch_size: row.get(15)?,
                        action,
                        distributed: row.get(27)?.unwrap_or(false),
                    }),
                },
            }
        }
    };
    Ok(Registered {
        id,
        relid,
        name,
        owner,
        enabled,
        schedule,
        last_run,
        registered_at,
        updated_at,
        wake_requested,
        target,
    })
}

/// The action of a target row; an archive action checks its archive table still fits.
fn load_action(
    name: &str,
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    row: &pgrx::spi::SpiHeapTupleData,
) -> Result<Action, ReaperError> {
    let action: Option<String> = row.get(20).ok().flatten();
    Ok(match action.as_deref() {
        Some("archive") => action::load_archive(name, relid, owner, row.get(22).ok().flatten())?,
        Some("update") => Action::Update {
            set: row.get(21).ok().flatten().unwrap_or_default(),
        },
        Some("drop_partitions") => Action::DropPartitions,
        _ => Action::Delete,
    })
}

/// Checks what can change behind a registered target's back: its table's kind, its column's
/// presence and type, and that wall-clock columns have a time zone.
pub fn check_loaded(
    table: &str,
    relkind: &str,
    column: &str,
    type_oid: Option<pg_sys::Oid>,
    type_name: Option<String>,
    timezone: &Option<String>,
) -> Result<ColumnKind, ReaperError> {
    check_relkind(table, relkind)?;
    let type_oid = type_oid.ok_or_else(|| ReaperError::ColumnMissing {
        table: table.to_string(),
        column: column.to_string(),
    })?;
    let kind = ColumnKind::from_type(type_oid).ok_or_else(|| ReaperError::WrongColumnType {
        table: table.to_string(),
        column: column.to_string(),
        type_name: type_name.unwrap_or_default(),
    })?;
    if kind.needs_timezone() && timezone.is_none() {
        return Err(ReaperError::TimezoneMissing {
            table: table.to_string(),
            column: column.to_string(),
        });
    }
    Ok(kind)
}

/// Only ordinary and partitioned tables can be reaped.
pub fn check_relkind(table: &str, relkind: &str) -> Result<(), ReaperError> {
    let kind = match relkind {
        "r" | "p" => return Ok(()),
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        "i" | "I" => "index",
        "c" => "composite type",
        "t" => "TOAST table",
        _ => "relation of another kind",
    };
    Err(ReaperError::NotATable {
        table: table.to_string(),
        kind,
    })
}

/// The search path a target's statements and predicate run under, as the table's owner:
/// pg_catalog first, so nothing shadows a built-in, then the table's own schema for unqualified
/// names in a predicate, then pg_temp — named last on purpose: left out, it is searched
/// *first* for tables and types, and reaper_stats() runs this as the owner in the session of
/// anyone who may read the table, who could shadow a table the predicate names with a
/// temporary view that runs their code as the owner.
pub fn search_path_for(schema: &str) -> String {
    format!("pg_catalog, {}, pg_temp", quote_ident(schema))
}

impl Target {
    /// The table, schema-qualified and quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// The search path reap statements and predicates run under.
    pub fn search_path(&self) -> String {
        search_path_for(&self.schema)
    }

    /// The batch size this target uses.
    pub fn batch_size(&self) -> i64 {
        self.batch_size
            .map(i64::from)
            .unwrap_or_else(crate::shared::settings::batch_size)
    }

    /// The point in time before which a row is dead: now() minus grace (and ttl).
    fn cutoff(&self) -> String {
        if self.offset == "00:00:00" {
            "now()".to_string()
        } else {
            format!("(now() - {}::interval)", quote_literal(&self.offset))
        }
    }

    fn timezone_literal(&self) -> String {
        quote_literal(self.timezone.as_deref().unwrap_or("UTC"))
    }

    /// The condition that makes a row dead. It compares the bare column against a constant so
    /// a btree index on the column serves it, and it is written into the DELETE itself so a row
    /// refreshed after it was picked is re-checked and kept.
    pub fn dead_condition(&self) -> String {
        let base = self.dead_condition_of(&quote_ident(&self.column));
        match &self.predicate {
            Some(predicate) => format!("{base} AND (({predicate}) IS TRUE)"),
            None => base,
        }
    }

    /// Whether `col`, an expression of the column's type, is past expiry (the predicate aside).
    pub fn dead_condition_of(&self, col: &str) -> String {
        let cutoff = self.cutoff();
        let tz = self.timezone_literal();
        match self.kind {
            ColumnKind::Timestamptz => format!("{col} < {cutoff}"),
            // Both readings of a wall-clock time: the index-friendly one, and the exact instant,
            // so a time that repeats when clocks go back is only taken when both agree.
            ColumnKind::Timestamp => {
                format!("{col} < timezone({tz}, {cutoff}) AND timezone({tz}, {col}) < {cutoff}")
            }
            // A date expires at the end of that day in its zone: the later reading, never early.
            ColumnKind::Date => format!("{col} < timezone({tz}, {cutoff}) - '1 day'::interval"),
            // Whole seconds, rounded down: a row expiring within the current second waits.
            ColumnKind::Epoch => format!("{col} < floor(extract(epoch FROM {cutoff}))::bigint"),
        }
    }

    /// The instant a row expired (without grace): for ages in the dry run and stats.
    pub fn expiry_expression(&self) -> String {
        let col = quote_ident(&self.column);
        let tz = self.timezone_literal();
        let expiry = match self.kind {
            ColumnKind::Timestamptz => col,
            ColumnKind::Timestamp => format!("timezone({tz}, {col})"),
            ColumnKind::Date => format!("timezone({tz}, ({col} + 1)::timestamp)"),
            ColumnKind::Epoch => format!("to_timestamp({col})"),
        };
        match &self.ttl {
            Some(ttl) => format!("({expiry} + {}::interval)", quote_literal(ttl)),
            None => expiry,
        }
    }

    /// The planner's estimate of dead rows (no scan); run as the owner with the target's
    /// search path.
    pub fn dead_rows_estimate(&self) -> Option<i64> {
        let query = format!(
            "SELECT 1 FROM {} WHERE {}",
            self.qualified(),
            self.dead_condition()
        );
        let plan = Spi::explain(&query).ok()?;
        plan.0[0]["Plan"]["Plan Rows"]
            .as_f64()
            .map(|rows| rows as i64)
    }

    /// The statement that gives the reap an index to use.
    pub fn index_advice(&self) -> String {
        format!(
            "CREATE INDEX CONCURRENTLY ON {} ({});",
            self.qualified(),
            quote_ident(&self.column)
        )
    }
}

/// Switches target `id` on or off, as the extension's owner (the caller's rights are checked
/// before), and has the worker look again at commit.
pub fn set_enabled(id: i64, enabled: bool) {
    crate::shared::hooks::wake_worker_at_commit();
    let query = format!(
        "UPDATE {}.reaper_target SET enabled = $2, updated_at = now() WHERE id = $1",
        ext_schema()
    );
    as_role(ext_owner(), || {
        Spi::run_with_args(&query, &[id.into(), enabled.into()])
    })
    .expect("writing reaper_target");
}
