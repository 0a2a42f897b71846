"""CPU accounting from /proc: what each request cost in CPU time, and how busy the rest of the machine was.

Wall-clock throughput on a 2-core machine shared with other engineers' test runs moves by tens of percent from one
minute to the next. CPU time spent per request by the model's stub processes and by tritonserver does not depend
on who else is running (to first order), so it measures the cost of hardening directly; and the CPU that processes
outside the benchmark used during a point says how much that point was disturbed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing parenthesis
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int, proc: Path = PROC) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    fields = _stat_fields(pid, proc)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat


def children_of(pid: int, proc: Path = PROC) -> list[int]:
    out = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name), proc)
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    try:
        return (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def stub_pids(server_pid: int, model: str, proc: Path = PROC) -> list[int]:
    """The Python-backend stubs of `model`: children of the server whose argv names an instance `<model>_<g>_<i>`."""
    instance = re.compile(rf"^{re.escape(model)}_\d+_\d+$")
    return [pid for pid in children_of(server_pid, proc) if any(instance.match(arg) for arg in cmdline(pid, proc))]


def system_busy_s(proc: Path = PROC) -> float:
    """CPU seconds all cores spent not idle since boot."""
    fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / _TICK


def reaped_children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class Snapshot:
    #: per stub pid: a reload replaces stubs, so only pids seen now count, from zero when they are new
    stubs: Mapping[int, float]
    server: float
    all_server: float  # server + every stub of every model
    extra: float  # other processes of ours (the old-design server)
    own: float  # this process: Python client threads
    reaped: float  # finished children: perf_analyzer, in-process workers
    system: float

    def minus(self, before: Snapshot) -> dict[str, float]:
        d = {
            f.name: getattr(self, f.name) - getattr(before, f.name)
            for f in dataclasses.fields(self)
            if f.name != "stubs"
        }
        d["stubs"] = sum(cpu - before.stubs.get(pid, 0.0) for pid, cpu in self.stubs.items())
        ours = d["all_server"] + d["extra"] + d["own"] + d["reaped"]
        return {
            "stubs_s": d["stubs"],
            "server_s": d["server"],
            "client_s": d["own"] + d["reaped"],
            "extra_s": d["extra"],
            "foreign_s": max(d["system"] - ours, 0.0),
        }


def snapshot(
    server_pid: int, models: Iterable[str] = (), extra_pids: Iterable[int] = (), proc: Path = PROC
) -> Snapshot:
    """`models`: whose stubs count as the request's cost (the model and the models it calls through BLS)."""
    stubs = [pid for model in models for pid in stub_pids(server_pid, model, proc)]
    tree = children_of(server_pid, proc)
    return Snapshot(
        stubs={p: process_cpu_s(p, proc) for p in stubs},
        server=process_cpu_s(server_pid, proc),
        all_server=process_cpu_s(server_pid, proc) + sum(process_cpu_s(p, proc) for p in tree),
        extra=sum(process_cpu_s(p, proc) for p in extra_pids),
        own=own_s(),
        reaped=reaped_children_s(),
        system=system_busy_s(proc),
    )


def per_request(delta: Mapping[str, float], requests: int, wall_s: float) -> dict[str, float]:
    """CPU ms per request for the model's stubs, the server and the client, plus the machine's foreign load."""
    n = max(requests, 1)
    cores = os.cpu_count() or 1
    return {
        "stub_ms": 1000.0 * delta["stubs_s"] / n,
        "server_ms": 1000.0 * delta["server_s"] / n,
        "client_ms": 1000.0 * delta["client_s"] / n,
        "requests": float(requests),
        "foreign_cores": delta["foreign_s"] / wall_s if wall_s > 0 else 0.0,
        "cores": float(cores),
    }
