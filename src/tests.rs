//! In-crate tests: each runs inside a rolled-back transaction of a real Postgres.
