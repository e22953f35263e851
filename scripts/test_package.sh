#!/usr/bin/env bash
# test_package.sh — the packages a DBA installs, end to end on this machine's own Postgres 15:
# META.json and the versions, then the .deb from scripts/package.sh: `dpkg -i` into Debian's
# postgresql-15; a throwaway cluster run by Debian's own binaries (not $PG_CONFIG's) set up and
# torn down the way the README's "Install" and "Uninstall" say: shared_preload_libraries by
# ALTER SYSTEM and a restart, CREATE EXTENSION, register + purge + reaper_stats(), the worker;
# DROP EXTENSION, the library out of shared_preload_libraries, `dpkg -r`, the files gone, and the
# server still starts.
# Needs root or sudo (dpkg). Ends with "package tests: N passed".
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
SYSTEM_PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGE=postgresql-15-session-reaper

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

passed=0
# check NAME: counts one passed test, after the commands before it have succeeded.
check() {
  passed=$((passed + 1))
  echo "ok $passed - $1"
}
fail() {
  echo "not ok - $1" >&2
  exit 1
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)

echo "== META.json"
python3 -m json.tool META.json >/dev/null || fail "META.json is not JSON"
python3 - "$version" <<'PY' || fail "META.json does not follow the PGXN meta spec 1.0.0"
import json, re, sys
meta = json.load(open("META.json"))
version = sys.argv[1]
semver = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z-]+)?$")
for key in ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"):
    assert key in meta, f"missing mandatory field {key}"
assert meta["meta-spec"]["version"] == "1.0.0", meta["meta-spec"]
assert semver.match(meta["version"]), meta["version"]
assert meta["version"] == version, f"META.json says {meta['version']}, Cargo.toml {version}"
for ext, p in meta["provides"].items():
    assert set(("file", "version")) <= p.keys(), f"provides.{ext} needs file and version"
    assert p["version"] == version, f"provides.{ext} says {p['version']}, Cargo.toml {version}"
    open(p["file"]).close()
    if "docfile" in p:
        open(p["docfile"]).close()
assert meta["release_status"] in ("stable", "testing", "unstable")
PY
check "META.json is valid PGXN meta 1.0.0 JSON and its versions are Cargo.toml's ($version)"

echo "== scripts/package.sh"
deb=$(bash scripts/package.sh | tail -n1)
[ -f "$deb" ] || fail "package.sh made no .deb"
[ "$(dpkg-deb -f "$deb" Package)" = "$PACKAGE" ] || fail "package name"
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || fail "package version is not Cargo.toml's"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || fail "architecture"
[ "$(dpkg-deb -f "$deb" Depends)" = "postgresql-15" ] || fail "Depends"
check "$deb: $PACKAGE $version, $(dpkg --print-architecture), Depends: postgresql-15"

echo "== dpkg -i"
cluster_dir=${SR_TMP:-/tmp}/session_reaper_package
cleanup() {
  cluster_stop
  if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'install ok installed'; then
    as_root dpkg -r "$PACKAGE" >/dev/null
  fi
}
# Debian's binaries, not $PG_CONFIG's: the package is for the system's Postgres.
PG_CONFIG=$SYSTEM_PG_CONFIG source scripts/cluster.sh
trap cleanup EXIT
as_root dpkg -i "$deb" >/dev/null
dpkg-query -W -f='${Status} ${Version}' "$PACKAGE" | grep -qx "install ok installed $version" ||
  fail "$PACKAGE $version is not installed"
files=$(dpkg -L "$PACKAGE" | while read -r f; do [ -f "$f" ] && echo "$f"; done)
lib=$("$SYSTEM_PG_CONFIG" --pkglibdir)
ext=$("$SYSTEM_PG_CONFIG" --sharedir)/extension
for want in "$lib/session_reaper.so" "$ext/session_reaper.control" "$ext/session_reaper--$version.sql" \
  "/usr/share/$PACKAGE/postgres_exporter.yaml" "/usr/share/$PACKAGE/alerts.yml" \
  "/usr/share/doc/$PACKAGE/copyright" "$ext/session_reaper--0.2.0--0.3.0.sql" "$ext/session_reaper--0.3.0--0.4.0.sql"; do
  grep -qx "$want" <<<"$files" || fail "the package does not install $want"
done
grep -qx "default_version = '$version'" "$ext/session_reaper.control" ||
  fail "the control file's default_version is not $version"
verify=$(dpkg --verify "$PACKAGE" 2>&1) && [ -z "$verify" ] || fail "dpkg --verify: $verify"
check "dpkg -i installs $(wc -l <<<"$files") files (dpkg --verify agrees), among them $lib/session_reaper.so and $ext/session_reaper.control"

echo "== a cluster of Debian's Postgres 15, set up as the README's \"Install\" says"
# Started without the library first, to do what a DBA does on an existing server.
cluster_start "$cluster_dir" "${PACKAGE_PORT:-54332}" "shared_preload_libraries = ''"
[ "$(cluster_psql -qAt -c "SHOW data_directory")" = "$cluster_dir/data" ] || fail "cluster"
restart() {
  as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -m fast -w restart >/dev/null ||
    { cat "$CLUSTER_DIR/server.log"; fail "the cluster did not restart"; }
}
if refused=$(cluster_psql -c "CREATE EXTENSION session_reaper" 2>&1); then
  fail "CREATE EXTENSION worked without shared_preload_libraries"
fi
grep -q "must be loaded via shared_preload_libraries" <<<"$refused" || fail "unexpected: $refused"
check "without shared_preload_libraries, CREATE EXTENSION is refused with: $(grep -o 'session_reaper must.*' <<<"$refused")"

cluster_psql -q -c "ALTER SYSTEM SET shared_preload_libraries = 'session_reaper'"
restart
cluster_psql -q <<'SQL'
CREATE EXTENSION session_reaper;
CREATE TABLE sessions (id bigserial PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions (token, expires_at)
  SELECT 'dead', now() - g * interval '1 minute' FROM generate_series(1, 1234) g;
INSERT INTO sessions (token, expires_at)
  SELECT 'live', now() + interval '1 day' FROM generate_series(1, 321) g;
SQL
[ "$(cluster_psql -qAt -c "SELECT extversion FROM pg_extension WHERE extname = 'session_reaper'")" = "$version" ] ||
  fail "CREATE EXTENSION did not install version $version"
check "ALTER SYSTEM SET shared_preload_libraries, restart, CREATE EXTENSION on $("$SYSTEM_PG_CONFIG" --bindir)/postgres"

dead=$(cluster_psql -qAt -c "SELECT count(*) FROM sessions WHERE expires_at < now()")
live=$(cluster_psql -qAt -c "SELECT count(*) FROM sessions WHERE expires_at >= now()")
# Registered disabled, so the purge below and not the worker deletes the rows it counts.
cluster_psql -qAt -c "SELECT reaper_register('sessions', enabled => false)" >/dev/null
purged=$(cluster_psql -qAt -c "SELECT rows_deleted || ' ' || status FROM reaper_purge('sessions')")
[ "$purged" = "$dead ok" ] || fail "reaper_purge says '$purged', $dead rows were expired"
[ "$(cluster_psql -qAt -c "SELECT count(*) FROM sessions")" = "$live" ] || fail "live rows went"
stats=$(cluster_psql -qAt -c "SELECT total_deleted || ' ' || total_runs || ' ' || last_status FROM reaper_stats()")
[ "$stats" = "$dead 1 ok" ] || fail "reaper_stats() says '$stats' after purging $dead rows"
check "register + purge deleted the $dead expired rows and kept the $live live ones; reaper_stats() agrees"

# workers_are N: polls (10 s at most) until this database has N session_reaper workers.
workers_are() {
  local workers=
  for _ in $(seq 1 100); do
    workers=$(cluster_psql -qAt -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'session_reaper worker'")
    [ "$workers" -eq "$1" ] && return 0
    sleep 0.1
  done
  echo "session_reaper workers: $workers, expected $1" >&2
  return 1
}
workers_are 1 || fail "no session_reaper worker started from the packaged library"
check "the packaged library's background worker runs in the database"

echo "== removal, as the README's \"Uninstall\" says"
cluster_psql -q -c "DROP EXTENSION session_reaper"
workers_are 0 || fail "the worker stayed after DROP EXTENSION"
# RESET, not SET ... = '': Postgres would store that as one library named "" and not start.
cluster_psql -q -c "ALTER SYSTEM RESET shared_preload_libraries"
restart
[ -z "$(cluster_psql -qAt -c "SHOW shared_preload_libraries")" ] || fail "shared_preload_libraries is not empty"

cluster_stop
as_root dpkg -r "$PACKAGE" >/dev/null
if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'installed'; then
  fail "$PACKAGE is still installed"
fi
while read -r f; do
  [ ! -e "$f" ] || fail "$f is still there after dpkg -r"
done <<<"$files"
check "DROP EXTENSION, ALTER SYSTEM RESET shared_preload_libraries, restart, dpkg -r: all $(wc -l <<<"$files") files gone"

as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start >/dev/null ||
  { cat "$CLUSTER_DIR/server.log"; fail "the server does not start after the removal"; }
[ "$(cluster_psql -qAt -c "SELECT count(*) FROM sessions")" = "$live" ] || fail "the table changed"
check "the server starts without the package and the reaped table keeps its $live rows"
cluster_stop

echo "package tests: $passed passed"
