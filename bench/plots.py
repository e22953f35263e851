#!/usr/bin/env python3
"""plots.py — the PNGs of the backlog and steady-state benchmarks (the interference plots are
drawn by interference_report.py, with its tables).

  plots.py backlog TSV PNG   # TSV from batch_strategies.sh: strategy, rows, seconds, WAL bytes,
                             # longest transaction (ms); three bar charts, one per figure
  plots.py steady TXT PNG    # TXT: steady_state.sh's output; the expired rows waiting and the
                             # table's size over time

Without matplotlib it says so and draws nothing: the printed tables are the results, the
plots a view of them.
"""
import csv
import re
import sys


def pyplot():
    try:
        import matplotlib
    except ImportError:
        print("(no matplotlib: plot skipped)")
        sys.exit(0)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def backlog(tsv, png):
    with open(tsv) as f:
        rows = [(r[0], int(r[1]), float(r[2]), float(r[3]), float(r[4]))
                for r in csv.reader(f, delimiter="\t")]
    # One DELETE first, as in the printed table; each bar says its ratio to it.
    rows.sort(key=lambda r: (r[0] != "single", r[0]))
    if not rows or rows[0][0] != "single":
        sys.exit("plots.py backlog: no 'single' row, the yardstick of every ratio")
    names = [r[0] for r in rows]
    single = rows[0]
    figures = (
        ("rows/s (thousands)", [r[1] / r[2] / 1e3 for r in rows], single[1] / single[2] / 1e3, False),
        ("WAL (MB)", [r[3] / 2**20 for r in rows], single[3] / 2**20, False),
        ("longest transaction (ms, log scale)", [r[4] for r in rows], single[4], True),
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.5 * len(rows) + 1.8), sharey=True)
    for ax, (label, values, reference, log) in zip(axes, figures):
        bars = ax.barh(names, values, color=["#888" if n == "single" else "#3a7" for n in names])
        ax.bar_label(bars, labels=[f"{v / reference:.2f}x" for v in values], padding=3, fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_xlim(right=max(values) * (4 if log else 1.25))
        ax.set_title(label, fontsize=10)
    axes[0].invert_yaxis()
    fig.suptitle(f"clearing {single[1]:,} expired rows (labels: ratio to one DELETE)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")


def steady(txt, png):
    # Sample lines: "second expired size unit cpu%", e.g. "   40      20504        23 MB      0.70%".
    sample = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+) (bytes|kB|MB|GB)\s+([\d.]+)%$")
    to_mb = {"bytes": 1 / 2**20, "kB": 1 / 1024, "MB": 1, "GB": 1024}
    with open(txt) as f:
        points = [m.groups() for m in map(sample.match, f) if m]
    seconds = [int(p[0]) for p in points]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(seconds, [int(p[1]) for p in points], color="#c33", label="expired rows waiting")
    ax.set_xlabel("seconds")
    ax.set_ylabel("expired rows waiting")
    size = ax.twinx()
    size.plot(seconds, [int(p[2]) * to_mb[p[3]] for p in points], color="#36c", label="table size (MB)")
    size.set_ylabel("table size (MB)")
    size.set_ylim(bottom=0)
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.9))
    ax.set_title("steady state: sessions expiring at a constant rate, reaped every 10 s", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")


if __name__ == "__main__":
    {"backlog": backlog, "steady": steady}[sys.argv[1]](sys.argv[2], sys.argv[3])
