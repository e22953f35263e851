#!/usr/bin/env bash
# test.sh — every test session_reaper has, from a fresh machine: set-up, formatting and lints,
# the in-crate #[pg_test]s, the packages (META.json, the .deb), the pg_regress cases and the
# real-cluster harness. Exits non-zero when anything fails and ends with one summary line.
#
#   bash scripts/test.sh                                # PostgreSQL 15: everything
#   PG_MAJORS="14 15 16 17 18" bash scripts/test.sh     # and each other major's core (CI)
#
# On 15 (Debian's) the full suite runs, with pg_cron, pg_partman and the exporter. On each
# other major: the #[pg_test]s, the pg_regress cases and the harness's core files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/majors.sh
export PG_CONFIG

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The harness's core files, run on every major: the worker (standby and promote included),
# races, faults, upgrades, security and the trust rules. The others need pg_cron, pg_partman or
# the exporter, which this machine has for 15 only, or (reload.rs) read 15's own messages.
CORE_HARNESS=(--test worker --test race --test faults --test upgrade --test security --test trust)
declare -A PASSED

# passed_in LOG: the tests `cargo test` said passed, summed over its test binaries.
passed_in() {
  grep -Eo 'test result: ok\. [0-9]+ passed' "$1" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}'
}

echo "== cargo fmt --check"
cargo fmt --check
for major in $PG_MAJORS; do
  echo "== cargo clippy (PostgreSQL $major)"
  cargo clippy --no-default-features --features "pg$major pg_test" --tests -- -D warnings
done
echo "== harness: cargo fmt --check, cargo clippy"
(cd pgrx-tests/harness && cargo fmt --check && cargo clippy --tests -- -D warnings)

# pg_tests MAJOR: the in-crate #[pg_test]s on that major, in a cluster of its own.
pg_tests() {
  if [ "$(id -u)" -eq 0 ]; then
    # initdb refuses root: pgrx runs the test cluster as `postgres` in a directory it can enter.
    export CARGO_PGRX_TEST_RUNAS=postgres
    export CARGO_PGRX_TEST_PGDATA=${SR_TMP:-/tmp}/session_reaper_pgrx/data-$1
    mkdir -p "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
    chown postgres: "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
  fi
  cargo pgrx test "pg$1" 2>&1 | tee "$log"
  PASSED[$1]=$(passed_in "$log")
}

# install_from_package MAJOR PG_CONFIG: builds postgresql-MAJOR-session-reaper (a debug build),
# checks its name, Depends and file list against PGDG's layout, and puts its files into that
# major's install (which is not at PGDG's paths here), so the tests below run the packaged
# library. There is no postgresql-MAJOR Debian package on this machine to dpkg -i it against.
install_from_package() {
  local major=$1 pg_config=$2 deb files
  deb=$(PG_CONFIG=$pg_config PACKAGE_PROFILE=debug bash scripts/package.sh | tail -n1)
  [ "$(dpkg-deb -f "$deb" Package)" = "postgresql-$major-session-reaper" ] || { echo "package name" >&2; return 1; }
  [ "$(dpkg-deb -f "$deb" Depends)" = "postgresql-$major" ] || { echo "package Depends" >&2; return 1; }
  files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\.||')
  local version
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
  for want in "/usr/lib/postgresql/$major/lib/session_reaper.so" \
    "/usr/share/postgresql/$major/extension/session_reaper.control" \
    "/usr/share/postgresql/$major/extension/session_reaper--$version.sql" \
    "/usr/share/postgresql/$major/extension/session_reaper--0.2.0--0.3.0.sql" \
    "/usr/share/postgresql/$major/extension/session_reaper--0.3.0--0.4.0.sql" \
    "/usr/share/doc/postgresql-$major-session-reaper/copyright"; do
    grep -qx "$want" <<<"$files" || { echo "$deb lacks $want" >&2; return 1; }
  done
  local unpacked
  unpacked=$(mktemp -d)
  dpkg-deb -x "$deb" "$unpacked"
  as_root cp "$unpacked/usr/lib/postgresql/$major/lib/"* "$("$pg_config" --pkglibdir)/"
  as_root cp "$unpacked/usr/share/postgresql/$major/extension/"* "$("$pg_config" --sharedir)/extension/"
  rm -rf "$unpacked"
  echo "ok - $deb: postgresql-$major-session-reaper, Depends: postgresql-$major, PGDG's layout; installed from it"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# other_major MAJOR: the #[pg_test]s, the pg_regress cases and the harness's core on a major
# other than 15, each against its own install of that major.
other_major() {
  local major=$1 pg_config
  pg_config=$(pg_config_of "$major")
  echo "== PostgreSQL $major: #[pg_test]s"
  pg_tests "$major"
  echo "== PostgreSQL $major: the Debian package, installed from its files"
  install_from_package "$major" "$pg_config"
  PASSED[$major]=$((PASSED[$major] + 1))
  echo "== PostgreSQL $major: pg_regress cases"
  PG_CONFIG=$pg_config REGRESS_PORT=$((54340 + major)) bash pgrx-tests/run_regress.sh 2>&1 | tee "$log"
  PASSED[$major]=$((PASSED[$major] + $(grep -Eo 'All [0-9]+ tests passed' "$log" | grep -Eo '[0-9]+')))
  echo "== PostgreSQL $major: the harness's core (${CORE_HARNESS[*]})"
  (cd pgrx-tests/harness && PG_CONFIG=$pg_config cargo test "${CORE_HARNESS[@]}" -- --test-threads=2 --show-output) 2>&1 | tee "$log"
  PASSED[$major]=$((PASSED[$major] + $(passed_in "$log")))
}

for major in $PG_MAJORS; do
  [ "$major" = 15 ] || other_major "$major"
done

echo "== PostgreSQL 15: #[pg_test]s (cargo pgrx test)"
pg_tests 15
unit=${PASSED[15]}

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
harness=$(passed_in "$log")

PASSED[15]=$((unit + package + regress + harness))
summary=""
total=0
for major in 15 $PG_MAJORS; do
  [[ " $summary " == *" $major: "* ]] && continue
  summary+=" $major: ${PASSED[$major]},"
  total=$((total + PASSED[$major]))
done
echo "tests: $total passed, 0 failed (PostgreSQL${summary%,})"
