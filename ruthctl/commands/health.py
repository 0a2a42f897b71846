"""`ruthctl health`: healthy | degraded | unhealthy, with exit codes 0/1/2, usable as a probe."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

from ruthctl.commands._common import adapters, out, print_json, reconciler, resolve


class Health(enum.IntEnum):
    """Also the exit code (documented for probes: 0 healthy, 1 degraded, 2 unhealthy)."""

    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2


def register(app: typer.Typer) -> None:
    app.command("health")(health)


def health(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Server liveness, readiness of every wanted model, breakers, dead stubs and zombies, rolled up.

    unhealthy: a server is unreachable or not live, or none of its wanted models is ready.
    degraded: some wanted model is not ready, a breaker is open or half-open, a stub process died, or a model
    reports zombies or ill health. Triton's own /v2/health/ready is shown but not used: in explicit mode it stays
    red after any failed load (docs/triton-notes.md §3).

    Exit codes: 0 healthy, 1 degraded, 2 unhealthy.
    """
    env = resolve(ctx)
    with adapters(env, timeout_s=5.0) as clients:
        rec = reconciler(env, clients, "health")
        local = rec.gather_local(thorough=False)
        reports = [server_health(client, rec.gather_server(client, local), local) for client in clients]
    overall = max((Health[r["status"].upper()] for r in reports), default=Health.UNHEALTHY)
    if json_out:
        print_json({"status": overall.name.lower(), "servers": reports})
    else:
        from rich.table import Table

        colour = {Health.HEALTHY: "green", Health.DEGRADED: "yellow", Health.UNHEALTHY: "red"}[overall]
        table = Table(title=f"health: [{colour}]{overall.name.lower()}[/{colour}]")
        for column in ("server", "status", "live", "triton ready", "models ready", "problems"):
            table.add_column(column, overflow="fold")
        for r in reports:
            ready = sum(1 for m in r["models"] if m["ready"])
            table.add_row(
                r["server"],
                r["status"],
                str(r["live"]),
                str(r["server_ready"]),
                f"{ready}/{len(r['models'])}",
                "; ".join(r["problems"]) or "-",
            )
        out().print(table)
    raise typer.Exit(int(overall))


def server_health(client: Any, facts: Any, local: Any) -> dict[str, Any]:
    from ruthctl.invariants import desired_version
    from ruthctl.registry import Desired, State
    from ruthctl.triton_client import TritonAPIError

    report: dict[str, Any] = {
        "server": facts.server,
        "live": False,
        "server_ready": False,
        "models": [],
        "problems": [],
    }
    try:
        report["live"] = client.live()
        report["server_ready"] = client.ready()
    except TritonAPIError as exc:
        report["problems"].append(str(exc))
    if facts.error or not report["live"]:
        problem = facts.error or "server not live"
        if problem not in report["problems"]:
            report["problems"].append(problem)
        report["status"] = Health.UNHEALTHY.name.lower()
        return report
    registry = local.registry.models if local.registry else None
    if registry is None:
        wanted = sorted(local.specs)
    else:
        wanted = sorted(
            n
            for n, e in registry.items()
            if e.desired is Desired.ACTIVE and e.on(facts.server).state is not State.DISABLED
        )
    breakers = {(b.model, b.version): b for b in local.breakers}
    degraded = False
    for name in wanted:
        entry = facts.index.get(name)
        version = desired_version(name, local.specs.get(name), registry.get(name) if registry else None)
        breaker = breakers.get((name, version))
        gauges = facts.gauges.get(name)
        stubs = (facts.stubs or {}).get(name)
        model = {
            "model": name,
            "ready": bool(entry and entry.ready),
            "breaker": breaker.state if breaker else None,
            "zombies": gauges.zombies if gauges else 0.0,
            "health": gauges.health if gauges else None,
            "stubs": None if stubs is None else {"alive": stubs[0], "expected": stubs[1]},
        }
        report["models"].append(model)
        problems = []
        if not model["ready"]:
            problems.append(
                "not ready" + (f" ({entry.state} {entry.reason})".rstrip() if entry and entry.state else "")
            )
        if model["breaker"] in ("open", "half_open"):
            problems.append(f"breaker {model['breaker']}")
        if stubs is not None and stubs[0] < stubs[1]:
            problems.append(f"{stubs[0]}/{stubs[1]} stubs alive")
        if model["zombies"]:
            problems.append(f"{model['zombies']:.0f} zombie inference(s)")
        if model["health"] is not None and model["health"] < 1:
            problems.append(f"health gauge {model['health']:.0f}")
        if problems:
            degraded = True
            report["problems"].append(f"{name}: {', '.join(problems)}")
    if wanted and not any(m["ready"] for m in report["models"]):
        report["status"] = Health.UNHEALTHY.name.lower()
    else:
        report["status"] = (Health.DEGRADED if degraded else Health.HEALTHY).name.lower()
    return report
