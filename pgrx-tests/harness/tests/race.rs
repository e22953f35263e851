//! Nothing lost under load: four application threads insert, read and refresh sessions as fast
//! as they can while the worker reaps a backlog of a million expired rows. Each thread keeps a
//! ledger of the rows it committed as live; a row the ledger says is live must be there every
//! time the thread looks, and at the end. DESIGN.md invariants 1 and 2.

use postgres::Client;
use session_reaper_harness::{count, wait_until, with_reaper, Cluster, SOON};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BACKLOG: i64 = 1_000_000;
const LIVE: i64 = 20_000;
const THREADS: i64 = 4;
/// A refresh this close to a row's expiry counts as "just before".
const NEAR: f64 = 0.3;

/// What one application thread did and saw.
#[derive(Default)]
struct Ledger {
    /// Every row this thread committed as live, with its expiry (Unix seconds).
    expiry: HashMap<i64, f64>,
    /// Short-lived rows not refreshed yet, soonest expiry first: (expiry in ms, id).
    short: BTreeSet<(i64, i64)>,
    ids: Vec<i64>,
    ops: u64,
    /// Refreshes that found their row although its expiry had already passed.
    raced_expiry: u64,
    /// Refreshes less than NEAR before the row's expiry.
    just_before: u64,
    /// Rows seen gone after their expiry: reaped while the app worked.
    reaped_meanwhile: u64,
    /// Rows found missing while the ledger said they were live: must stay empty.
    lost: Vec<String>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A small xorshift generator: the test needs no crate for a random choice.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

impl Ledger {
    fn live(&mut self, id: i64, expiry: f64, short: bool) {
        if self.expiry.insert(id, expiry).is_none() {
            self.ids.push(id);
        }
        if short {
            self.short.insert(((expiry * 1000.0) as i64, id));
        }
    }

    /// The row is not there at time `now`: fine once its expiry passed, a loss before.
    fn missing(&mut self, id: i64, now: f64, what: &str) {
        let expiry = self.expiry.remove(&id).unwrap_or(0.0);
        if expiry > now {
            self.lost.push(format!(
                "{what}: row {id} gone {:.3} s before its expiry",
                expiry - now
            ));
        } else {
            self.reaped_meanwhile += 1;
        }
    }

    /// Refreshes `id` to an hour from now, as an app does on each request of a session.
    fn refresh(&mut self, app: &mut Client, id: i64) {
        let row = app
            .query_one(
                "WITH u AS (UPDATE sessions SET expires_at = now() + interval '1 hour' WHERE id = $1 RETURNING expires_at)
                 SELECT extract(epoch FROM (SELECT expires_at FROM u))::float8, extract(epoch FROM now())::float8",
                &[&id],
            )
            .unwrap();
        let (new, now): (Option<f64>, f64) = (row.get(0), row.get(1));
        // Not in the ledger: a backlog row, expired from the start.
        let old = self.expiry.get(&id).copied().unwrap_or(0.0);
        match new {
            Some(new) => {
                if old <= now {
                    self.raced_expiry += 1;
                } else if old - now < NEAR {
                    self.just_before += 1;
                }
                self.live(id, new, false);
            }
            // Judged by the time the UPDATE returned, not its transaction's now(): an UPDATE
            // that read the row live, then found it deleted by a batch that committed while
            // it waited for the row, saw a deletion made after the expiry, which is right.
            None if old > 0.0 => self.missing(id, unix_now(), "refresh"),
            None => {}
        }
    }

    fn one_op(&mut self, app: &mut Client, rng: &mut Rng, thread: i64) {
        self.ops += 1;
        match rng.below(100) {
            // A new session that expires in 0.3 to 4 s unless refreshed; one in five is
            // abandoned (never refreshed), so sessions keep expiring while the clients work.
            0..=29 => {
                let ms = 300 + rng.below(3_700) as i32;
                let row = app
                    .query_one(
                        "INSERT INTO sessions (token, expires_at) VALUES ('app', now() + $1::int * interval '1 ms')
                         RETURNING id, extract(epoch FROM expires_at)::float8",
                        &[&ms],
                    )
                    .unwrap();
                let abandoned = rng.below(5) == 0;
                self.live(row.get(0), row.get(1), !abandoned);
            }
            // The oldest unrefreshed session once it is past its expiry (by this machine's
            // clock, which the server shares): the refresh races the worker for it.
            30..=42 => {
                let now_ms = (unix_now() * 1000.0) as i64;
                if let Some(&(ms, id)) = self.short.iter().next().filter(|(ms, _)| *ms < now_ms) {
                    self.short.remove(&(ms, id));
                    self.refresh(app, id);
                }
            }
            // The next session to expire, when that is less than NEAR away: refreshed just
            // before its end.
            43..=54 => {
                let now_ms = (unix_now() * 1000.0) as i64;
                let near = now_ms + (NEAR * 1000.0) as i64;
                if let Some(&(ms, id)) = self.short.range((now_ms, 0)..(near, 0)).next() {
                    self.short.remove(&(ms, id));
                    self.refresh(app, id);
                }
            }
            // A session of the backlog comes back while the worker deletes around it.
            55..=74 => {
                let id = 1 + THREADS * rng.below((BACKLOG / THREADS) as u64) as i64 + thread;
                self.refresh(app, id);
            }
            // Read a session the ledger says exists.
            _ => {
                if self.ids.is_empty() {
                    return;
                }
                let id = self.ids[rng.below(self.ids.len() as u64) as usize];
                let Some(&expiry) = self.expiry.get(&id) else {
                    return;
                };
                let row = app
                    .query_one(
                        "SELECT (SELECT extract(epoch FROM expires_at)::float8 FROM sessions WHERE id = $1),
                                extract(epoch FROM now())::float8",
                        &[&id],
                    )
                    .unwrap();
                let (found, now): (Option<f64>, f64) = (row.get(0), row.get(1));
                match found {
                    None => self.missing(id, now, "read"),
                    Some(seen) if (seen - expiry).abs() > 0.001 => self.lost.push(format!(
                        "read: row {id} expires at {seen}, the ledger says {expiry}"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

/// A million expired rows (ids 1..=BACKLOG) and LIVE live ones, loaded in bulk, then indexed.
fn backlog_table(db: &mut Client) {
    db.batch_execute(&format!(
        "CREATE TABLE sessions (id bigint NOT NULL, token text NOT NULL, expires_at timestamptz NOT NULL);
         INSERT INTO sessions SELECT g, 'dead', now() - interval '1 minute' - (g % 86400) * interval '1 second'
           FROM generate_series(1, {BACKLOG}) g;
         INSERT INTO sessions SELECT {BACKLOG} + g, 'live', now() + interval '1 hour' FROM generate_series(1, {LIVE}) g;
         ALTER TABLE sessions ADD PRIMARY KEY (id);
         CREATE INDEX ON sessions (expires_at);
         CREATE SEQUENCE sessions_id_seq OWNED BY sessions.id START {};
         ALTER TABLE sessions ALTER COLUMN id SET DEFAULT nextval('sessions_id_seq');
         ANALYZE sessions;",
        BACKLOG + LIVE + 1
    ))
    .expect("loading the backlog");
}

#[test]
fn four_busy_clients_lose_nothing_while_a_million_expired_rows_are_reaped() {
    let (pg, mut db) = with_reaper("race", &["reaper.interval = '1s'"]);
    let loading = Instant::now();
    backlog_table(&mut db);
    let loaded_in = loading.elapsed();
    let backlog_left = "SELECT count(*) FROM sessions WHERE token = 'dead' AND expires_at < now()";
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    db.execute("SELECT reaper_register('sessions')", &[])
        .unwrap();
    let (ledgers, drained_in, left_when_clients_started, stopped_at) =
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (pg, stop): (&Cluster, &AtomicBool) = (&pg, &stop);
                    scope.spawn(move || {
                        let mut app = pg.connect("postgres");
                        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((thread as u64 + 1) * 7_919));
                        let mut ledger = Ledger::default();
                        while !stop.load(Ordering::Relaxed) {
                            ledger.one_op(&mut app, &mut rng, thread);
                        }
                        ledger
                    })
                })
                .collect();
            let left_when_clients_started = count(&mut db, backlog_left);
            // The worker drains the backlog while the clients work; then they go on a few seconds
            // more, so short-lived sessions keep expiring and being refreshed with no backlog.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wait_until("the backlog is reaped", Duration::from_secs(150), || {
                    count(&mut db, backlog_left) == 0
                })
            }));
            let drained_in = started.elapsed();
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            let stopped_at = unix_now();
            let ledgers: Vec<Ledger> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
            (ledgers, drained_in, left_when_clients_started, stopped_at)
        });
    assert!(
        left_when_clients_started > BACKLOG / 2,
        "the clients started while most of the backlog was there ({left_when_clients_started})"
    );

    // At the end: every ledger row whose expiry is still ahead is there.
    let lost: Vec<&String> = ledgers.iter().flat_map(|l| &l.lost).collect();
    assert!(lost.is_empty(), "rows lost while live: {lost:?}");
    let mut tx = db.transaction().unwrap();
    let now: f64 = tx
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .unwrap()
        .get(0);
    let must_exist: Vec<i64> = ledgers
        .iter()
        .flat_map(|l| l.expiry.iter())
        .filter(|(_, expiry)| **expiry > now)
        .map(|(id, _)| *id)
        .collect();
    let present = tx
        .query_one(
            "SELECT count(*) FROM sessions WHERE id = ANY($1)",
            &[&must_exist],
        )
        .unwrap()
        .get::<_, i64>(0);
    tx.commit().unwrap();
    assert_eq!(
        present,
        must_exist.len() as i64,
        "every row the clients committed as live and not yet expired is there"
    );
    // Every dead row goes, the short-lived sessions that expired after the clients stopped too.
    wait_until("every expired row is gone", SOON, || {
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE expires_at < now()",
        ) == 0
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE token = 'live'"
        ),
        LIVE
    );
    let refreshed: Vec<i64> = ledgers
        .iter()
        .flat_map(|l| l.expiry.iter())
        .filter(|(_, expiry)| **expiry > now + 600.0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        count_ids(&mut db, &refreshed),
        refreshed.len() as i64,
        "refreshed rows outlive the final drain"
    );
    let sum = |f: fn(&Ledger) -> u64| ledgers.iter().map(f).sum::<u64>();
    let (ops, raced, before, meanwhile) = (
        sum(|l| l.ops),
        sum(|l| l.raced_expiry),
        sum(|l| l.just_before),
        sum(|l| l.reaped_meanwhile),
    );
    assert!(
        raced > 0 && before > 0,
        "refreshes raced expiry ({raced}) and came just before it ({before})"
    );
    // Sessions nobody refreshed expired while the clients still worked: seen gone by a client
    // already, or still in a ledger with a passed expiry (reaped by the final drain above).
    let expired_during = meanwhile
        + ledgers
            .iter()
            .flat_map(|l| l.expiry.values())
            .filter(|expiry| **expiry < stopped_at)
            .count() as u64;
    assert!(
        expired_during > 0,
        "some client sessions expired during the run"
    );
    let reaped = count(&mut db, "SELECT total_deleted FROM reaper_stats()");
    println!(
        "race: backlog of {BACKLOG} loaded in {:.1} s; the worker reaped it in {:.1} s while {THREADS} clients ran \
         {ops} operations ({:.0}/s); {raced} refreshes raced expiry (row already expired, still there), \
         {before} came less than {NEAR} s before it; {expired_during} client sessions expired during the run, \
         {meanwhile} of them seen reaped by a client while it worked; \
         {} ledger rows checked at the end, 0 lost; {reaped} rows reaped in all",
        loaded_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        ops as f64 / (drained_in.as_secs_f64() + 3.0),
        must_exist.len(),
    );
}

fn count_ids(db: &mut Client, ids: &[i64]) -> i64 {
    db.query_one("SELECT count(*) FROM sessions WHERE id = ANY($1)", &[&ids])
        .unwrap()
        .get(0)
}
