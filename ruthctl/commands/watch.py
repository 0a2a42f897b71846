"""`ruthctl watch`: the reconcile loop (verify + repair forever), zombie recovery and its own metrics port."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import ChangeTimeoutOption, StuckAfterOption, fail, print_json
from ruthctl.exit_codes import ExitCode

if TYPE_CHECKING:
    from ruthctl.reconcile import Reconciler


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)


def watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 10.0,
    max_attempts: Annotated[int, typer.Option(help="Recoveries of one model before it is DISABLED.")] = 3,
    backoff: Annotated[float, typer.Option(help="Wait after a recovery before the next (doubles, capped).")] = 10.0,
    max_backoff: Annotated[
        float, typer.Option(help="Cap of the recovery backoff and of the loop's error backoff.")
    ] = 300.0,
    stable_after: Annotated[float, typer.Option(help="Healthy this long after a recovery resets the count.")] = 600.0,
    stuck_after: StuckAfterOption = 300.0,
    timeout: ChangeTimeoutOption = 120.0,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port (0 = off).")] = 9108,
    metrics_addr: Annotated[str, typer.Option(help="Address the metrics port binds.")] = "127.0.0.1",
    iterations: Annotated[
        int | None, typer.Option(help="Stop after this many rounds (default: run until signalled).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per round on stdout.")] = False,
) -> None:
    """Keep every server in the desired state: each round verifies, repairs, and recovers dead or hung models.

    A model whose stub process died (servers on this host), whose zombie inferences crossed its limit, or which is
    wanted but not READY is reloaded, with exponential backoff; after --max-attempts recoveries that didn't hold it
    is DISABLED until `ruthctl activate`. Metrics on --metrics-port: ruthctl_model_desired, ruthctl_model_state,
    ruthctl_model_ready, ruthctl_model_drift, ruthctl_violations, ruthctl_server_up, ruthctl_repairs_total,
    ruthctl_recoveries_total, ruthctl_disabled_total, ruthctl_reconcile_duration_seconds,
    ruthctl_last_reconcile_timestamp_seconds.

    Exit codes: 0 stopped by SIGTERM (or after --iterations), 130 stopped by Ctrl-C, 2 bad options.
    """
    from ruthctl.watch import Cycle, RecoveryPolicy, Watcher, WatchMetrics, summary

    try:
        policy = RecoveryPolicy(
            max_attempts=max_attempts, backoff_s=backoff, max_backoff_s=max_backoff, stable_after_s=stable_after
        )
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    app = app_of(ctx)
    env = app.env()
    err = app.err
    metrics = WatchMetrics()
    if metrics_port:
        try:
            metrics.serve(metrics_port, metrics_addr)
        except OSError as exc:
            fail(f"metrics port {metrics_addr}:{metrics_port}: {exc}")
        err.print(f"metrics on http://{metrics_addr}:{metrics_port}/metrics")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    def report(cycle: Cycle) -> None:
        if json_out:
            print_json(app.out(), summary(cycle))
            return
        if cycle.error:
            err.print(f"[red]round failed:[/red] {cycle.error}")
        for result in cycle.actions:
            mark = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
            err.print(
                f"{mark} {result.action.kind.value} {result.action.model or ''} {result.action.server or ''}: "
                f"{result.detail}",
                highlight=False,
            )
        for deferred in cycle.deferred:
            err.print(f"[yellow]later[/yellow] {deferred.action.model} on {deferred.action.server}: {deferred.why}")
        unfixed = [v for v in cycle.violations if not v.fixable]
        for v in unfixed:
            err.print(f"[yellow]needs a person[/yellow] {v.kind.value} {v.model or ''}: {v.detail}", highlight=False)

    @contextlib.contextmanager
    def connect() -> Iterator[Reconciler]:
        with app.adapters(env, load_timeout_s=timeout) as clients:
            yield app.reconciler(
                env, clients, "watch", stuck_after_s=stuck_after, load_timeout_s=timeout, unload_timeout_s=timeout
            )

    watcher = Watcher(connect, policy, metrics, interval_s=interval, max_interval_s=max_backoff, on_cycle=report)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        watcher.run(stop, iterations=iterations)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(int(ExitCode.INTERRUPTED if signal.SIGINT in received else ExitCode.OK))
