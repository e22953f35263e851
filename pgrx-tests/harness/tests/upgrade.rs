//! Upgrading from the previous release the way a DBA does: the new package (library and
//! scripts) goes in while databases still hold the 0.1.0 objects, the server restarts, and
//! `ALTER EXTENSION session_reaper UPDATE` brings each database to the new version.
//!
//! `pgrx-tests/upgrade/session_reaper--<version>.sql` are the install scripts earlier releases
//! shipped (as `cargo pgrx schema` wrote them at that release); the tests put them next to the
//! installed extension so that `CREATE EXTENSION ... VERSION '<version>'` can build the old
//! objects. Each earlier release is upgraded from: a DBA may skip releases, and the update
//! then runs every upgrade script in turn.

use session_reaper_harness::{count, pg_bin, sessions_table, wait_until, Cluster};
use std::process::Command;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

/// Installs an earlier release's install script beside the current one.
fn install_previous_script(previous: &str) {
    let sharedir = Command::new(format!("{}/pg_config", pg_bin()))
        .arg("--sharedir")
        .output()
        .expect("pg_config --sharedir");
    let sharedir = String::from_utf8_lossy(&sharedir.stdout).trim().to_string();
    let script = format!("session_reaper--{previous}.sql");
    let from = format!("{}/../upgrade/{script}", env!("CARGO_MANIFEST_DIR"));
    let to = format!("{sharedir}/extension/{script}");
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {from} to {to}: {e}"));
}

/// Every object of the extension in the connected database, described in a way that does not
/// depend on OIDs: columns, constraints, views, functions, event triggers, and their comments.
fn extension_objects(db: &mut postgres::Client) -> Vec<String> {
    db.query(
        "WITH ext AS (
           SELECT d.classid, d.objid FROM pg_depend d
            WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
              AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'session_reaper'))
         SELECT format('column %s.%s %s notnull=%s default=%s', c.relname, a.attname,
                       format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid))
           FROM ext JOIN pg_class c ON ext.classid = 'pg_class'::regclass AND c.oid = ext.objid
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
         UNION ALL
         SELECT format('constraint %s.%s %s', c.relname, con.conname, pg_get_constraintdef(con.oid))
           FROM ext JOIN pg_class c ON ext.classid = 'pg_class'::regclass AND c.oid = ext.objid
           JOIN pg_constraint con ON con.conrelid = c.oid
         UNION ALL
         SELECT format('relation %s %s %s comment=%s options=%s', c.relname, c.relkind,
                       pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class'), c.reloptions)
           FROM ext JOIN pg_class c ON ext.classid = 'pg_class'::regclass AND c.oid = ext.objid
         UNION ALL
         SELECT format('function %s(%s) returns %s security_definer=%s config=%s strict=%s src=%s comment=%s acl=%s',
                       p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                       p.prosecdef, p.proconfig, p.proisstrict, p.prosrc,
                       obj_description(p.oid, 'pg_proc'), p.proacl)
           FROM ext JOIN pg_proc p ON ext.classid = 'pg_proc'::regclass AND p.oid = ext.objid
         UNION ALL
         SELECT format('acl %s %s', c.relname, c.relacl)
           FROM ext JOIN pg_class c ON ext.classid = 'pg_class'::regclass AND c.oid = ext.objid
         UNION ALL
         SELECT format('event trigger %s on %s %s tags=%s enabled=%s comment=%s', e.evtname, e.evtevent,
                       e.evtfoid::regproc, e.evttags, e.evtenabled, obj_description(e.oid, 'pg_event_trigger'))
           FROM ext JOIN pg_event_trigger e ON ext.classid = 'pg_event_trigger'::regclass AND e.oid = ext.objid
         ORDER BY 1",
        &[],
    )
    .expect("describing the extension's objects")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn alter_extension_update_from_0_1_0_keeps_targets_and_reaps_again() {
    upgrade_from("0.1.0");
}

#[test]
fn alter_extension_update_from_0_2_0_keeps_targets_and_reaps_again() {
    upgrade_from("0.2.0");
}

#[test]
fn alter_extension_update_from_0_3_0_keeps_targets_and_reaps_again() {
    upgrade_from("0.3.0");
}

fn upgrade_from(previous: &str) {
    install_previous_script(previous);
    let pg = Cluster::start(
        &format!("upgrade_{}", previous.replace('.', "_")),
        &["reaper.interval = '1s'"],
    );
    let mut db = pg.connect("postgres");
    db.batch_execute(&format!(
        "CREATE EXTENSION session_reaper VERSION '{previous}'"
    ))
    .unwrap();
    sessions_table(&mut db, "sessions", 5_000, 1_000);
    // The registry as the old reaper_register left it (the old library is not here to call).
    let id: i64 = db
        .query_one(
            "INSERT INTO reaper_target (relid, column_name, batch_size, schedule)
             VALUES ('sessions', 'expires_at', 500, '1 second') RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);

    // The new library with the old objects: the worker says what to do and leaves the rows.
    wait_until("the worker asked for ALTER EXTENSION UPDATE", SOON, || {
        pg.log().contains("ALTER EXTENSION session_reaper UPDATE")
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE expires_at < now()"
        ),
        5_000
    );
    // Functions whose signature changed and those whose did not both say so too. (0.3.0's
    // reaper_stats() reads what 0.4.0's does, and keeps working until the update.)
    let reaper_stats = (previous != "0.3.0").then_some("SELECT * FROM reaper_stats()");
    let calls = [
        "SELECT reaper_register('sessions')",
        "SELECT * FROM reaper_purge()",
    ];
    for call in reaper_stats.into_iter().chain(calls) {
        let error = db.query(call, &[]).unwrap_err();
        let error = error.as_db_error().expect("a database error");
        assert_eq!(error.code().code(), "55000", "{call}: {error}");
        assert!(error.message().contains(previous), "{call}: {error}");
        assert_eq!(
            error.hint(),
            Some("Update it: ALTER EXTENSION session_reaper UPDATE;"),
            "{call}"
        );
    }

    db.batch_execute("ALTER EXTENSION session_reaper UPDATE")
        .unwrap();
    let version: String = db
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'session_reaper'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(version, previous);
    // The target kept its id and its options, and the worker reaps it without being told.
    assert_eq!(
        count(
            &mut db,
            "SELECT id FROM reaper_targets WHERE target = 'sessions'::regclass AND batch_size = 500 AND schedule = '1 second'"
        ),
        id
    );
    wait_until("the worker reaped after the update", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE expires_at < now()",
        ) == 0
    });
    assert_eq!(count(&mut db, "SELECT count(*) FROM sessions"), 1_000);
    // What the new version added works on the upgraded objects.
    db.batch_execute(
        "CREATE TABLE sessions_archive (LIKE sessions);
         SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive');",
    )
    .unwrap();

    // The upgraded objects are exactly what a fresh install of the new version creates.
    db.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = pg.connect("fresh");
    fresh
        .batch_execute("CREATE EXTENSION session_reaper")
        .unwrap();
    let (upgraded, installed) = (extension_objects(&mut db), extension_objects(&mut fresh));
    let differences: Vec<_> = upgraded
        .iter()
        .filter(|o| !installed.contains(o))
        .map(|o| format!("only after the upgrade: {o}"))
        .chain(
            installed
                .iter()
                .filter(|o| !upgraded.contains(o))
                .map(|o| format!("only in a fresh install: {o}")),
        )
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(upgraded.len() > 30, "described {} objects", upgraded.len());
}
