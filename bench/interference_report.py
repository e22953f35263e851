#!/usr/bin/env python3
"""interference_report.py OUT DURATION — the table and plots of bench/interference.sh.

Reads OUT/clearing.tsv (per contender: when clearing started and ended, rows, when pgbench
began) and OUT/pgbench_<contender>.log (pgbench's per-transaction log: client, txn, latency us,
script, epoch s, us). Prints one row per contender; writes OUT/interference_tps.png and
OUT/interference_p99.png (per-second series, time 0 = clearing started) when matplotlib is there.
"""
import csv
import sys
from pathlib import Path

out, duration = Path(sys.argv[1]), float(sys.argv[2])


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


runs = list(csv.DictReader(open(out / "clearing.tsv"), delimiter="\t"))
series = {}
rows = []
base = None
for run in runs:
    c = run["contender"]
    start, end, began = float(run["start"]), float(run["end"]), float(run["began"])
    end = max(end, start + 1.0)  # a window of at least a second
    txns = []
    for line in open(out / f"pgbench_{c}.log"):
        f = line.split()
        txns.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1000.0))
    before = [lat for t, lat in txns if began <= t < start]
    during = [lat for t, lat in txns if start <= t <= end]
    after = [lat for t, lat in txns if t > end]
    r = {
        "contender": c,
        "clear_s": float(run["end"]) - start,
        "rows": int(run["rows"] or 0),
        "tps_before": len(before) / max(start - began, 1e-9),
        "tps_during": len(during) / (end - start),
        "p50": pct(during, 0.5),
        "p99": pct(during, 0.99),
        "max": max(during, default=float("nan")),
        "p99_before": pct(before, 0.99),
        "total": len(txns),
        "tps_after": len(after) / max(began + duration - end, 1e-9),
    }
    if c == "none":
        base = r
    rows.append(r)
    per_second = {}
    for t, lat in txns:
        per_second.setdefault(int(t - start), []).append(lat)
    series[c] = sorted(per_second.items())

head = ("contender", "clear s", "rows/s", "tps before", "tps during", "tps after", "p50 ms",
        "p99 ms", "max ms", "p99 vs before", "tps vs baseline", "txns lost vs baseline")
print(" | ".join(head))
print(" | ".join("---" for _ in head))
for r in rows:
    rate = r["rows"] / r["clear_s"] if r["clear_s"] > 0 else 0
    base_tps = base["total"] / duration if base else float("nan")
    print(" | ".join([
        r["contender"], f"{r['clear_s']:.2f}", f"{rate:,.0f}", f"{r['tps_before']:,.0f}",
        f"{r['tps_during']:,.0f}", f"{r['tps_after']:,.0f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
        f"{r['max']:.1f}", f"{r['p99'] / r['p99_before']:.2f}",
        f"{r['tps_during'] / base_tps:.2f}", f"{base['total'] - r['total'] if base else 0:,}",
    ]))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(no matplotlib: plots skipped)")
    sys.exit(0)
for name, pick, label in (("tps", len, "foreground transactions per second"),
                          ("p99", lambda v: pct(v, 0.99), "foreground p99 latency (ms)")):
    plt.figure(figsize=(9, 4.5))
    for c, points in series.items():
        xs = [s for s, _ in points if -10 <= s <= 30]
        ys = [pick(v) for s, v in points if -10 <= s <= 30]
        plt.plot(xs, ys, label=c, linewidth=1.2)
    plt.axvline(0, color="grey", linestyle=":")
    plt.xlabel("seconds since the clearing started")
    plt.ylabel(label)
    if name == "p99":
        plt.yscale("log")
    plt.legend()
    plt.title(f"pgbench session store, 4 clients, while a backlog is cleared ({label})")
    plt.tight_layout()
    plt.savefig(out / f"interference_{name}.png", dpi=90)
    print(f"wrote {out / f'interference_{name}.png'}")
