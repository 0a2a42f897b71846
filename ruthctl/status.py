"""What `ruthctl status` shows, as a typed report: every model on every server, desired against actual, with its
version, device, breaker and latest error. `ruthctl status` renders it (ruthctl/commands/status.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ruthctl.exit_codes import ExitCode
from ruthctl.invariants import LocalFacts, ServerFacts, desired_version

if TYPE_CHECKING:
    from ruthctl.reconcile import Reconciler
    from ruthctl.settings import Profile
    from ruthctl.triton_client import TritonAdapter


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """One model on one server."""

    server: str
    model: str
    version: int | None  # the version Triton serves when READY, else the one wanted
    desired: str  # ACTIVE | INACTIVE, or "-" when the registry has no entry
    state: str | None  # the registry's state on this server (None: no record)
    triton: str | None  # Triton's index state, UNREACHABLE, or None when Triton doesn't list it
    device: str  # instance groups of the live config and where they landed, or "-"
    breaker: str  # the breaker's state, or "-"
    error: str  # the latest failure reason (first line, 200 characters at most), or ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StatusReport:
    profile: Profile
    rows: Sequence[StatusRow]
    errors: Mapping[str, str | None]  # per server: why it couldn't be asked (None: it answered)

    @property
    def exit_code(self) -> ExitCode:
        """0 shown, 4 when a server was unreachable (its rows say so)."""
        return ExitCode.UNREACHABLE if any(self.errors.values()) else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.value,
            "models": [row.to_json() for row in self.rows],
            "servers": {server: {"reachable": error is None, "error": error} for server, error in self.errors.items()},
        }


def fleet_status(rec: Reconciler, clients: Sequence[TritonAdapter]) -> StatusReport:
    """Ask every server (and this host's registry, specs and breakers) once."""
    local = rec.gather_local(thorough=False)
    servers = [rec.gather_server(client, local) for client in clients]
    devices = {str(c.endpoint): live_devices(c, facts) for c, facts in zip(clients, servers, strict=True)}
    return build_report(rec.profile, local, servers, devices)


def live_devices(client: TritonAdapter, facts: ServerFacts) -> dict[str, str]:
    """`KIND_CPU x2` per READY model from its live config, plus where the instances actually landed (metrics)."""
    from ruthctl.triton_client import TritonAPIError

    devices: dict[str, str] = {}
    if facts.error:
        return devices
    for name, entry in facts.index.items():
        if not entry.ready:
            continue
        try:
            config = client.model_config(name)
        except TritonAPIError:
            continue
        from tritonclient.grpc import model_config_pb2 as pb

        groups = ", ".join(f"{pb.ModelInstanceGroup.Kind.Name(g.kind)} x{g.count}" for g in config.instance_group)
        placed = facts.gauges.get(name)
        devices[name] = groups + (f" ({'/'.join(placed.placements)})" if placed and placed.placements else "")
    return devices


def build_report(
    profile: Profile, local: LocalFacts, servers: Sequence[ServerFacts], devices: Mapping[str, Mapping[str, str]]
) -> StatusReport:
    """One row per model named by a spec, the registry or a server's index, on every server, sorted by name."""
    registry = local.registry.models if local.registry else {}
    breakers = {(b.model, b.version): b for b in local.breakers}
    rows: list[StatusRow] = []
    for facts in servers:
        for name in sorted(set(local.specs) | set(registry) | set(facts.index)):
            entry = registry.get(name)
            mine = entry.on(facts.server) if entry else None
            triton = facts.index.get(name)
            version = desired_version(name, local.specs.get(name), entry)
            breaker = breakers.get((name, version))
            error = ""
            if mine is not None and mine.state.value in ("FAILED", "DISABLED"):
                error = mine.reason
            elif triton is not None and triton.reason and triton.reason != "unloaded":
                error = triton.reason
            rows.append(
                StatusRow(
                    server=facts.server,
                    model=name,
                    version=int(triton.version) if triton and triton.ready and triton.version else version,
                    desired="-" if entry is None else entry.desired.value,
                    state=None if mine is None else mine.state.value,
                    triton="UNREACHABLE" if facts.error else (triton.state if triton and triton.state else None),
                    device=devices.get(facts.server, {}).get(name, "-"),
                    breaker=breaker.state if breaker and breaker.state else "-",
                    error=error.strip().splitlines()[0][:200] if error.strip() else "",
                )
            )
    return StatusReport(profile, tuple(rows), {facts.server: facts.error for facts in servers})
