//! sql.rs — small helpers for building SQL text safely and reading the extension's own catalog.
//!
//! Generated statements never splice a user's value in raw: identifiers go through Postgres'
//! own `quote_identifier`, values through `quote_literal_cstr`. Internal queries run with
//! `search_path` pinned to `pg_catalog, pg_temp` (see [`pinned`]), so a function or operator
//! someone planted earlier on the caller's path is never picked up.

use crate::shared::errors::ReaperError;
use crate::shared::security::with_settings;
use pgrx::prelude::*;
use pgrx::spi::{self, OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};

/// The search path every internal query runs under.
pub const INTERNAL_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Quotes an identifier the way Postgres does (only when needed).
pub fn quote_ident(ident: &str) -> String {
    let c = CString::new(ident).expect("identifiers have no NUL");
    // SAFETY: quote_identifier returns its argument or a palloc'd copy, both valid C strings.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// Quotes a value as a SQL string literal.
pub fn quote_literal(value: &str) -> String {
    let c = CString::new(value).expect("literals have no NUL");
    // SAFETY: quote_literal_cstr returns a palloc'd, NUL-terminated copy.
    unsafe { CStr::from_ptr(pg_sys::quote_literal_cstr(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// Runs `f` with the internal search path, and the interval and date styles the generated SQL
/// is written in: intervals, partition bounds and cursor keys are read as text and spliced
/// back as literals, which must read back as the same value whatever the caller's settings.
/// (A non-ISO DateStyle prints zone abbreviations, and `IST` of Europe/Dublin reads back as
/// Israel's: a partition bound an hour early.)
pub fn pinned<R>(f: impl FnOnce() -> R) -> R {
    let mut settings = vec![
        ("search_path", INTERNAL_SEARCH_PATH.to_string()),
        ("IntervalStyle", "postgres".to_string()),
        ("DateStyle", "ISO, YMD".to_string()),
    ];
    // Citus hides its shards from queries on pg_class; the reaper reads their sizes there.
    if setting_exists(c"citus.override_table_visibility") {
        settings.push(("citus.override_table_visibility", "off".to_string()));
    }
    with_settings(&settings, f)
}

/// Whether a setting is defined in this process (an extension's, once its library is loaded).
fn setting_exists(name: &CStr) -> bool {
    // SAFETY: a lookup by name; missing_ok, so NULL for an unknown setting.
    !unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) }.is_null()
}

pub use crate::shared::LIBRARY_VERSION;

thread_local! {
    /// The plans [`kept_plan`] prepared in this process, by query text.
    static KEPT_PLANS: RefCell<HashMap<String, &'static OwnedPreparedStatement>> = RefCell::default();
}

/// The plan of `query` (with parameters of types `args`), prepared once in this process and
/// kept across transactions (`SPI_keepplan`), for the queries the worker runs on every batch:
/// planning the registry's join cost more than running it. Postgres' plan cache plans it again
/// when a relation it reads changes or the search path differs, reading its names afresh, so
/// a kept plan never reads a dropped or re-created table. Kept until the process exits (never
/// freed: the query texts are a handful).
pub fn kept_plan(
    client: &SpiClient<'_>,
    query: &str,
    args: &[PgOid],
) -> spi::Result<&'static OwnedPreparedStatement> {
    if let Some(plan) = KEPT_PLANS.with(|plans| plans.borrow().get(query).copied()) {
        return Ok(plan);
    }
    let plan: &'static OwnedPreparedStatement =
        Box::leak(Box::new(client.prepare(query, args)?.keep()));
    KEPT_PLANS.with(|plans| plans.borrow_mut().insert(query.to_string(), plan));
    Ok(plan)
}

/// The version of the extension's SQL objects in this database, if it is installed.
pub fn installed_version() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT (SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'session_reaper')",
    )
    .expect("reading pg_extension")
}

/// Whether session_reaper is installed, for a worker transaction that goes on to read and
/// write the extension's tables; called first thing in it. The extension is locked (in the
/// mode that only DROP EXTENSION's lock conflicts with) until the transaction ends: a DROP
/// EXTENSION that comes meanwhile waits for the transaction instead of removing those tables
/// under it, and one that committed while this waited is seen, and the answer is false.
/// The wait has no `lock_timeout`: only an uncommitted DROP EXTENSION holds it up, the worker
/// holds no other lock yet, so nobody waits for it, and a SIGTERM still ends it.
pub fn hold_extension() -> bool {
    const NAME: &CStr = c"session_reaper";
    // SAFETY: catalog look-ups by name (missing_ok) and a lock on the object found, inside the
    // caller's transaction. Taking the lock reads the invalidations it waited for, so the
    // second look-up sees a DROP that committed meanwhile.
    unsafe {
        let found = pg_sys::get_extension_oid(NAME.as_ptr(), true);
        found != pg_sys::InvalidOid && {
            with_settings(&[("lock_timeout", "0".to_string())], || {
                pg_sys::LockDatabaseObject(
                    pg_sys::ExtensionRelationId,
                    found,
                    0,
                    pg_sys::AccessShareLock as pg_sys::LOCKMODE,
                )
            });
            pg_sys::get_extension_oid(NAME.as_ptr(), true) == found
        }
    }
}

/// The version installed, as [`installed_version`], with the extension held ([`hold_extension`]).
pub fn held_version() -> Option<String> {
    hold_extension().then(installed_version).flatten()
}

/// The quoted schema the extension was installed into, to qualify its tables with. Raises an
/// ERROR while the SQL objects are of an older version than the library (between installing a
/// new package and `ALTER EXTENSION session_reaper UPDATE`): their tables lack what this code
/// reads and writes.
pub fn ext_schema() -> String {
    let (schema, version) = Spi::connect(|client| {
        let plan = kept_plan(
            client,
            "SELECT n.nspname::text, e.extversion::text FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'session_reaper'",
            &[],
        )?;
        let found = client.select(plan, Some(1), &[])?;
        match found.is_empty() {
            true => Ok((None, None)),
            false => found.first().get_two::<String, String>(),
        }
    })
    .expect("reading pg_extension");
    let schema = schema.expect("session_reaper is installed when its functions run");
    if let Some(installed) = version.filter(|v| v != LIBRARY_VERSION) {
        ReaperError::OldVersion { installed }.raise();
    }
    quote_ident(&schema)
}

/// The owner of the extension's tables: writes to them run as this role.
pub fn ext_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'session_reaper'",
    )
    .expect("reading pg_extension")
    .expect("session_reaper is installed when its functions run")
}

/// The name of a relation as `schema.table`, quoted where needed, or its OID when it is gone.
pub fn relation_name(relid: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| relid.to_u32().to_string())
}

/// A role's name, quoted where needed.
pub fn role_name(role: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT $1::pg_catalog.regrole::text", &[role.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| role.to_u32().to_string())
}
