#!/usr/bin/env python3
"""sched_episodes.py PIDS PGBENCH_LOG OFFSET DATA... — the app's backends' time, from `perf sched`.

PIDS: lines "pid role" (role "app" for the application's backends). For each DATA file (one
`perf sched record` window), the backends' timeline (`perf sched timehist -w --state`) is cut
into service episodes: one begins when pgbench wakes a backend (a query arrived) and ends when
the backend next sleeps awaiting pgbench. Within an episode, each stretch on a CPU is "run",
each wait in the run queue "cpu wait" (after a wake-up or a preemption), and each sleep ended
by another process is a lock wait, counted by who woke it (the lock's releaser). Prints per
window the episodes' p50 and p99, and for the slowest 1% the mean of each part; and the p99 of
the transactions pgbench logged (PGBENCH_LOG, `pgbench -l`) as ending in the window, whose
wall-clock times are the records' CLOCK_MONOTONIC ones plus OFFSET seconds.
"""
import re
import subprocess
import sys
from collections import Counter

pids = dict(line.split(maxsplit=1) for line in open(sys.argv[1]).read().splitlines())
pids = {pid: role.strip() for pid, role in pids.items()}
app = {pid for pid, role in pids.items() if role == "app"}
offset = float(sys.argv[3])
# pgbench -l: client, transaction, latency (us), script, end (epoch s, us).
client_side = [(int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1000)
               for f in (line.split() for line in open(sys.argv[2])) if len(f) == 6]


def task_id(task):
    match = re.search(r"\[(\d+)(?:/\d+)?\]", task)
    return match.group(1) if match else None


def who(task):
    """A process by its role in the cluster, or by its command name."""
    if task.startswith("pgbench"):
        return "pgbench"
    return pids.get(task_id(task), task.split("[")[0])


def episodes(data):
    timeline = subprocess.run(
        ["perf", "sched", "timehist", "-i", data, "-w", "--state"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()[3:]
    waker, current, done = {}, {}, []
    for line in timeline:
        fields = line.split()
        if "awakened:" in line:
            woken = task_id(line.split("awakened:")[1])
            if woken in app:
                waker[woken] = who(fields[2])
            continue
        if len(fields) < 7 or task_id(fields[2]) not in app:
            continue
        pid = task_id(fields[2])
        end = float(fields[0])
        sleep, queued, ran = (float(f) for f in fields[3:6])
        woke = waker.pop(pid, None)
        episode = current.get(pid)
        if woke == "pgbench" or episode is None:
            if episode is not None and episode["finished"]:
                done.append(episode)
            episode = current[pid] = {
                "start": end - (ran + queued) / 1000, "run": 0.0, "cpu wait": 0.0,
                "lock wait": 0.0, "preempted": 0, "lockers": Counter(), "finished": False,
            }
        elif woke is not None:
            episode["lock wait"] += sleep
            episode["lockers"][woke] += 1
        episode["run"] += ran
        episode["cpu wait"] += queued
        episode["end"] = end
        # State R at a switch-out: preempted, still runnable; anything else: it slept.
        episode["preempted"] += fields[6] == "R"
        episode["finished"] = fields[6] != "R"
    return done, float(timeline[0].split()[0]), float(timeline[-1].split()[0])


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


for data in sys.argv[4:]:
    found, first, last = episodes(data)
    seen = [ms for t, ms in client_side if first + offset <= t <= last + offset]
    if not found:
        print(f"{data}: no episodes (no app backends in PIDS?)")
        continue
    took = [1000 * (e["end"] - e["start"]) for e in found]
    p99 = pct(took, 0.99)
    slow = [e for e, t in zip(found, took) if t >= p99]
    mean = {k: sum(e[k] for e in slow) / len(slow) for k in ("run", "cpu wait", "lock wait", "preempted")}
    lockers = sum((e["lockers"] for e in slow), Counter())
    print(f"{data.rsplit('/', 1)[-1]}: pgbench p99 {pct(seen, 0.99):.3f} ms over {len(seen):,} transactions;"
          f" server side {len(found):,} episodes, p50 {pct(took, 0.5):.3f} ms, p99 {p99:.3f} ms;"
          f" slowest 1%: run {mean['run']:.3f} ms, cpu wait {mean['cpu wait']:.3f} ms,"
          f" lock wait {mean['lock wait']:.3f} ms, preempted {mean['preempted']:.1f} times;"
          f" woken from lock waits by {dict(lockers.most_common(4)) or 'nobody'}")
