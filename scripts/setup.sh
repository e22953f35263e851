#!/usr/bin/env bash
# setup.sh — make this machine able to build and test session_reaper.
# Idempotent and quick when already done: installs the Debian packages the build and the tests
# need, cargo-pgrx 0.18.1 when missing, and points pgrx at the system Postgres 15.
# Works as root (CI) and as an ordinary user with sudo.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
# postgresql-15-partman: the drop_partitions tests run on a pg_partman set.
# prometheus-postgres-exporter: the exporter test runs its binary; python3 validates META.json.
PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config make
  postgresql-15-partman prometheus-postgres-exporter python3)

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

if ! grep -qs "pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "setup: pointing pgrx at $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
echo "setup: ready ($(cargo pgrx --version))"
