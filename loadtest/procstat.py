"""CPU and memory of processes and of the whole machine, read from /proc (Linux).

Every benchmark here shares two cores with the broker, the services and whatever else runs,
so each one reports the CPU its processes took and what was left to others. One reader of
/proc for all of them, so "CPU seconds" and "machine busy" mean the same in every report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_seconds(pid: int, gone: float = math.nan) -> float:
    """User + system CPU of one process (all its threads); `gone` once it has exited.

    NaN by default so that a figure read from a dead process shows up as such; callers that
    sum over a set of worker processes pass 0.
    """
    fields = stat_fields(pid)
    return gone if fields is None else (int(fields[11]) + int(fields[12])) / TICK


ProcessTree = dict[int, list[int]]
"""Parent pid -> child pids, from one walk of /proc."""


def process_tree() -> ProcessTree:
    """Who is whose child right now. One walk of /proc reads every process's stat file
    (~5 ms of CPU for ~70 processes here), so a sampler that looks at several processes
    walks once per sample and passes the tree on."""
    by_parent: ProcessTree = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            by_parent.setdefault(int(fields[1]), []).append(int(entry.name))
    return by_parent


def descendants(
    pid: int, exclude: Collection[int] = (), tree: ProcessTree | None = None
) -> list[int]:
    """Live descendants of `pid` (a model server may fork workers), without the subtrees of
    the `exclude`d processes, which are accounted for under their own names."""
    by_parent = process_tree() if tree is None else tree
    out, todo = [], [pid]
    while todo:
        kids = [k for k in by_parent.get(todo.pop(), []) if k not in exclude]
        out += kids
        todo += kids
    return out


def cpu_seconds(pid: int, exclude: Collection[int] = (), tree: ProcessTree | None = None) -> float:
    """User + system CPU of a process and its live descendants (all threads)."""
    family = [pid, *descendants(pid, exclude, tree)]
    return sum(process_cpu_seconds(p, gone=0.0) for p in family)


def peak_rss_mb(pid: int, exclude: Collection[int] = (), tree: ProcessTree | None = None) -> float:
    """Peak resident memory (VmHWM) of a process plus that of its live descendants."""
    total_kb = 0
    for p in [pid, *descendants(pid, exclude, tree)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat; idle and iowait left out)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: what else used the cores."""
    return [round(x, 2) for x in os.getloadavg()]
