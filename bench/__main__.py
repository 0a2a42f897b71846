"""`python -m bench [--smoke | --full] [--out DIR] [--no-perf-analyzer]`: run the benchmark, write the report.

--full (the default) writes docs/benchmarks.md, docs/bench/*.png and docs/bench/raw/full.json (about 10 minutes
on 2 cores); --smoke runs a few tiny points in under a minute and writes into bench-results/smoke unless --out
says otherwise. Progress goes to stderr; the report's path is the only line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench.harness import REPO_ROOT
from bench.plan import PLANS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny run for CI (< 60 s)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the real run (default)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: docs/ for --full)")
    parser.add_argument("--models", default=None, help="comma-separated models instead of the plan's")
    parser.add_argument(
        "--report-only",
        type=Path,
        default=None,
        metavar="RAW_JSON",
        help="rewrite the report from a raw JSON of an earlier run, measuring nothing",
    )
    parser.add_argument("--no-perf-analyzer", action="store_true", help="use only the Python client")
    args = parser.parse_args(argv)
    args.mode = args.mode or "full"
    if args.out is None:
        args.out = REPO_ROOT / ("docs" if args.mode == "full" else "bench-results/smoke")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only is not None:
        import json

        from bench.report import write_report
        from bench.targets import evaluate

        results = json.loads(args.report_only.read_text())
        results["targets"] = evaluate(results)
        print(write_report(results, args.out))
        return 0
    from bench.run import run

    plan = PLANS[args.mode]
    if args.models:
        plan = dataclasses.replace(plan, models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    run(plan, args.out, use_perf_analyzer=not args.no_perf_analyzer)
    print(args.out / "benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
