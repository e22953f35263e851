#!/usr/bin/env bash
# sandbox.sh NAME N — a private copy of Debian's Postgres 15 for a second (third...) test run on
# one machine: its own binaries and extension directory (Postgres finds its share and lib
# directories relative to its binaries), its own PGRX_HOME, test-cluster directory and ports.
# Prints the environment to use; the scripts and the harness honour it:
#
#   eval "$(bash scripts/sandbox.sh mine 1)" && bash scripts/test.sh
#
# N (1-9) picks the ports. Needs root (copies into /opt/sr-NAME).
set -euo pipefail
name=$1 n=$2
root=/opt/sr-$name
if [ ! -d "$root/usr/lib/postgresql/15" ]; then
  mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql" "$root/tmp" "$root/pgrx"
  cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
  ln -s /usr/include "$root/usr/include"   # pg_config --includedir-server, for pgrx's bindings
  chmod 755 "$root" "$root/tmp"
  chown postgres: "$root/tmp"
  cat > "$root/pgrx/config.toml" <<TOML
base_testing_port = $((33000 + n * 100))
[configs]
pg15 = "$root/usr/lib/postgresql/15/bin/pg_config"
TOML
fi
cat <<ENV
export PGRX_HOME=$root/pgrx
export PG_CONFIG=$root/usr/lib/postgresql/15/bin/pg_config
export SR_TMP=$root/tmp
export REGRESS_PORT=$((54400 + n))
export DEMO_PORT=$((54500 + n))
ENV
