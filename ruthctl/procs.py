"""The process table of this host: Triton's stub processes, which Triton's API doesn't show.

In Triton 2.51 a Python stub that dies is not restarted, and the model still reads READY in the index and on
`/v2/models/<m>/ready` (docs/triton-notes.md §8.0): only the requests routed to the dead
instance fail, with "Stub process '<instance>' is not healthy." The reliable signal on the server's own host is
the process table: each stub's argv names its instance (`<model>_<group>_<n>`) and its parent tritonserver's pid.
For remote servers the metrics gauges are what's left (`ruthctl.gauges`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Process", "ProcessTable", "Stub", "StubMatch", "match_stubs", "stubs_of"]

STUB_BINARY = "triton_python_backend_stub"
SERVER_BINARY = "tritonserver"


@dataclasses.dataclass(frozen=True)
class Process:
    pid: int
    argv: tuple[str, ...]


class ProcessTable:
    """Processes of this host, read from `/proc` (injectable for tests)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def processes(self) -> list[Process]:
        found: list[Process] = []
        try:
            entries = list(self.proc.iterdir())
        except OSError:  # no /proc (not Linux): stub liveness can't be judged here
            return found
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:  # exited meanwhile, or not ours to read
                continue
            argv = tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
            if argv:
                found.append(Process(int(entry.name), argv))
        return found

    def server_pid(self, host: str, port: int, processes: Iterable[Process] | None = None) -> int | None:
        """The tritonserver listening on `port` (HTTP or gRPC), by its argv; None if it isn't on this host."""
        return next(iter(self.server_pids(port, processes)), None)

    def server_pids(self, port: int, processes: Iterable[Process] | None = None) -> list[int]:
        """Every visible tritonserver whose argv names `port` (HTTP or gRPC)."""
        wanted = {f"--http-port={port}", f"--grpc-port={port}"}
        found: list[int] = []
        for process in processes if processes is not None else self.processes():
            if Path(process.argv[0]).name != SERVER_BINARY:
                continue
            if wanted & set(process.argv) or _split_flag_match(process.argv, port):
                found.append(process.pid)
        return found

    def listening(self, port: int) -> bool:
        """Whether a TCP socket of this network namespace listens on `port` (`<proc>/net/tcp`, `tcp6`).

        A server whose socket is here but whose process isn't in the table runs in the same network namespace and
        another process namespace: a Kubernetes sidecar without `shareProcessNamespace`, typically.
        """
        wanted = f"{port:04X}"
        for table in ("tcp", "tcp6"):
            try:
                lines = (self.proc / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and fields[1].rsplit(":", 1)[-1] == wanted:
                    return True
        return False

    def addresses(self, pid: int) -> set[str]:
        """The IPv4 addresses local to the network namespace of process `pid` (its `net/fib_trie`)."""
        try:
            lines = (self.proc / str(pid) / "net" / "fib_trie").read_text().splitlines()
        except OSError:
            return set()
        found: set[str] = set()
        last = ""
        for line in lines:
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text[3:].strip().split("/")[0]
            elif text.startswith("/32 host LOCAL") and last:
                found.add(last)
        return found

    def stub_processes(self, server_pid: int, processes: Iterable[Process] | None = None) -> list[Stub]:
        """The stub processes of one tritonserver, each with its instance name and whether Triton retired it."""
        found: list[Stub] = []
        for process in processes if processes is not None else self.processes():
            argv = process.argv
            # argv: stub, model.py, shm region, shm size, growth, parent pid, backends dir, ipc size, instance, ...
            if Path(argv[0]).name != STUB_BINARY or len(argv) < 9:
                continue
            if argv[5] == str(server_pid):
                found.append(Stub(process.pid, argv[8], self._region_unlinked(process.pid, argv[2])))
        return found

    def stubs(self, server_pid: int, processes: Iterable[Process] | None = None) -> list[str]:
        """Instance names (`<model>_<group>_<n>`) of the live (not retired) stubs of one tritonserver."""
        return [s.instance for s in self.stub_processes(server_pid, processes) if not s.retired]

    def _region_unlinked(self, pid: int, region: str) -> bool:
        """Whether the stub's shared-memory region is mapped but deleted: Triton unlinks it when it destroys the
        instance, so a stub still running with it is a leftover Triton no longer uses. Unknown (maps unreadable,
        region not mapped yet) reads as in use."""
        try:
            maps = (self.proc / str(pid) / "maps").read_text(errors="replace").splitlines()
        except OSError:
            return False
        path = f"/dev/shm/{region.lstrip('/')}"
        lines = [line for line in maps if path in line]
        return bool(lines) and all(line.rstrip().endswith("(deleted)") for line in lines)


def _split_flag_match(argv: tuple[str, ...], port: int) -> bool:
    """`--http-port 8000` spelled as two argv items."""
    return any(
        flag in ("--http-port", "--grpc-port") and value == str(port) for flag, value in itertools.pairwise(argv)
    )


def stubs_of(model: str, instances: Iterable[str]) -> int:
    pattern = re.compile(rf"^{re.escape(model)}_\d+_\d+$")
    return sum(1 for name in instances if pattern.match(name))


@dataclasses.dataclass(frozen=True)
class Stub:
    pid: int
    instance: str
    retired: bool  # its shared-memory region is unlinked: Triton destroyed the instance and the process lingers


@dataclasses.dataclass(frozen=True)
class StubMatch:
    """One model's stub processes judged against the instances Triton should be running.

    Live stubs are counted, not matched by name: after an in-place instance update (a reload that only changes
    `instance_group`) Triton keeps whichever instances it likes under their old names and names the new ones
    after free slots, so `sleepy_0_2` alone, or `sleepy_0_2` twice, is a whole model (docs/triton-notes.md
    §8.1). A stub Triton has retired (its region unlinked) is an orphan and never counts as alive, so a leftover
    of an earlier episode can't make up for a dead stub.
    """

    expected: tuple[str, ...]
    alive: int  # live stub processes of this model
    orphans: tuple[str, ...]  # retired stubs still running, and live ones beyond the instance count

    @property
    def dead(self) -> int:
        return max(0, len(self.expected) - self.alive)


def match_stubs(model: str, expected: Iterable[str], stubs: Iterable[Stub]) -> StubMatch:
    wanted = tuple(expected)
    pattern = re.compile(rf"^{re.escape(model)}_\d+_\d+$")
    mine = [s for s in stubs if pattern.match(s.instance)]
    live = sorted(s.instance for s in mine if not s.retired)
    orphans = [f"{s.instance} (pid {s.pid}, retired by Triton)" for s in mine if s.retired]
    if len(live) > len(wanted):
        orphans.append(f"{len(live)} live stub processes for {len(wanted)} instances ({', '.join(live)})")
    return StubMatch(expected=wanted, alive=min(len(live), len(wanted)), orphans=tuple(orphans))
