"""Run perf_analyzer 2.51 (installed by bench/install_perf_analyzer.py) and read its CSV into a LoadResult.

Requests come from an `--input-data` JSON file built from the benchmark frames. BYTES tensors are given as
base64 of Triton's serialized form (a little-endian uint32 length, then the bytes): perf_analyzer sends "b64"
content as-is, and without the length prefix it reads the JPEG's first bytes as a length and refuses.
perf_analyzer does not look at the responses, and a per-request error response counts as a success in Triton's
statistics (docs/triton-notes.md §6): callers check one request with the Python client first.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import struct
import subprocess
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.stats import LoadResult

#: perf_analyzer CSV column -> our server breakdown key (values in microseconds)
SERVER_COLUMNS = {
    "Server Queue": "queue",
    "Server Compute Input": "compute_input",
    "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
}
RELAXED_STABILITY_PCT = 1000
_COUNT_RE = re.compile(r"Client:\s*\n\s*Request count: (\d+)")


class PerfAnalyzerFailed(RuntimeError):
    """perf_analyzer exited non-zero or wrote no result; the message carries its output tail."""


def serialized_bytes(value: bytes) -> str:
    return base64.b64encode(struct.pack("<I", len(value)) + value).decode("ascii")


def input_data(images: Sequence[bytes], *, streams: int = 4, start: datetime | None = None) -> dict[str, Any]:
    """One step per frame, round-robin over `streams` camera ids, frame timestamps 100 ms apart."""
    moment = start or datetime.now(timezone.utc)
    ids = [str(uuid.uuid4()) for _ in range(max(streams, 1))]
    steps = []
    for index, image in enumerate(images):
        stamp = (moment + timedelta(milliseconds=100 * index)).isoformat()
        steps.append(
            {
                "IMAGE": {"b64": serialized_bytes(image), "shape": [1]},
                "STREAM_ID": {"content": [ids[index % len(ids)]], "shape": [1]},
                "TIMESTAMP": {"content": [stamp], "shape": [1]},
            }
        )
    return {"data": steps}


def write_input_data(path: Path, images: Sequence[bytes], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(images, **kwargs)))
    return path


def parse_csv(text: str, *, protocol: str, duration_s: float, stdout: str = "") -> LoadResult:
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise PerfAnalyzerFailed("perf_analyzer wrote an empty CSV")
    row = rows[0]

    def ms(column: str) -> float:
        return float(row[column]) / 1000.0

    count = _COUNT_RE.search(stdout)
    return LoadResult(
        tool="perf_analyzer",
        protocol=protocol,
        concurrency=int(row["Concurrency"]),
        throughput=float(row["Inferences/Second"]),
        p50_ms=ms("p50 latency"),
        p95_ms=ms("p95 latency"),
        p99_ms=ms("p99 latency"),
        avg_ms=ms("Avg latency"),
        count=int(count.group(1)) if count else 0,
        errors=0,
        duration_s=duration_s,
        server_us={key: float(row[column]) for column, key in SERVER_COLUMNS.items() if column in row},
    )


@dataclasses.dataclass(frozen=True)
class PerfAnalyzer:
    """perf_analyzer with fixed measurement settings.

    Stability is checked loosely (`stability_pct`): on two shared cores a 10 % criterion often never settles,
    and the benchmark compares points measured close together rather than trusting any single window.
    """

    binary: Path
    measurement_ms: int = 2000
    stability_pct: int = 100
    max_trials: int = 5

    def command(
        self, *, model: str, url: str, protocol: str, concurrency: int, data: Path, csv_path: Path
    ) -> list[str]:
        return [
            str(self.binary),
            "-m", model,
            "-u", url,
            "-i", protocol,
            "--input-data", str(data),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(self.measurement_ms),
            "--stability-percentage", str(self.stability_pct),
            "--max-trials", str(self.max_trials),
            "-f", str(csv_path),
            "--verbose-csv",
        ]  # fmt: skip

    def run(
        self,
        *,
        model: str,
        url: str,
        protocol: str,
        concurrency: int,
        data: Path,
        workdir: Path,
        timeout_s: float = 180,
    ) -> LoadResult:
        workdir.mkdir(parents=True, exist_ok=True)
        csv_path = workdir / f"pa-{model}-{protocol}-c{concurrency}-{uuid.uuid4().hex[:6]}.csv"
        cmd = self.command(
            model=model, url=url, protocol=protocol, concurrency=concurrency, data=data, csv_path=csv_path
        )
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerFailed(f"perf_analyzer timed out after {timeout_s}s: {' '.join(cmd)}") from exc
        if (done.returncode != 0 or not csv_path.exists()) and self.stability_pct < RELAXED_STABILITY_PCT:
            # Unstable on a shared machine: measure again, keeping the windows whatever their spread.
            relaxed = dataclasses.replace(self, stability_pct=RELAXED_STABILITY_PCT)
            return relaxed.run(
                model=model,
                url=url,
                protocol=protocol,
                concurrency=concurrency,
                data=data,
                workdir=workdir,
                timeout_s=timeout_s,
            )
        if done.returncode != 0 or not csv_path.exists():
            tail = (done.stdout + done.stderr).strip()[-1500:]
            raise PerfAnalyzerFailed(f"perf_analyzer rc={done.returncode}: {tail}")
        return parse_csv(
            csv_path.read_text(),
            protocol=protocol,
            duration_s=3 * self.measurement_ms / 1000.0,
            stdout=done.stdout,
        )
