//! schedule.rs — a target's own schedule: an interval (`'15 min'`) or a 5-field cron
//! expression read in UTC (`'0 4 * * *'`). Cron parsing is the `croner` crate's, with seconds
//! and years refused so the syntax is the classic five fields a DBA knows from crontab.

use crate::errors::catch_pg_error;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::prelude::*;

/// Checks a schedule, or says why it is not one.
pub fn validate(text: &str) -> Result<(), String> {
    if text.split_whitespace().count() == 5 {
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
