//! The actions beyond delete run by the background worker on committed data: archive,
//! update (soft expiry) and drop_partitions, on a hand-made partition set and on one made by
//! pg_partman (Debian's postgresql-15-partman, installed by scripts/setup.sh).

use session_reaper_harness::{count, sessions_table, wait_until, with_reaper};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

const EVERY_SECOND: &[&str] = &["reaper.interval = '1s'"];

/// The partitions of `table`, by name.
fn partitions(db: &mut postgres::Client, table: &str) -> Vec<String> {
    db.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = $1::text::regclass ORDER BY 1",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn the_worker_archives_and_soft_expires_dead_rows_and_leaves_live_ones() {
    let (pg, mut db) = with_reaper("actions", EVERY_SECOND);
    sessions_table(&mut db, "sessions", 20_000, 5_000);
    sessions_table(&mut db, "logins", 8_000, 2_000);
    db.batch_execute(
        "CREATE TABLE sessions_archive (LIKE sessions, archived_at timestamptz NOT NULL DEFAULT now());
         ALTER TABLE logins ADD COLUMN ended_at timestamptz;
         SELECT reaper_register('sessions', action => 'archive', archive_table => 'sessions_archive',
                                batch_size => 3000);
         SELECT reaper_register('logins', action => 'update', update_set => 'ended_at = expires_at',
                                predicate => 'ended_at IS NULL', batch_size => 3000);",
    )
    .unwrap();
    wait_until("the worker archived every dead session", SOON, || {
        count(&mut db, "SELECT count(*) FROM sessions_archive") == 20_000
    });
    wait_until("the worker ended every dead login", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM logins WHERE ended_at IS NOT NULL",
        ) == 8_000
    });
    // Moved whole: each archived row is a dead one, once; the live ones stayed.
    assert_eq!(
        count(
            &mut db,
            "SELECT count(DISTINCT id) FROM sessions_archive WHERE token = 'dead'"
        ),
        20_000
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM sessions"), 5_000);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM logins WHERE token = 'live' AND ended_at IS NULL"
        ),
        2_000
    );
    // Later runs find nothing more to update: the predicate keeps it idempotent.
    db.batch_execute("SELECT reaper_wake()").unwrap();
    let runs = "SELECT count(*) FROM reaper_history WHERE target = 'logins'::regclass";
    let before = count(&mut db, runs);
    wait_until("the worker ran the update again", SOON, || {
        count(&mut db, runs) > before
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT sum(rows)::bigint FROM reaper_history WHERE target = 'logins'::regclass"
        ),
        8_000
    );
    let log = pg.log();
    assert!(log.contains("public.sessions: archived"), "{log}");
    assert!(log.contains("public.logins: updated"), "{log}");
}

#[test]
fn the_worker_drops_dead_pg_partman_partitions_and_maintenance_goes_on() {
    let (pg, mut db) = with_reaper("partman", EVERY_SECOND);
    db.batch_execute(
        "CREATE SCHEMA partman;
         CREATE EXTENSION pg_partman SCHEMA partman;
         CREATE TABLE public.tokens (id bigint, expires_at timestamptz NOT NULL)
             PARTITION BY RANGE (expires_at);
         CREATE INDEX ON public.tokens (expires_at);
         SELECT partman.create_parent('public.tokens', 'expires_at', 'native', 'daily', p_premake := 2,
                                      p_start_partition := (now() - interval '5 days')::date::text);
         INSERT INTO tokens SELECT g, date_trunc('day', now()) - interval '5 days' + g * interval '1 minute'
           FROM generate_series(0, 7 * 1440 - 1) g;
         INSERT INTO tokens VALUES (-1, now() - interval '60 days');",
    )
    .unwrap();
    // The rows live now; one a minute expires while the test runs, so at the end those still
    // live must all be there, and nothing else.
    db.batch_execute(
        "CREATE TABLE live_at_start AS SELECT id, expires_at FROM tokens WHERE expires_at >= now()",
    )
    .unwrap();
    let before = partitions(&mut db, "tokens");
    assert_eq!(before.len(), 9, "{before:?}");
    db.batch_execute("SELECT reaper_register('tokens', action => 'drop_partitions')")
        .unwrap();
    wait_until(
        "the worker dropped the dead days and reaped the rest",
        SOON,
        || {
            count(
                &mut db,
                "SELECT count(*) FROM tokens WHERE expires_at < now()",
            ) == 0
        },
    );
    // The five past days went whole; today, the days ahead and the default partition stay.
    let after = partitions(&mut db, "tokens");
    assert_eq!(before[0], "tokens_default");
    let mut kept = vec![before[0].clone()];
    kept.extend_from_slice(&before[6..]);
    assert_eq!(after, kept);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM live_at_start l WHERE l.expires_at >= now() AND NOT EXISTS (SELECT FROM tokens t WHERE t.id = l.id)"
        ),
        0,
        "a live row was deleted"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM tokens t WHERE NOT EXISTS (SELECT FROM live_at_start l WHERE l.id = t.id)"
        ),
        0
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT sum(partitions_dropped)::bigint FROM reaper_history WHERE target = 'tokens'::regclass"
        ),
        5
    );
    assert!(pg.log().contains("dropped 5 partitions"), "{}", pg.log());
    // pg_partman's own maintenance still works on the set, and makes new days as before.
    db.batch_execute("SELECT partman.run_maintenance('public.tokens')")
        .unwrap();
    assert!(partitions(&mut db, "tokens").len() >= 4);
}
