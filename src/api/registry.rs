//! registry.rs — `reaper_register`, `reaper_unregister` and `reaper_enable`: the only ways into
//! the extension's target table.
//!
//! Every input is checked before anything is written, so a bad call raises one ERROR and
//! changes nothing. A table has at most one target: registering it again replaces the rule
//! (all options take the values of the new call), keeping the target's id and its history.

use crate::api::cluster;
use crate::reap::target::{check_relkind, ColumnKind};
use crate::reap::{action, predicate, target};
use crate::shared::errors::{catch_pg_error, OrRaise, ReaperError};
use crate::shared::security::{as_role, check_owner, with_settings};
use crate::shared::sql::{ext_owner, ext_schema, pinned, quote_ident};
use pgrx::datum::{DatumWithOid, Interval};
use pgrx::prelude::*;
use std::ffi::CStr;

/// The table a call names, as the catalog has it.
struct Table {
    relid: pg_sys::Oid,
    name: String,
    schema: String,
    relname: String,
    relkind: String,
    owner: pg_sys::Oid,
}

impl Table {
    fn find(relid: pg_sys::Oid) -> Self {
        Spi::connect(|client| {
            let row = client
                .select(
                    "SELECT c.oid::regclass::text, n.nspname::text, c.relname::text, c.relkind::text, c.relowner
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = $1",
                    Some(1),
                    &[relid.into()],
                )?
                .first();
            Ok::<_, pgrx::spi::Error>(row.get_heap_tuple()?.map(|r| -> pgrx::spi::Result<Table> {
                Ok(Table {
                    relid,
                    name: r.get(1)?.unwrap_or_default(),
                    schema: r.get(2)?.unwrap_or_default(),
                    relname: r.get(3)?.unwrap_or_default(),
                    relkind: r.get(4)?.unwrap_or_default(),
                    owner: r.get(5)?.expect("relowner is not null"),
                })
            }))
        })
        .expect("reading pg_class")
        .transpose()
        .expect("reading pg_class")
        .unwrap_or_else(|| {
            ReaperError::TableMissing { target: relid.to_u32().to_string() }.raise()
        })
    }

    fn qualified(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.relname)
        )
    }

    /// The expiry column's kind, or why the column cannot be one.
    fn column_kind(&self, column: &str) -> Result<ColumnKind, ReaperError> {
        let (type_oid, type_name) = Spi::get_two_with_args::<pg_sys::Oid, String>(
            "SELECT atttypid, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            &[self.relid.into(), column.into()],
        )
        .unwrap_or((None, None));
        // A placeholder zone: whether one is needed is decided by the caller.
        target::check_loaded(
            &self.name,
            &self.relkind,
            column,
            type_oid,
            type_name,
            &Some(String::new()),
        )
    }
}

/// The options of `reaper_register`, as given.
struct Options<'a> {
    column: &'a str,
    timezone: Option<&'a str>,
    grace: Option<Interval>,
    ttl: Option<Interval>,
    predicate: Option<&'a str>,
    batch_size: Option<i32>,
    schedule: Option<&'a str>,
    action: &'a str,
    enabled: bool,
    archive_table: Option<pg_sys::Oid>,
    update_set: Option<&'a str>,
}

impl Options<'_> {
    /// The rule's values, in the order both the target row and a repeated call take them:
    /// column, time zone, grace, ttl, predicate, batch size, schedule, action, enabled.
    fn rule_args(&self, timezone: Option<String>) -> Vec<DatumWithOid<'_>> {
        vec![
            self.column.into(),
            timezone.into(),
            self.grace.into(),
            self.ttl.into(),
            self.predicate.into(),
            self.batch_size.into(),
            self.schedule.into(),
            self.action.into(),
            self.enabled.into(),
        ]
    }
}

/// Checks every option against the table; returns the time zone to store.
fn validate(table: &Table, opts: &Options) -> Result<Option<String>, ReaperError> {
    let name = || table.name.clone();
    check_relkind(&table.name, &table.relkind)?;
    check_owner(&table.name, table.owner, "register")?;
    crate::reap::citus::check_registrable(&table.name, table.relid, opts.action)?;
    let kind = table.column_kind(opts.column)?;
    let timezone = resolve_timezone(table, opts, kind)?;
    for (option, value) in [("grace", opts.grace), ("ttl", opts.ttl)] {
        if value.is_some_and(|v| v.as_micros() < 0) {
            return Err(ReaperError::NegativeInterval {
                table: name(),
                option,
            });
        }
    }
    if let Some(batch_size) = opts.batch_size.filter(|b| *b <= 0) {
        return Err(ReaperError::BadBatchSize {
            table: name(),
            batch_size,
        });
    }
    if let Some(schedule) = opts.schedule {
        crate::reap::schedule::validate(schedule).map_err(|reason| ReaperError::BadSchedule {
            table: name(),
            schedule: schedule.to_string(),
            reason,
        })?;
    }
    let search_path = target::search_path_for(&table.schema);
    with_settings(&[("search_path", search_path)], || {
        if let Some(p) = opts.predicate {
            predicate::validate(&table.name, &table.qualified(), table.owner, p)?;
        }
        validate_action(table, opts)
    })?;
    Ok(timezone)
}

/// Checks the action and the options only some actions take.
fn validate_action(table: &Table, opts: &Options) -> Result<(), ReaperError> {
    let unused = |option| ReaperError::OptionUnused {
        table: table.name.clone(),
        action: opts.action.to_string(),
        option,
    };
    let needs = |action, option| ReaperError::ActionNeeds {
        table: table.name.clone(),
        action,
        option,
    };
    if opts.archive_table.is_some() && opts.action != "archive" {
        return Err(unused("archive_table"));
    }
    if opts.update_set.is_some() && opts.action != "update" {
        return Err(unused("update_set"));
    }
    match opts.action {
        "delete" => Ok(()),
        "archive" => {
            let archive = opts
                .archive_table
                .ok_or_else(|| needs("archive", "archive_table"))?;
            action::check_archive(&table.name, table.relid, table.owner, archive)
        }
        "update" => {
            let set = opts
                .update_set
                .ok_or_else(|| needs("update", "update_set"))?;
            // Without a predicate the updated rows would still be dead: updated on every run.
            opts.predicate
                .ok_or_else(|| needs("update", "a predicate that the update makes false"))?;
            action::check_update_set(&table.name, &table.qualified(), table.owner, set)
        }
        "drop_partitions" => {
            if opts.predicate.is_some() {
                return Err(ReaperError::PredicateWithDrop {
                    table: table.name.clone(),
                });
            }
            action::check_partitioning(&table.name, table.relid, opts.column)
        }
        other => Err(ReaperError::UnknownAction {
            table: table.name.clone(),
            action: other.into(),
        }),
    }
}

/// Wall-clock columns need a zone: the one given, or the session's TimeZone (said in a NOTICE,
/// since getting it wrong on a server west of UTC would delete live rows early). Absolute
/// columns must not be given one.
fn resolve_timezone(
    table: &Table,
    opts: &Options,
    kind: ColumnKind,
) -> Result<Option<String>, ReaperError> {
    if !kind.needs_timezone() {
        return match opts.timezone {
            Some(_) => Err(ReaperError::TimezoneNotApplicable {
                table: table.name.clone(),
                column: opts.column.to_string(),
            }),
            None => Ok(None),
        };
    }
    if let Some(tz) = opts.timezone {
        let known = catch_pg_error(|| {
            Spi::get_one_with_args::<bool>(
                "SELECT (now() AT TIME ZONE $1) IS NOT NULL",
                &[tz.into()],
            )
        });
        return match known {
            Ok(Ok(Some(true))) => Ok(Some(tz.to_string())),
            _ => Err(ReaperError::BadTimezone {
                table: table.name.clone(),
                timezone: tz.into(),
            }),
        };
    }
    let session_tz = Spi::get_one::<String>("SELECT current_setting('TimeZone')")
        .expect("reading TimeZone")
        .unwrap_or_else(|| "UTC".into());
    pgrx::notice!(
        "column \"{}\" of table \"{}\" holds wall-clock times: they are read in time zone \"{}\" (the current TimeZone); pass timezone => '...' if the application writes another zone",
        opts.column,
        table.name,
        session_tz
    );
    Ok(Some(session_tz))
}

/// Inserts or replaces the target row, as the extension's owner (the caller has no rights on
/// the extension's tables). Returns the target id.
fn upsert(table: &Table, opts: &Options, timezone: Option<String>) -> i64 {
    let query = format!(
        "INSERT INTO {}.reaper_target AS t
                (relid, column_name, timezone, grace, ttl, predicate, batch_size, schedule, action, enabled,
                 archive_table, update_set)
         VALUES ($1, $2, $3, coalesce($4, '0'::interval), $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (relid) DO UPDATE SET
                column_name = EXCLUDED.column_name, timezone = EXCLUDED.timezone, grace = EXCLUDED.grace,
                ttl = EXCLUDED.ttl, predicate = EXCLUDED.predicate, batch_size = EXCLUDED.batch_size,
                schedule = EXCLUDED.schedule, action = EXCLUDED.action, enabled = EXCLUDED.enabled,
                archive_table = EXCLUDED.archive_table, update_set = EXCLUDED.update_set,
                updated_at = now()
         RETURNING id",
        ext_schema()
    );
    let owner = ext_owner();
    as_role(owner, || {
        Spi::get_one_with_args::<i64>(
            &query,
            &[table.relid.into()]
                .into_iter()
                .chain(opts.rule_args(timezone))
                .chain([opts.archive_table.into(), opts.update_set.into()])
                .collect::<Vec<_>>(),
        )
    })
    .expect("writing reaper_target")
    .expect("INSERT … RETURNING returns the id")
}

/// reaper_register adds a table to the reaper, or replaces its rule; returns the target id.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn reaper_register_v2(
    target: Option<pg_sys::Oid>,
    column: Option<&CStr>,
    timezone: Option<&str>,
    grace: Option<Interval>,
    ttl: Option<Interval>,
    predicate: Option<&str>,
    batch_size: Option<i32>,
    schedule: Option<&str>,
    action: Option<&str>,
    enabled: Option<bool>,
    archive_table: Option<pg_sys::Oid>,
    update_set: Option<&str>,
) -> i64 {
    const F: &str = "reaper_register";
    let target = given(target, F, "target");
    let column = given(column, F, "column").to_string_lossy();
    let action = given(action, F, "action");
    let enabled = given(enabled, F, "enabled");
    pinned(|| {
        let table = Table::find(target);
        let opts = Options {
            column: &column,
            timezone,
            grace,
            ttl,
            predicate,
            batch_size,
            schedule,
            action,
            enabled,
            archive_table,
            update_set,
        };
        let timezone = validate(&table, &opts).or_raise();
        crate::shared::hooks::wake_worker_at_commit();
        let id = upsert(&table, &opts, timezone.clone());
        register_on_workers(&table, &opts, timezone);
        id
    })
}

/// On a Citus coordinator, registers a distributed table on every worker node too, with the
/// same options and the time zone resolved here.
fn register_on_workers(table: &Table, opts: &Options, timezone: Option<String>) {
    cluster::on_workers_for(table.relid, |schema, name| {
        Spi::get_one_with_args::<String>(
            "SELECT format('SELECT %s.reaper_register(%s::pg_catalog.regclass, %L::pg_catalog.name,
                            timezone => %L::pg_catalog.text, grace => %L::pg_catalog.interval,
                            ttl => %L::pg_catalog.interval, predicate => %L::pg_catalog.text,
                            batch_size => %L::pg_catalog.int4, schedule => %L::pg_catalog.text,
                            action => %L::pg_catalog.text, enabled => %L::pg_catalog.bool)',
                           $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[schema.into(), name.into()]
                .into_iter()
                .chain(opts.rule_args(timezone.clone()))
                .collect::<Vec<_>>(),
        )
        .expect("composing the call for the worker nodes")
        .expect("format() returns text")
    });
}

/// The value of an argument that has no meaning as NULL, or the error that names it: a NULL
/// target, column, action or switch is a mistake, never a request for the default (issue 17
/// item 13).
fn given<T>(value: Option<T>, function: &'static str, argument: &'static str) -> T {
    value.unwrap_or_else(|| ReaperError::NullArgument { function, argument }.raise())
}

/// The registered target of a table the caller may manage, or the error that says why not.
pub fn managed_target(relid: pg_sys::Oid, action: &'static str) -> target::Registered {
    let registered = target::load(Some(relid))
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            ReaperError::NotRegistered {
                table: crate::shared::sql::relation_name(relid),
            }
            .raise()
        });
    // A target whose table is gone has no owner left to ask: only a superuser may clean it up.
    let owner = registered
        .owner
        .unwrap_or(crate::shared::security::superuser_role());
    check_owner(&registered.name, owner, action).or_raise();
    registered
}

/// reaper_unregister removes a table's target; its run history stays until it ages out.
#[pg_extern(sql = false)]
fn reaper_unregister(target: Option<pg_sys::Oid>) {
    let target = given(target, "reaper_unregister", "target");
    pinned(|| {
        let registered = managed_target(target, "unregister");
        crate::shared::hooks::wake_worker_at_commit();
        let query = format!("DELETE FROM {}.reaper_target WHERE id = $1", ext_schema());
        as_role(ext_owner(), || {
            Spi::run_with_args(&query, &[registered.id.into()])
        })
        .expect("writing reaper_target");
        cluster::on_workers_for(target, |schema, name| {
            format!("SELECT pg_catalog.count({schema}.reaper_unregister(target)) FROM {schema}.reaper_stats() WHERE {}", cluster::target_is(name))
        });
    })
}

/// reaper_enable switches a target on or off without forgetting its rule.
#[pg_extern(sql = false)]
fn reaper_enable(target: Option<pg_sys::Oid>, enabled: Option<bool>) {
    let target = given(target, "reaper_enable", "target");
    let enabled = given(enabled, "reaper_enable", "enabled");
    pinned(|| {
        let registered = managed_target(target, "enable or disable");
        target::set_enabled(registered.id, enabled);
        cluster::on_workers_for(target, |schema, name| {
            format!("SELECT pg_catalog.count({schema}.reaper_enable(target, {enabled})) FROM {schema}.reaper_stats() WHERE {}", cluster::target_is(name))
        });
    })
}
