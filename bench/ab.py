"""`python -m bench.ab --other DIR`: this checkout's hardening overhead against another checkout's, interleaved.

"Overhead per request no worse" after a redesign can't be read from two bench runs made hours apart on a shared
machine: the noise between runs is larger than the effect. This runs the hardening-overhead section (full model vs
its bare twin, CPU time per request from /proc) in both checkouts, alternating which goes first, on the same
frames and the same plan, and reports medians per checkout side by side.

Each side runs in a child process started with that checkout's own virtual environment (scripts/install.sh makes
one per checkout) and working directory, so the server, the models and the library are that checkout's. The child
needs only what both sides share: `bench.run` (discover, load_models, write_bench_repository, start_triton) and
`bench.sections` (Bench, overhead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("tank_overflow_monitoring", "chane_tank_monitor")


@dataclasses.dataclass(frozen=True)
class Side:
    label: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"


def _child(models: list[str], point_s: float, rounds: int, concurrency: int, out: Path) -> None:
    """Runs in the measured checkout (cwd): one server, the overhead section, its numbers as JSON."""
    from bench.harness import bench_frames, start_triton
    from bench.plan import FULL
    from bench.run import discover, load_models, stderr_log, write_bench_repository
    from bench.sections import Bench, overhead

    plan = dataclasses.replace(
        FULL,
        models=tuple(models),
        point_s=point_s,
        overhead_rounds=rounds,
        overhead_concurrency=concurrency,
    )
    frames = bench_frames()
    images, raw = [frame[0] for frame in frames], [frame[1] for frame in frames]
    vision, callees, _ = discover(plan)
    with tempfile.TemporaryDirectory(prefix="ruth-ab-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repository"
        write_bench_repository(repo, vision, also_copy=callees)
        handle = start_triton(tmp / "server", [], repository=repo)
        try:
            loaded, skipped = load_models(handle, vision, callees, images[0], stderr_log)
            if skipped:
                raise SystemExit(f"models not loaded: {skipped}")
            bench = Bench(
                plan=plan,
                handle=handle,
                images=images,
                raw=raw,
                workdir=tmp,
                perf=None,
                pa_data=None,
                log=stderr_log,
                callees=tuple(callees),
            )
            result = overhead(bench, loaded)
        finally:
            handle.server.stop(grace_s=30)
    summary = {
        model: {
            "full_cpu_ms": r["cpu_ms"]["full"],
            "bare_cpu_ms": r["cpu_ms"]["bare"],
            "added_cpu_ms": r["cpu_ms"]["added"],
            "throughput_ratio": r["throughput_ratio"],
            "foreign_cores": r["foreign_cores"],
        }
        for model, r in result.items()
    }
    out.write_text(json.dumps(summary))


def measure(side: Side, models: tuple[str, ...], point_s: float, rounds: int, concurrency: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            str(side.python),
            str(Path(__file__).resolve()),
            "--child",
            out.name,
            "--models",
            ",".join(models),
            "--point-s",
            str(point_s),
            "--rounds",
            str(rounds),
            "--concurrency",
            str(concurrency),
        ]
        subprocess.run(cmd, cwd=side.root, check=True)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
        return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(sides: tuple[Side, Side], samples: dict[str, list[dict[str, Any]]], models: tuple[str, ...]) -> str:
    this, other = sides
    lines = [
        f"| model | metric | {other.label} | {this.label} | {this.label} − {other.label} |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        for metric in ("full_cpu_ms", "added_cpu_ms", "bare_cpu_ms", "throughput_ratio"):
            a = _median([s[model][metric] for s in samples[other.label]])
            b = _median([s[model][metric] for s in samples[this.label]])
            lines.append(f"| {model} | {metric} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    spread = {
        side.label: [round(s[model]["full_cpu_ms"], 3) for s in samples[side.label] for model in models[:1]]
        for side in sides
    }
    lines.append("")
    lines.append(f"full_cpu_ms of {models[0]} per run, to show the spread: {json.dumps(spread)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the other checkout (with its own .venv)")
    parser.add_argument("--other-label", default="other")
    parser.add_argument("--this", type=Path, default=HERE, help="this checkout (default: the one this file is in)")
    parser.add_argument("--this-label", default="this")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=4, help="server runs per checkout, alternating")
    parser.add_argument("--rounds", type=int, default=2, help="full/bare rounds inside each run")
    parser.add_argument("--point-s", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if args.child is not None:
        _child(list(models), args.point_s, args.rounds, args.concurrency, args.child)
        return 0
    if args.other is None:
        parser.error("--other is required")
    sides = (Side(args.this_label, args.this.resolve()), Side(args.other_label, args.other.resolve()))
    for side in sides:
        if not side.python.exists():
            parser.error(f"{side.root} has no .venv: run scripts/install.sh there")
    samples: dict[str, list[dict[str, Any]]] = {side.label: [] for side in sides}
    started = time.monotonic()
    for run in range(args.runs):
        order = sides if run % 2 == 0 else sides[::-1]
        for side in order:
            print(f"run {run + 1}/{args.runs}: {side.label} ({side.root})", file=sys.stderr, flush=True)
            samples[side.label].append(measure(side, models, args.point_s, args.rounds, args.concurrency))
    if args.json is not None:
        args.json.write_text(json.dumps({"sides": [str(s.root) for s in sides], "samples": samples}, indent=1))
    print(report(sides, samples, models))
    print(f"\n{args.runs} runs per checkout, {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.path[0] = str(Path.cwd())  # the measured checkout's bench package, not this file's
    sys.exit(main())
