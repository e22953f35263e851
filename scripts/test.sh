#!/usr/bin/env bash
# test.sh — every test session_reaper has, from a fresh machine: set-up, formatting and lints,
# the in-crate #[pg_test]s, the packages (META.json, the .deb), the pg_regress cases and the
# real-cluster harness. Exits non-zero when anything fails and ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --features "pg15 pg_test" --tests -- -D warnings
echo "== harness: cargo fmt --check, cargo clippy"
(cd pgrx-tests/harness && cargo fmt --check && cargo clippy --tests -- -D warnings)

echo "== #[pg_test]s (cargo pgrx test)"
if [ "$(id -u)" -eq 0 ]; then
  # initdb refuses root: pgrx runs the test cluster as `postgres` in a directory it can enter.
  export CARGO_PGRX_TEST_RUNAS=postgres
  export CARGO_PGRX_TEST_PGDATA=${CARGO_PGRX_TEST_PGDATA:-${SR_TMP:-/tmp}/session_reaper_pgrx/data}
  mkdir -p "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
  chown postgres: "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
fi
cargo pgrx test pg15 2>&1 | tee "$log"
unit=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')

echo "== packages: META.json and the .deb on the system's Postgres 15 (scripts/test_package.sh)"
# Before the install below: the package test installs and then removes the Debian package from
# /usr/lib/postgresql/15, which the install into $PG_CONFIG puts back in CI.
bash scripts/test_package.sh 2>&1 | tee "$log"
package=$(grep -Eo 'package tests: [0-9]+ passed' "$log" | grep -Eo '[0-9]+')

echo "== install into the local Postgres 15"
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null

echo "== pg_regress cases"
bash pgrx-tests/run_regress.sh 2>&1 | tee "$log"
regress=$(grep -Eo 'All [0-9]+ tests passed' "$log" | grep -Eo '[0-9]+')

echo "== real-cluster harness (pgrx-tests/harness)"
# --show-output: the figures some tests print (the race test's counts, timings) follow the
# results, grouped by test, instead of being swallowed.
(cd pgrx-tests/harness && cargo test -- --test-threads=2 --show-output) 2>&1 | tee "$log"
harness=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')

echo "tests: $((unit + package + regress + harness)) passed, 0 failed"
