"""Facts about this host that Triton's API doesn't give: stub processes, weight files, breaker and ledger state.

In Triton 2.51 a Python stub that dies is not restarted, and the model still reads READY in the index and on
`/v2/models/<m>/ready` (docs/triton-notes.md §8.0): only the requests routed to the dead
instance fail, with "Stub process '<instance>' is not healthy." The reliable signal on the server's own host is
the process table: each stub's argv names its instance (`<model>_<group>_<n>`) and its parent tritonserver's pid.
For remote servers the metrics gauges are what's left (`ruth_model_health`, `ruth_zombie_threads`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ruthctl.spec import ModelSpec, WeightFile

__all__ = [
    "BreakerFile",
    "HealthGauges",
    "ProcessTable",
    "Stub",
    "StubMatch",
    "WeightProblem",
    "breaker_files",
    "check_weights",
    "match_stubs",
    "parse_health_gauges",
    "stale_ledger_entries",
]

STUB_BINARY = "triton_python_backend_stub"
SERVER_BINARY = "tritonserver"
BREAKER_NAME = re.compile(r"^(?P<model>[A-Za-z0-9_]+)-(?P<version>\d+)\.json$")


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


# -- weights -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightProblem:
    model: str
    path: Path
    missing: bool  # else: present with the wrong checksum
    source: str
    detail: str


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """sha256 per (path, size, mtime): `watch` re-checks weights every cycle without re-reading unchanged files."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        known = self._known.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = sha256_of(path)
        self._known[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest


def check_weights(
    specs: Iterable[ModelSpec], weights_dir: Path, digest: Callable[[Path], str] = sha256_of
) -> list[WeightProblem]:
    problems: list[WeightProblem] = []
    for spec in specs:
        for weight in spec.weights:
            problem = _check_weight(spec.name, weight, weights_dir, digest)
            if problem is not None:
                problems.append(problem)
    return problems


def _check_weight(
    model: str, weight: WeightFile, weights_dir: Path, digest: Callable[[Path], str]
) -> WeightProblem | None:
    path = weights_dir / weight.path
    how = f"; get it with: {weight.source}" if weight.source else ""
    if not path.is_file():
        return WeightProblem(model, path, True, weight.source, f"{path} is missing{how}")
    try:
        actual = digest(path)
    except OSError as exc:
        return WeightProblem(model, path, True, weight.source, f"{path} can't be read: {exc}{how}")
    if actual != weight.sha256:
        return WeightProblem(
            model,
            path,
            False,
            weight.source,
            f"{path} has sha256 {actual[:12]}…, the spec wants {weight.sha256[:12]}…{how}",
        )
    return None


# -- breaker files and the GPU ledger ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BreakerFile:
    model: str
    version: int
    path: Path
    state: str | None  # closed | half_open | open, None when unreadable
    retry_at: float | None
    consecutive_failures: int
    total_trips: int


def breaker_files(state_dir: Path) -> list[BreakerFile]:
    """Every `<state_dir>/breakers/<model>-<version>.json` (python_backends.breaker_storage.FileBreakerStorage)."""
    from python_backends.breaker_storage import FileBreakerStorage  # noqa: PLC0415 - only when there are breakers to read

    found: list[BreakerFile] = []
    for path in sorted((state_dir / "breakers").glob("*.json")):
        match = BREAKER_NAME.match(path.name)
        if match is None:
            continue
        snap = FileBreakerStorage(path).load()
        found.append(
            BreakerFile(
                model=match["model"],
                version=int(match["version"]),
                path=path,
                state=None if snap is None else snap.state.value,
                retry_at=None if snap is None else snap.retry_at,
                consecutive_failures=0 if snap is None else snap.consecutive_failures,
                total_trips=0 if snap is None else snap.total_trips,
            )
        )
    return found


def reset_breaker(path: Path, name: str) -> None:
    """Operator reset to CLOSED through the breaker's own code path (so its history fields stay consistent)."""
    from python_backends.breaker import BreakerPolicy, CircuitBreaker  # noqa: PLC0415
    from python_backends.breaker_storage import FileBreakerStorage  # noqa: PLC0415

    CircuitBreaker(name, BreakerPolicy(), FileBreakerStorage(path)).reset()


def remove_breaker(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def ledger_path(state_dir: Path) -> Path:
    return state_dir / "gpu-ledger.json"


def stale_ledger_entries(state_dir: Path) -> list[dict[str, Any]]:
    """Reservations in the GPU ledger whose process is gone (the ledger's own liveness rule)."""
    from python_backends.gpu_ledger import GpuLedger  # noqa: PLC0415
    from python_backends.storage import JsonFileStore  # noqa: PLC0415

    path = ledger_path(state_dir)
    if not path.exists():
        return []
    raw = JsonFileStore(path).read().get("reservations") or {}
    if not isinstance(raw, dict):
        return []
    live = {r.owner for r in GpuLedger(path).reservations()}
    return [dict(entry, owner=owner) for owner, entry in raw.items() if owner not in live and isinstance(entry, dict)]


def reap_ledger(state_dir: Path) -> int:
    from python_backends.gpu_ledger import GpuLedger  # noqa: PLC0415

    return len(GpuLedger(ledger_path(state_dir)).reap())


# -- metrics -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HealthGauges:
    """What the model processes report about themselves, per model (worst instance)."""

    health: float | None = None  # min ruth_model_health over instances
    zombies: float = 0.0  # max ruth_zombie_threads over instances
    breaker: float | None = None  # ruth_breaker_state (0 closed, 1 half-open, 2 open)
    placements: tuple[str, ...] = ()  # ruth_device_allocation == 1 placements


def parse_health_gauges(
    text: str | None, instances: Mapping[str, Iterable[str]] | None = None
) -> dict[str, HealthGauges]:
    """Our gauges from Triton's metrics text, by model name.

    Triton 2.51 keeps a Python model's custom metric series after its instances are gone (measured: they survive
    an unload), so with `instances` (model -> live instance names) a series of an instance that no longer exists
    is ignored instead of judging the model by a dead process's last word.
    """
    if not text:
        return {}
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    live = {model: set(names) for model, names in instances.items()} if instances is not None else None
    health: dict[str, float] = {}
    zombies: dict[str, float] = {}
    breaker: dict[str, float] = {}
    placements: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (
            "ruth_model_health",
            "ruth_zombie_threads",
            "ruth_breaker_state",
            "ruth_device_allocation",
        ):
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if not model:
                continue
            instance = sample.labels.get("instance")
            if instance is not None and live is not None and model in live and instance not in live[model]:
                continue
            if family.name == "ruth_model_health":
                health[model] = min(health.get(model, sample.value), sample.value)
            elif family.name == "ruth_zombie_threads":
                zombies[model] = max(zombies.get(model, 0.0), sample.value)
            elif family.name == "ruth_breaker_state":
                breaker[model] = max(breaker.get(model, 0.0), sample.value)
            elif sample.value >= 1 and sample.labels.get("placement"):
                placements.setdefault(model, set()).add(sample.labels["placement"])
    models = set(health) | set(zombies) | set(breaker) | set(placements)
    return {
        m: HealthGauges(
            health=health.get(m),
            zombies=zombies.get(m, 0.0),
            breaker=breaker.get(m),
            placements=tuple(sorted(placements.get(m, ()))),
        )
        for m in sorted(models)
    }
