#!/usr/bin/env python3
"""batch_phases.py — where the app's slow transactions fall against the worker's steps.

Reads the server log of an interference run made with log_min_messages = debug1 (the worker's
"batch of N rows committed in X ms" and "pruned pages a..b in X ms" lines), the pgbench
per-transaction log of one contender, and that contender's clearing window. Cuts the window
into the worker's steps: a batch (its statement and commit), the prune behind it, and the rest
(the pause). Then, for all the app's transactions in the window and for the slowest 1%, says
which steps they overlapped, beside each step's share of the wall clock: a step that holds
more of the slow transactions than of the time is where the app waits. "pause" counts the
transactions that overlapped no batch and no prune; one that overlapped both a batch and a
prune counts for each, so the shares of a column may add up to more than 100%.

    python3 bench/batch_phases.py SERVER_LOG PGBENCH_LOG START END
"""
import bisect
import sys
from datetime import datetime, timezone


def log_time(line):
    """The %m timestamp at the start of a server log line, in Unix seconds (the cluster logs in
    UTC: interference.sh sets log_timezone with PHASES)."""
    stamp = " ".join(line.split(" ", 3)[:2])
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def worker_steps(path, start, end):
    """[(begin, end, step)] of the worker's batches and prunes within [start, end]."""
    steps = []
    for line in open(path, errors="replace"):
        for marker, step in ((" rows committed in ", "batch"), ("pruned pages ", "prune")):
            if "session_reaper: " in line and marker in line:
                done = log_time(line)
                ms = float(line.rsplit(" in ", 1)[1].split(" ms")[0])
                if start <= done <= end + 1:
                    steps.append((done - ms / 1e3, done, step))
    return sorted(steps)


def transactions(path, start, end):
    """[(begin, end, latency_ms)] of the app's transactions that ended within [start, end]."""
    out = []
    for line in open(path):
        fields = line.split()
        if not fields[2].isdigit():  # a failed or skipped transaction has no latency
            continue
        latency_us, done = int(fields[2]), int(fields[4]) + int(fields[5]) / 1e6
        if start <= done <= end:
            out.append((done - latency_us / 1e6, done, latency_us / 1e3))
    return out


def overlapped(txn, steps, begins):
    """The steps a transaction overlapped ('pause' when none). The worker's steps follow one
    another, so only those that began before the transaction ended are looked at, latest first."""
    begin, end, _ = txn
    hit = set()
    i = bisect.bisect_left(begins, end) - 1
    while i >= 0 and steps[i][1] > begin - 1.0:
        if steps[i][1] > begin:
            hit.add(steps[i][2])
        i -= 1
    return hit or {"pause"}


def main():
    server_log, pgbench_log, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    steps = worker_steps(server_log, start, end)
    txns = transactions(pgbench_log, start, end)
    if not steps or not txns:
        sys.exit(f"nothing to line up: {len(steps)} worker steps, {len(txns)} transactions in the window")
    wall = end - start
    time_in = {"batch": 0.0, "prune": 0.0}
    for b, e, step in steps:
        time_in[step] += max(0.0, min(e, end) - max(b, start))
    time_in["pause"] = wall - time_in["batch"] - time_in["prune"]
    txns.sort(key=lambda t: t[2])
    slow = txns[int(len(txns) * 0.99):]
    print(f"window {wall:.1f} s: {sum(s == 'batch' for *_, s in steps)} batches, "
          f"{sum(s == 'prune' for *_, s in steps)} prunes; {len(txns)} app transactions, "
          f"p99 {slow[0][2]:.2f} ms")
    print("step | share of the time | of all transactions, overlapping it | of the slowest 1% | "
          "median ms of those slowest 1%")
    print("--- | --- | --- | --- | ---")
    begins = [b for b, _, _ in steps]
    hits = [overlapped(t, steps, begins) for t in txns]
    slow_hits = hits[len(txns) - len(slow):]
    for step in ("batch", "prune", "pause"):
        slow_in = sorted(t[2] for t, h in zip(slow, slow_hits) if step in h)
        median = f"{slow_in[len(slow_in) // 2]:.2f}" if slow_in else "-"
        print(f"{step} | {time_in[step] / wall:.0%} | {sum(step in h for h in hits) / len(hits):.0%} | "
              f"{len(slow_in) / len(slow):.0%} | {median}")


if __name__ == "__main__":
    main()
