#!/usr/bin/env python3
"""interference_report.py OUT DURATION ROUNDS CLIENTS — the table and plots of bench/interference.sh.

Reads OUT/round<N>/clearing.tsv (per contender: when clearing started and ended, rows, when
pgbench began, WAL records of the app's lookups, the CPU seconds of the worker or the burner)
and OUT/round<N>/pgbench_<contender>.log
(pgbench's per-transaction log: client, txn, latency us, script, epoch s, us). Per contender: the clearing's time and rate, and the foreground before it
(from second 1 to its start) and during it; "vs baseline" compares with the no-cleanup run over
the same seconds of its workload; with several rounds, the median of each ratio follows. Writes
(from the last round) OUT/interference_tps.png and OUT/interference_p99.png
(per-second series, time 0 = clearing started) when matplotlib is there.
"""
import csv
import math
import os
import statistics
import sys
from pathlib import Path

out, duration, clients = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[4]
# Only the rounds of the last run: an earlier run with more rounds leaves its directories.
rounds = [out / f"round{n}" / "clearing.tsv" for n in range(1, int(sys.argv[3]) + 1)]
rounds = [tsv for tsv in rounds if tsv.exists()]
if not rounds:
    sys.exit(f"no round*/clearing.tsv under {out}")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


# RATE (from interference.sh): the store ran at that fixed rate, its latencies counting the
# schedule lag; "rate held" is the tps during the clearing over it.
RATE = float(os.environ["RATE"]) if os.environ.get("RATE") else None
HEAD = ("contender", "clear s", "rows/s", "contender CPU (cores)", "tps before", "tps during",
        "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99 vs before", "p99 vs baseline", "tps vs baseline",
        "txns lost vs baseline", "lookup WAL records per 1,000 lookups", "machine busy", "rate held")


def report(tsv):
    """Prints one round's table; returns its figures per contender and per-second series."""
    runs = list(csv.DictReader(open(tsv), delimiter="\t"))
    runs = [r for r in runs if r["start"] or print(f"({r['contender']}: its clearing did not run)")]
    txns_of = {}
    for run in runs:
        c, began = run["contender"], float(run["began"])
        txns_of[c] = sorted(
            ((int(f[4]) + int(f[5]) / 1e6 - began, int(f[2]) / 1000.0)
             for f in (line.split() for line in open(tsv.parent / f"pgbench_{c}.log"))))

    def window(c, lo, hi):
        """Latencies (ms) of contender c's transactions that ended between lo and hi seconds."""
        return [lat for t, lat in txns_of[c] if lo <= t < hi]

    print(" | ".join(HEAD))
    print(" | ".join("---" for _ in HEAD))
    figures, series = {}, {}
    for run in runs:
        c, began = run["contender"], float(run["began"])
        lo, hi = float(run["start"]) - began, float(run["end"]) - began
        hi = max(hi, lo + 1.0)  # a window of at least a second
        before, during = window(c, 1.0, lo), window(c, lo, hi)
        # Without a no-cleanup run in the round there is no baseline: nan, left out of medians.
        base = window("none", lo, hi) if "none" in txns_of else []
        lookups = sum(1 for line in open(tsv.parent / f"pgbench_{c}.log") if line.split()[3] == "0")
        wal = run.get("lookup_wal") or ""
        cpu = run.get("cpu") or "-"  # reports before 2026-12-01 16:25 have no cpu column
        seconds = float(run["end"]) - float(run["start"])
        f = figures[c] = {
            "rows/s": int(run["rows"] or 0) / (hi - lo) if c != "none" else 0,
            "cores": float(cpu) / seconds if cpu != "-" and seconds > 0 else float("nan"),
            "p99 vs before": pct(during, 0.99) / pct(before, 0.99),
            "p99 vs baseline": pct(during, 0.99) / pct(base, 0.99),
            "tps vs baseline": len(during) / len(base) if base else float("nan"),
            "lookup WAL per 1,000": 1000 * int(wal) / lookups if wal and lookups else float("nan"),
            "p99.9 vs baseline": pct(during, 0.999) / pct(base, 0.999),
            "rate held": len(during) / (hi - lo) / RATE if RATE else float("nan"),
        }
        lost = len(txns_of["none"]) - len(txns_of[c]) if "none" in txns_of else 0
        print(" | ".join([
            c, f"{seconds:.2f}", f"{f['rows/s']:,.0f}", f"{f['cores']:.2f}",
            f"{len(before) / max(lo - 1.0, 1e-9):,.0f}", f"{len(during) / (hi - lo):,.0f}",
            f"{pct(during, 0.5):.2f}", f"{pct(during, 0.99):.2f}", f"{pct(during, 0.999):.2f}",
            f"{max(during, default=0):.1f}",
            f"{f['p99 vs before']:.2f}", f"{f['p99 vs baseline']:.2f}", f"{f['tps vs baseline']:.2f}",
            f"{lost:,}", f"{f['lookup WAL per 1,000']:.1f}", run.get("busy") or "-", f"{f['rate held']:.2f}",
        ]))
        per_second = {}
        for t, lat in txns_of[c]:
            per_second.setdefault(math.floor(t - lo), []).append(lat)
        series[c] = sorted(per_second.items())
    return figures, series


all_figures = []
for tsv in rounds:
    if len(rounds) > 1:
        print(f"\n{tsv.parent.name}:")
    figures, series = report(tsv)
    all_figures.append(figures)

if len(rounds) > 1:
    # The machine's own spread between runs is as large as the effects: the median of each
    # figure over the rounds is the one to quote.
    keys = ("rows/s", "cores", "tps vs baseline", "p99 vs baseline", "p99 vs before",
            "lookup WAL per 1,000", "p99.9 vs baseline", "rate held")
    print(f"\nmedian over the rounds (of {len(rounds)}) that ran the contender:")
    print(" | ".join(("contender", "rounds") + keys))
    print(" | ".join("---" for _ in range(len(keys) + 2)))
    contenders = list(dict.fromkeys(c for r in all_figures for c in r))
    for c in contenders:
        ran = [r[c] for r in all_figures if c in r]
        values = []
        for k in keys:
            known = [f[k] for f in ran if not math.isnan(f[k])]
            values.append(statistics.median(known) if known else float("nan"))
        print(" | ".join([c, str(len(ran)), f"{values[0]:,.0f}"]
                         + [f"{v:.2f}" for v in values[1:5]] + [f"{values[5]:.1f}"]
                         + [f"{v:.2f}" for v in values[6:]]))

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
    plt.title(f"pgbench session store, {clients} clients, while a backlog is cleared ({label})")
    plt.tight_layout()
    plt.savefig(out / f"interference_{name}.png", dpi=90)
    print(f"wrote {out / f'interference_{name}.png'}")
