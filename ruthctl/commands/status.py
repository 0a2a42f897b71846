"""`ruthctl status`: one table of every model on every server: desired, actual, version, device, breaker, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import print_json, state_style
from ruthctl.exit_codes import ExitCode

if TYPE_CHECKING:
    from ruthctl.invariants import LocalFacts, ServerFacts
    from ruthctl.triton_client import TritonAdapter


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Desired state (registry), actual state (Triton's index), version, device, breaker and the latest error.

    Exit codes: 0 shown, 4 a server unreachable (its rows say so).
    """
    app = app_of(ctx)
    env = app.env()
    with app.adapters(env) as clients:
        rec = app.reconciler(env, clients, "status")
        local = rec.gather_local(thorough=False)
        servers = [rec.gather_server(client, local) for client in clients]
        devices = {str(c.endpoint): live_devices(c, facts) for c, facts in zip(clients, servers, strict=True)}
    rows = build_rows(local, servers, devices)
    code = ExitCode.UNREACHABLE if any(f.error for f in servers) else ExitCode.OK
    if json_out:
        print_json(
            {
                "profile": env.profile.value,
                "models": rows,
                "servers": {f.server: {"reachable": f.error is None, "error": f.error} for f in servers},
            }
        )
    else:
        from rich.table import Table

        table = Table(title=f"ruthctl status (profile {env.profile.value})")
        for column in ("server", "model", "version", "desired", "state", "triton", "device", "breaker", "recent error"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(
                row["server"],
                row["model"],
                str(row["version"] or "-"),
                row["desired"],
                state_style(row["state"]),
                state_style(row["triton"]),
                row["device"],
                row["breaker"],
                row["error"],
            )
        app.out().print(table)
    raise typer.Exit(int(code))


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


def build_rows(
    local: LocalFacts, servers: list[ServerFacts], devices: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    from ruthctl.invariants import desired_version

    registry = local.registry.models if local.registry else {}
    breakers = {(b.model, b.version): b for b in local.breakers}
    rows: list[dict[str, Any]] = []
    for facts in servers:
        names = sorted(set(local.specs) | set(registry) | set(facts.index))
        for name in names:
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
                {
                    "server": facts.server,
                    "model": name,
                    "version": int(triton.version) if triton and triton.ready and triton.version else version,
                    "desired": "-" if entry is None else entry.desired.value,
                    "state": None if mine is None else mine.state.value,
                    "triton": "UNREACHABLE" if facts.error else (triton.state if triton and triton.state else None),
                    "device": devices.get(facts.server, {}).get(name, "-"),
                    "breaker": breaker.state if breaker and breaker.state else "-",
                    "error": error.strip().splitlines()[0][:200] if error.strip() else "",
                }
            )
    return rows
