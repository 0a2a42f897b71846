"""Health rolled up per server and over the fleet: healthy | degraded | unhealthy, with the problems found.

unhealthy: a server is unreachable or not live, or none of its wanted models is ready.
degraded: some wanted model is not ready, a breaker is open or half-open, a stub process died, or a model reports
zombies or ill health. Triton's own /v2/health/ready is shown but not used: in explicit mode it stays red after any
failed load (docs/triton-notes.md §3). `ruthctl health` renders the report (ruthctl/commands/health.py).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ruthctl.exit_codes import ExitCode
from ruthctl.invariants import LocalFacts, ServerFacts, desired_version
from ruthctl.registry import Desired, State
from ruthctl.triton_client import TritonAdapter, TritonAPIError

if TYPE_CHECKING:
    from ruthctl.reconcile import Reconciler


class Health(str, enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self]


#: the exit code of `ruthctl health` per roll-up (docs/ruthctl.md, exit codes)
EXIT_CODES: Mapping[Health, ExitCode] = {
    Health.HEALTHY: ExitCode.OK,
    Health.DEGRADED: ExitCode.ERROR,
    Health.UNHEALTHY: ExitCode.UNHEALTHY,
}
_ORDER = (Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY)


@dataclasses.dataclass(frozen=True)
class ModelHealth:
    model: str
    ready: bool
    breaker: str | None
    zombies: float
    health: float | None
    stubs: tuple[int, int] | None  # (alive, expected); None: not known (server on another host)

    def problems(self, entry_state: str = "") -> list[str]:
        found = []
        if not self.ready:
            found.append("not ready" + (f" ({entry_state})" if entry_state else ""))
        if self.breaker in ("open", "half_open"):
            found.append(f"breaker {self.breaker}")
        if self.stubs is not None and self.stubs[0] < self.stubs[1]:
            found.append(f"{self.stubs[0]}/{self.stubs[1]} stubs alive")
        if self.zombies:
            found.append(f"{self.zombies:.0f} zombie inference(s)")
        if self.health is not None and self.health < 1:
            found.append(f"health gauge {self.health:.0f}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ready": self.ready,
            "breaker": self.breaker,
            "zombies": self.zombies,
            "health": self.health,
            "stubs": None if self.stubs is None else {"alive": self.stubs[0], "expected": self.stubs[1]},
        }


@dataclasses.dataclass(frozen=True)
class ServerHealth:
    server: str
    status: Health
    live: bool
    server_ready: bool
    models: Sequence[ModelHealth]
    problems: Sequence[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "live": self.live,
            "server_ready": self.server_ready,
            "models": [m.to_json() for m in self.models],
            "problems": list(self.problems),
            "status": self.status.value,
        }


@dataclasses.dataclass(frozen=True)
class HealthReport:
    servers: Sequence[ServerHealth]

    @property
    def status(self) -> Health:
        """The worst server's; unhealthy with no server at all."""
        return max((s.status for s in self.servers), key=_ORDER.index, default=Health.UNHEALTHY)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "servers": [s.to_json() for s in self.servers]}


def wanted_models(local: LocalFacts, server: str) -> list[str]:
    """Every spec without a registry; with one, the ACTIVE models not DISABLED on this server."""
    registry = local.registry.models if local.registry else None
    if registry is None:
        return sorted(local.specs)
    return sorted(
        n for n, e in registry.items() if e.desired is Desired.ACTIVE and e.on(server).state is not State.DISABLED
    )


def server_health(client: TritonAdapter, facts: ServerFacts, local: LocalFacts) -> ServerHealth:
    problems: list[str] = []
    live = server_ready = False
    try:
        live = client.live()
        server_ready = client.ready()
    except TritonAPIError as exc:
        problems.append(str(exc))
    if facts.error or not live:
        problem = facts.error or "server not live"
        if problem not in problems:
            problems.append(problem)
        return ServerHealth(facts.server, Health.UNHEALTHY, live, server_ready, [], problems)
    registry = local.registry.models if local.registry else None
    breakers = {(b.model, b.version): b for b in local.breakers}
    models: list[ModelHealth] = []
    degraded = False
    for name in wanted_models(local, facts.server):
        entry = facts.index.get(name)
        version = desired_version(name, local.specs.get(name), registry.get(name) if registry else None)
        breaker = breakers.get((name, version))
        gauges = facts.gauges.get(name)
        model = ModelHealth(
            model=name,
            ready=bool(entry and entry.ready),
            breaker=breaker.state if breaker else None,
            zombies=gauges.zombies if gauges else 0.0,
            health=gauges.health if gauges else None,
            stubs=(facts.stubs or {}).get(name),
        )
        models.append(model)
        found = model.problems(f"{entry.state} {entry.reason}".rstrip() if entry and entry.state else "")
        if found:
            degraded = True
            problems.append(f"{name}: {', '.join(found)}")
    if models and not any(m.ready for m in models):
        status = Health.UNHEALTHY
    else:
        status = Health.DEGRADED if degraded else Health.HEALTHY
    return ServerHealth(facts.server, status, live, server_ready, models, problems)


def fleet_health(rec: Reconciler, clients: Sequence[TritonAdapter]) -> HealthReport:
    """Ask every server (and this host's registry, specs and breakers) once; one `ServerHealth` per client."""
    local = rec.gather_local(thorough=False)
    return HealthReport([server_health(client, rec.gather_server(client, local), local) for client in clients])
