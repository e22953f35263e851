#!/usr/bin/env bash
# run_regress.sh — the pg_regress cases under pgrx-tests/regress against a throwaway cluster.
# Expects session_reaper installed into the local Postgres 15. Prints a summary line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../scripts/cluster.sh"
work=${REGRESS_DIR:-${SR_TMP:-/tmp}/session_reaper_regress}
# The worker stays off: these cases show what psql does, and a worker reaping at the same time
# would change the counts they print.
cluster_start "$work" "${REGRESS_PORT:-54331}" "reaper.enabled = off"
createdb reaper_regress
trap cluster_stop EXIT
out=${REGRESS_OUT:-$(mktemp -d)}
tests=$(cd "$here/regress/sql" && ls *.sql | sed 's/\.sql$//')
status=0
"$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
  --bindir="$("$PG_CONFIG" --bindir)" \
  --host="$PGHOST" --port="$PGPORT" --user=postgres --dbname=reaper_regress --use-existing \
  --bindir="$("$PG_CONFIG" --bindir)" \
  --inputdir="$here/regress" --outputdir="$out" $tests || status=$?
if [ "$status" -ne 0 ] && [ -f "$out/regression.diffs" ]; then cat "$out/regression.diffs"; fi
exit "$status"
