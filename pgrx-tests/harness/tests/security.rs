//! Who may do what, end to end: real login roles over their own connections, the worker acting
//! as the table's owner, and hostile objects planted on the search path. (The `#[pg_test]`s in
//! src/api/tests.rs check the same refusals with SET ROLE inside one transaction; here the history
//! rows come from the worker and every role has its own session, temporary schema included.)

use session_reaper_harness::{count, error_of, sessions_table, wait_until, with_reaper, SOON};

/// Every way into another owner's target is refused, and the views show a role only the
/// targets of tables it may read; the extension's tables are closed to everyone else.
#[test]
fn another_role_can_neither_manage_nor_see_a_target_it_may_not_read() {
    let (pg, mut admin) = with_reaper("sec_roles", &["reaper.interval = '1s'"]);
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
             CREATE SCHEMA app AUTHORIZATION alice;
             GRANT USAGE ON SCHEMA app TO bob, carol;",
        )
        .unwrap();
    let mut alice = pg.connect_as("postgres", "alice");
    sessions_table(&mut alice, "app.sessions", 100, 10);
    alice
        .batch_execute(
            "SELECT reaper_register('app.sessions');
             GRANT SELECT ON app.sessions TO carol;",
        )
        .unwrap();
    wait_until("the worker reaped alice's table as alice", SOON, || {
        count(
            &mut alice,
            "SELECT count(*) FROM reaper_history WHERE rows = 100",
        ) == 1
    });
    let mut bob = pg.connect_as("postgres", "bob");
    let mut carol = pg.connect_as("postgres", "carol");
    for (who, client) in [("bob", &mut bob), ("carol", &mut carol)] {
        for call in [
            "SELECT reaper_register('app.sessions')",
            "SELECT reaper_purge('app.sessions')",
            "SELECT reaper_enable('app.sessions', false)",
            "SELECT reaper_unregister('app.sessions')",
            "SELECT * FROM reaper_dry_run('app.sessions')",
        ] {
            let (code, message) = error_of(client.batch_execute(call));
            assert_eq!(code, "42501", "{who}: {call}: {message}");
            assert!(
                message.contains("must be owner of table \"app.sessions\""),
                "{who}: {call}: {message}"
            );
        }
        // Purging "everything I own" touches nothing of alice's.
        assert_eq!(count(client, "SELECT count(*) FROM reaper_purge()"), 0);
        for direct in [
            "SELECT * FROM reaper_run",
            "SELECT * FROM reaper_state",
            "DELETE FROM reaper_target",
            "INSERT INTO reaper_run SELECT * FROM reaper_run",
        ] {
            let (code, message) = error_of(client.batch_execute(direct));
            assert_eq!(code, "42501", "{who}: {direct}: {message}");
        }
    }
    // bob may not read the table: he sees nothing of it. carol may: she sees it.
    for (sql, bob_sees, carol_sees) in [
        ("SELECT count(*) FROM reaper_targets", 0, 1),
        ("SELECT count(*) FROM reaper_stats()", 0, 1),
        ("SELECT count(*) FROM reaper_target_stats", 0, 1),
        ("SELECT count(DISTINCT target) FROM reaper_history", 0, 1),
    ] {
        assert_eq!(count(&mut bob, sql), bob_sees, "bob: {sql}");
        assert_eq!(count(&mut carol, sql), carol_sees, "carol: {sql}");
    }
    // Nothing was changed by the refused calls.
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM reaper_targets WHERE enabled"
        ),
        1
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM app.sessions"), 10);

    // No extension function is SECURITY DEFINER without a pinned search_path, and every pinned
    // path names pg_temp last (unlisted, pg_temp is searched first for tables and types).
    let functions = "SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e' WHERE e.extname = 'session_reaper'";
    // 11 of the API (reaper_cluster_stats among them), and the DDL event triggers' two plpgsql
    // functions and the two Rust functions they call (sql/ddl.sql).
    assert_eq!(
        count(&mut admin, functions),
        15,
        "the extension's functions are found"
    );
    assert_eq!(
        count(
            &mut admin,
            &format!(
                "{functions} AND p.prosecdef AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')"
            )
        ),
        0,
        "a SECURITY DEFINER function without a pinned search_path"
    );
    assert_eq!(
        count(&mut admin, &format!("{functions} AND p.prosecdef")),
        0,
        "README says no function is SECURITY DEFINER"
    );
    let unpinned_temp: Vec<String> = admin
        .query(
            "SELECT p.proname::text || ': ' || c
               FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
               JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e',
                    unnest(p.proconfig) c
              WHERE e.extname = 'session_reaper' AND c LIKE 'search_path=%' AND c NOT LIKE '%, pg_temp'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        unpinned_temp.is_empty(),
        "search_path without pg_temp last: {unpinned_temp:?}"
    );
}

/// The worker deletes as the table's owner, so it removes exactly what the owner's own
/// `DELETE … WHERE expires_at < now()` would: with FORCE ROW LEVEL SECURITY the owner's
/// policies bind it and dead rows the policy hides from the owner stay; without FORCE the owner
/// is exempt from its table's policies and every dead row goes.
#[test]
fn the_worker_is_bound_by_row_level_security_as_the_owner_is() {
    let (_pg, mut db) = with_reaper("sec_rls", &["reaper.interval = '1s'"]);
    db.batch_execute("CREATE ROLE tenant_owner").unwrap();
    for (table, force) in [("forced", true), ("unforced", false)] {
        db.batch_execute(&format!(
            "CREATE TABLE {table} (tenant text NOT NULL, expires_at timestamptz NOT NULL);
             INSERT INTO {table} SELECT t, now() - interval '1 hour' FROM unnest(ARRAY['mine', 'theirs']) t, generate_series(1, 50);
             INSERT INTO {table} SELECT t, now() + interval '1 hour' FROM unnest(ARRAY['mine', 'theirs']) t, generate_series(1, 5);
             ALTER TABLE {table} OWNER TO tenant_owner;
             ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
             {force}
             CREATE POLICY only_mine ON {table} USING (tenant = 'mine');
             SELECT reaper_register('{table}');",
            force = if force { format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY;") } else { String::new() }
        ))
        .unwrap();
    }
    // postgres is a superuser: it sees every row whatever the policies say.
    wait_until("both tables had a run that deleted rows", SOON, || {
        count(
            &mut db,
            "SELECT count(DISTINCT target) FROM reaper_history WHERE rows > 0",
        ) == 2
    });
    wait_until("a later run of both found nothing more", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM reaper_stats() WHERE total_runs >= 3 AND last_status = 'ok'",
        ) == 2
    });
    let left = |db: &mut postgres::Client, table: &str, tenant: &str, dead: bool| {
        count(
            db,
            &format!(
                "SELECT count(*) FROM {table} WHERE tenant = '{tenant}' AND (expires_at < now()) = {dead}"
            ),
        )
    };
    assert_eq!(
        left(&mut db, "forced", "mine", true),
        0,
        "visible dead rows went"
    );
    assert_eq!(
        left(&mut db, "forced", "theirs", true),
        50,
        "dead rows the owner's policy hides stay"
    );
    assert_eq!(left(&mut db, "unforced", "mine", true), 0);
    assert_eq!(
        left(&mut db, "unforced", "theirs", true),
        0,
        "without FORCE the owner, and so the worker, is exempt from the policy"
    );
    for table in ["forced", "unforced"] {
        for tenant in ["mine", "theirs"] {
            assert_eq!(left(&mut db, table, tenant, false), 5, "live rows stay");
        }
    }
    assert_eq!(
        count(
            &mut db,
            "SELECT total_deleted FROM reaper_stats() WHERE target = 'forced'::regclass"
        ),
        50
    );
}

/// Objects named like the ones the extension's SQL uses — `now()`, `<` for timestamptz, `=` for
/// tid, in the table's schema and in public; catalog tables and the predicate's table shadowed
/// by temporary views — are never resolved by the worker or by another role's call of
/// reaper_stats/reaper_dry_run/reaper_purge or the views. Each hostile object logs a WARNING
/// and a row naming current_user when it runs; a first call on purpose shows that it would.
#[test]
fn hostile_objects_on_the_search_path_never_run_with_borrowed_rights() {
    let (pg, mut admin) = with_reaper("sec_hostile", &["reaper.interval = '1s'"]);
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN; CREATE ROLE mallory LOGIN;
             CREATE SCHEMA app AUTHORIZATION alice;
             GRANT CREATE ON SCHEMA public TO alice, mallory;
             CREATE TABLE public.hostile_calls (who name, session name, what text);
             GRANT INSERT, SELECT ON public.hostile_calls TO PUBLIC;
             CREATE FUNCTION public.hostile_log(what text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO public.hostile_calls VALUES (current_user, session_user, what);
               RAISE WARNING 'HOSTILE % ran as %', what, current_user;
               RETURN true;
             END $$;",
        )
        .unwrap();
    let mut alice = pg.connect_as("postgres", "alice");
    alice
        .batch_execute(
            "GRANT USAGE, CREATE ON SCHEMA app TO mallory;
             CREATE TABLE app.revoked (token text);
             INSERT INTO app.revoked VALUES ('dead-but-revoked');
             GRANT SELECT ON app.revoked TO mallory;",
        )
        .unwrap();
    sessions_table(&mut alice, "app.sessions", 200, 20);
    sessions_table(&mut alice, "public.tokens", 200, 20);
    sessions_table(&mut alice, "app.secret", 10, 0);
    alice
        .batch_execute(
            "UPDATE app.sessions SET token = 'dead-but-revoked' WHERE id = 1;
             GRANT SELECT ON app.sessions, public.tokens TO mallory;",
        )
        .unwrap();
    // mallory plants, in both schemas on alice's tables' paths, what a careless lookup would
    // find: now() returning infinity and a `<` that is always true would delete live rows.
    let mut mallory = pg.connect_as("postgres", "mallory");
    for schema in ["app", "public"] {
        mallory
            .batch_execute(&format!(
                "CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
                 BEGIN PERFORM public.hostile_log('{schema}.now()'); RETURN 'infinity'; END $$;
                 CREATE FUNCTION {schema}.lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN RETURN public.hostile_log('{schema}.<'); END $$;
                 CREATE OPERATOR {schema}.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = {schema}.lt);
                 CREATE FUNCTION {schema}.eq(tid, tid) RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN RETURN public.hostile_log('{schema}.='); END $$;
                 CREATE OPERATOR {schema}.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = {schema}.eq);"
            ))
            .unwrap();
    }
    // Her own session's temporary schema shadows the catalog tables reaper_can_see() reads and
    // the table alice's predicate names, with views that run a function as whoever reads them.
    mallory
        .batch_execute(
            "CREATE TEMP VIEW pg_class AS SELECT oid, relowner FROM pg_catalog.pg_class WHERE NOT public.hostile_log('pg_temp.pg_class');
             CREATE TEMP VIEW pg_roles AS SELECT oid, rolname, public.hostile_log('pg_temp.pg_roles') AS rolsuper FROM pg_catalog.pg_roles;
             CREATE TEMP VIEW revoked AS SELECT token FROM app.revoked WHERE public.hostile_log('pg_temp.revoked');
             GRANT SELECT ON pg_class, pg_roles, revoked TO PUBLIC;
             CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;",
        )
        .unwrap();
    // The traps work: resolved on purpose, they run and are recorded.
    mallory
        .batch_execute("SET search_path = app, pg_catalog; SELECT now() < now(); RESET search_path; SELECT count(*) FROM revoked;")
        .unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(DISTINCT what) FROM hostile_calls WHERE who = 'mallory'"
        ),
        3,
        "the planted objects run when resolved"
    );
    admin.batch_execute("TRUNCATE hostile_calls").unwrap();
    let log_before = pg.log().len();

    // alice registers, the predicate naming a table of her schema unqualified.
    alice
        .batch_execute(
            "SELECT reaper_register('app.sessions', predicate => 'NOT EXISTS (SELECT 1 FROM revoked r WHERE r.token = sessions.token)');
             SELECT reaper_register('public.tokens');
             SELECT reaper_register('app.secret');",
        )
        .unwrap();
    wait_until("the worker reaped alice's tables as alice", SOON, || {
        count(
            &mut admin,
            "SELECT count(*) FROM app.sessions WHERE expires_at < now()",
        ) == 1
            && count(
                &mut admin,
                "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
            ) == 0
            && count(
                &mut admin,
                "SELECT count(DISTINCT target) FROM reaper_history",
            ) == 3
    });
    // alice, and a superuser, call everything with the planted schemas first on their path.
    for client in [&mut alice, &mut admin] {
        client
            .batch_execute(
                "SET search_path = app, public, pg_catalog;
                 SELECT * FROM reaper_dry_run();
                 SELECT * FROM reaper_purge();
                 SELECT * FROM reaper_stats();
                 SELECT * FROM reaper_history;
                 RESET search_path;",
            )
            .unwrap();
    }
    // mallory reads what she may, with her shadows in place and the planted schemas first.
    mallory
        .batch_execute("SET search_path = app, public, pg_catalog")
        .unwrap();
    for (sql, sees) in [
        ("SELECT count(*) FROM reaper_targets", 2),
        ("SELECT count(*) FROM reaper_stats()", 2),
        (
            "SELECT count(*) FROM reaper_stats() WHERE oldest_dead_age IS NULL AND dead_rows_estimate IS NOT NULL",
            2,
        ),
        ("SELECT count(DISTINCT target) FROM reaper_history", 2),
        ("SELECT count(*) FROM reaper_purge()", 0),
    ] {
        assert_eq!(count(&mut mallory, sql), sees, "mallory: {sql}");
    }
    let (code, _) = error_of(mallory.batch_execute("SELECT reaper_purge('app.sessions')"));
    assert_eq!(code, "42501");
    // Another run of the worker after all that.
    admin
        .batch_execute("INSERT INTO public.tokens (token, expires_at) VALUES ('dead', now() - interval '1 minute')")
        .unwrap();
    wait_until("the worker reaped again", SOON, || {
        count(
            &mut admin,
            "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
        ) == 0
    });

    let calls: Vec<String> = admin
        .query(
            "SELECT format('%s ran as %s in a session of %s', what, who, session) FROM hostile_calls",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(calls.is_empty(), "hostile objects ran: {calls:?}");
    let log = pg.log()[log_before..].to_string();
    assert!(
        !log.contains("HOSTILE"),
        "hostile objects ran (even in a rolled-back transaction): {log}"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM app.sessions WHERE expires_at > now()"
        ),
        20,
        "live rows stay"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM app.sessions WHERE token = 'dead-but-revoked'"
        ),
        1,
        "the predicate read alice's app.revoked, not mallory's shadow"
    );
}
