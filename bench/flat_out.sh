#!/usr/bin/env bash
# flat_out.sh — session_reaper flat out (batch_delay 0) against one DELETE, in PAIRS
# interleaved pairs on fresh tables of ROWS rows (half expired), so that this machine's
# run-to-run spread shows and the medians can be quoted. Each pair is one run of
# bench/batch_strategies.sh (a fresh cluster, a fresh table per contender), the order of the
# two alternating from pair to pair. Prints every pair, then the medians of rows/s, WAL and the
# longest transaction, and the reaper's ratios to the DELETE (median of the per-pair ratios);
# then the worker's batches (it logs each at DEBUG1 here): their times, and where the slowest
# spent theirs (on a CPU, waiting for one, or neither: I/O and locks). With WAIT_SAMPLES=1,
# also the wait events sampled every 10 ms (bench/batch_strategies.sh): each contender's share
# of samples per wait, and those inside the slowest batches. The sampling costs a few percent
# of a core: quote the rates of unsampled runs.
#
#   bash bench/flat_out.sh [ROWS] [PAIRS]      # default 2,000,000 rows, 5 pairs
#   BATCH=30000 bash bench/flat_out.sh 20000000 5
#   WAIT_SAMPLES=1 BATCH=5000 bash bench/flat_out.sh 20000000 2
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000} PAIRS=${2:-5} BATCH=${BATCH:-10000}
# The release build of this tree, installed first: the pairs measure it, not whatever is there.
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null
dir=${BENCH_DIR:-${SR_TMP:-/tmp}/session_reaper_bench}
all=$(mktemp) batches=$(mktemp) waits=$(mktemp)
trap 'rm -f "$all" "$batches" "$waits"' EXIT
for pair in $(seq 1 "$PAIRS"); do
  order="single reaper:$BATCH"
  [ $((pair % 2)) -eq 0 ] && order="reaper:$BATCH single"
  echo "== pair $pair of $PAIRS: $order"
  BATCH_LOG=1 STRATEGIES=$order BENCH_DIR=$dir PLOT=/dev/null bash bench/batch_strategies.sh "$ROWS" >/dev/null 2>&1 ||
    { echo "pair $pair failed: see $dir/server.log" >&2; exit 1; }
  sed "s/^/$pair\t/" "$dir/backlog.tsv" | tee -a "$all"   # strategy, rows, seconds, WAL, longest ms
  grep ' rows committed in ' "$dir/server.log" | sed "s/^/$pair\t/" >> "$batches" || true
  [ ! -f "$dir/waits.tsv" ] || sed "s/^/$pair\t/" "$dir/waits.tsv" >> "$waits"
done
echo
echo "One DELETE against session_reaper flat out (batch_size $BATCH, batch_delay 0): $ROWS rows, $((ROWS / 2)) expired, $PAIRS pairs, $(nproc) cores"
python3 - "$all" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    pair, strategy, rows, seconds, wal, longest = line.rstrip("\n").split("\t")
    kind = "delete" if strategy == "single" else "reaper"
    runs.setdefault(int(pair), {})[kind] = (int(rows) / float(seconds), float(wal), float(longest))
print("pair | DELETE rows/s | reaper rows/s | rows/s ratio | WAL ratio | DELETE longest ms | reaper longest ms")
print("--- | --- | --- | --- | --- | --- | ---")
ratios, wals = [], []
for pair, r in sorted(runs.items()):
    (dr, dw, dl), (rr, rw, rl) = r["delete"], r["reaper"]
    ratios.append(rr / dr); wals.append(rw / dw)
    print(f"{pair} | {dr:,.0f} | {rr:,.0f} | {rr / dr:.2f} | {rw / dw:.3f} | {dl:,.0f} | {rl:,.1f}")
med = lambda kind, i: statistics.median(r[kind][i] for r in runs.values())
print(f"median | {med('delete', 0):,.0f} | {med('reaper', 0):,.0f} | {statistics.median(ratios):.2f} | "
      f"{statistics.median(wals):.3f} | {med('delete', 2):,.0f} | {med('reaper', 2):,.1f}")
print(f"spread of the DELETE's rows/s: {min(r['delete'][0] for r in runs.values()):,.0f} - "
      f"{max(r['delete'][0] for r in runs.values()):,.0f}; of the ratio: {min(ratios):.2f} - {max(ratios):.2f}")
PY
python3 - "$batches" "$waits" <<'PY'
import collections, datetime, re, statistics, sys
line = re.compile(r"^(\d+)\t\S+ (\S+) .*batch of (\d+) rows committed in ([\d.]+) ms \(([\d.]+) ms on a CPU, ([\d.]+) ms waiting for one\)")
seen = [m.groups() for m in map(line.match, open(sys.argv[1])) if m]
if not seen:
    sys.exit("no batch lines in the server logs (log_min_messages = debug1)")
at = lambda hms: datetime.datetime.strptime(hms, "%H:%M:%S.%f")
batches = [(int(p), int(n), float(w), float(c), float(q), at(t)) for p, t, n, w, c, q in seen]
samples = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
samples = [(int(p), who, at(t), wait) for p, who, t, wait in samples]
walls = sorted(b[2] for b in batches)
pct = lambda q: walls[min(len(walls) - 1, int(q * len(walls)))]
print(f"\nthe worker's {len(batches)} batches: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {walls[-1]:.1f} ms; "
      f"over 50 ms: {sum(w > 50 for w in walls)}")
print("the slowest 5 (pair, rows, ms; on a CPU, waiting for one, neither):")
def shares(waits):
    counts = collections.Counter(waits)
    return ", ".join(f"{w} {100 * k / len(waits):.1f}%" for w, k in counts.most_common(6))
for p, n, w, c, q, end in sorted(batches, key=lambda b: -b[2])[:5]:
    print(f"  pair {p}: {n} rows in {w:.1f} ms: {c:.1f} on a CPU, {q:.1f} waiting for one, {max(0.0, w - c - q):.1f} neither")
    inside = [s[3] for s in samples if s[0] == p and s[1].startswith("reaper")
              and end - datetime.timedelta(milliseconds=w) <= s[2] <= end]
    if inside:
        print(f"    sampled inside it: {shares(inside)}")
if samples:
    print("\nwait events sampled every 10 ms (CPU: waiting for nothing, on a CPU or runnable):")
    for who in sorted({s[1] for s in samples}):
        waits = [s[3] for s in samples if s[1] == who]
        print(f"  {who}: {len(waits)} samples: {shares(waits)}")
PY
