//! schedule.rs — a target's own schedule: an interval (`'15 min'`) or a 5-field cron
//! expression read in UTC (`'0 4 * * *'`). Cron parsing is the `croner` crate's, with seconds
//! and years refused so the syntax is the classic five fields a DBA knows from crontab.

use crate::shared::errors::catch_pg_error;
use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use std::str::FromStr;
use std::time::Duration;

/// When a target runs: a fixed time after its previous run, or at the times of a cron
/// expression (in UTC).
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<Cron>),
}

impl Schedule {
    /// The schedule of a target: its own (`text`, checked when it was registered), or
    /// `reaper.interval`.
    pub fn of(text: Option<&str>) -> Self {
        let own = text.and_then(|text| {
            if is_cron(text) {
                parse_cron(text).ok().map(|cron| Self::Cron(Box::new(cron)))
            } else {
                interval_duration(text).map(|every| Self::Every(every.max(Duration::from_secs(1))))
            }
        });
        own.unwrap_or_else(|| Self::Every(crate::shared::settings::interval()))
    }

    /// The next run after one that started at `last` (Unix seconds). A target that never ran
    /// is due at once on an interval, and at the first cron time after it was registered
    /// (`registered`) on a cron schedule: a schedule says when rows may go.
    pub fn next_run(&self, last: Option<f64>, registered: f64, now: f64) -> f64 {
        match (self, last) {
            (Self::Every(_), None) => now,
            (Self::Every(every), Some(last)) => last + every.as_secs_f64(),
            (Self::Cron(cron), last) => {
                DateTime::<Utc>::from_timestamp(last.unwrap_or(registered).floor() as i64, 0)
                    .and_then(|start| cron.find_next_occurrence(&start, false).ok())
                    .map(|next| next.timestamp() as f64)
                    .unwrap_or(f64::INFINITY)
            }
        }
    }
}

/// Five whitespace-separated fields make a cron expression; anything else is read as an interval.
pub fn is_cron(text: &str) -> bool {
    text.split_whitespace().count() == 5
}

/// Checks a schedule, or says why it is not one.
pub fn validate(text: &str) -> Result<(), String> {
    if is_cron(text) {
        parse_cron(text).map(|_| ())
    } else {
        parse_interval(text).map(|_| ())
    }
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("not a valid cron expression ({e})"))
}

/// An interval schedule's length, read by Postgres' own interval input (a month is 30 days);
/// None when it is not one. Registration checked the text with the same input function.
fn interval_duration(text: &str) -> Option<Duration> {
    Duration::try_from(Interval::from_str(text).ok()?).ok()
}

/// An interval of at least one second, checked by Postgres' own interval input.
fn parse_interval(text: &str) -> Result<String, String> {
    let parsed = catch_pg_error(|| {
        Spi::get_two_with_args::<String, bool>(
            "SELECT $1::interval::text, $1::interval >= '1 second'::interval",
            &[text.into()],
        )
    })
    .map_err(|_| "neither an interval nor a 5-field cron expression".to_string())?;
    match parsed {
        Ok((Some(interval), Some(true))) => Ok(interval),
        _ => Err("an interval schedule must be at least 1 second".to_string()),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::api::tests::tests::{count, run, sessions_table};
    use pgrx::prelude::*;

    #[pg_test]
    fn next_run_follows_the_interval_or_the_cron_schedule_in_utc() {
        sessions_table();
        run("CREATE TABLE codes (id int, expires_at timestamptz NOT NULL)");
        run("SELECT reaper_register('sessions', schedule => '15 min')");
        run("SELECT reaper_register('codes', schedule => '0 4 * * *')");
        // Never run: the interval target is due now, the cron one at its first cron time
        // (trust_tests.rs).
        assert_eq!(
            count("SELECT count(*) FROM reaper_stats() WHERE next_run_at <= clock_timestamp()"),
            1
        );
        run("SELECT reaper_purge()");
        let interval = count(
            "SELECT extract(epoch FROM next_run_at - last_run_at)::bigint FROM reaper_stats() WHERE target = 'sessions'::regclass",
        );
        assert_eq!(interval, 15 * 60);
        let cron = Spi::get_one::<bool>(
            "SELECT next_run_at = date_trunc('day', last_run_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                  + CASE WHEN extract(hour FROM last_run_at AT TIME ZONE 'UTC') < 4
                                         THEN interval '4 hours' ELSE interval '28 hours' END
               FROM reaper_stats() WHERE target = 'codes'::regclass",
        )
        .unwrap();
        assert_eq!(cron, Some(true), "the next 04:00 UTC after the last run");
    }
}
