"""`python -m eval.accuracy [--split all|tune|heldout] [--smoke] [--out docs/accuracy.md]`

Runs the hand-labelled photographs (eval/labels.yaml) through the person models in the real tritonserver
(`cpu` profile, started exactly as `ruthctl serve` starts it) and writes docs/accuracy.md: person counts
(geo_fencing), lying people and falls (fall_detection, stills and sequences apart), PPE per worker
(ppe_detection, compliant and non-compliant workers apart), each per split and per condition, with every failure
listed. The pose passes of each deployment profile are also run in-process (the same ruth_vision code
pose_estimator runs) for their counts and their CPU time per frame. `--smoke` takes only the photographs that
ship in PyPI packages (no git snapshots needed): the CI subset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eval import dataset as ds

REPO_ROOT = Path(__file__).resolve().parent.parent
PERSON_MODELS = ["pose_estimator", "fall_detection", "geo_fencing", "ppe_detection"]
HEAD_MATCH = 0.12  # a person matches a labelled worker if the head is within this share of the frame's longer side
TARGETS = {
    "count_exact": 0.90,
    "crowd_within": 0.30,
    "lying_flagged": 0.80,
    "sequences_confirmed": 2 / 3,
    "false_alerts": 0.05,
    "ppe_compliant_pass": 0.80,
    "ppe_violation_caught": 0.90,
}

#: frames sent again after a deadline/unavailable answer from a busy host, per model (reported)
RETRIES: dict[str, int] = {}
Infer = Callable[[str, np.ndarray, str, float, dict[str, Any] | None], dict[str, Any]]


@dataclasses.dataclass
class Tally:
    ok: int = 0
    total: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def add(self, ok: bool, failure: str) -> None:
        self.total += 1
        self.ok += int(ok)
        if not ok:
            self.failures.append(failure)

    @property
    def rate(self) -> float | None:
        return self.ok / self.total if self.total else None


def _rate(t: Tally) -> str:
    return "–" if t.rate is None else f"{t.ok}/{t.total} ({100 * t.rate:.0f} %)"


# ---- talking to the server -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def served(profile: str = "cpu") -> Iterator[Infer]:
    """The person models in a real tritonserver; yields infer(model, frame, stream, t, config) -> RESULT."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import tritonclient.http as httpclient
    from support import person_weights, result_of, start_triton, vision_inputs
    from tritonclient.utils import InferenceServerException

    from python_backends.weights import default_weights_dir

    weights = person_weights(default_weights_dir())
    with tempfile.TemporaryDirectory(prefix="ruth-accuracy-") as tmp:
        handle = start_triton(
            Path(tmp), PERSON_MODELS, env={"RUTH_WEIGHTS_DIR": str(weights)}, profile=profile, exit_timeout_s=30
        )
        base = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
        try:
            with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, network_timeout=120)) as client:

                def infer(model: str, frame: np.ndarray, stream: str, t: float, config: dict[str, Any] | None) -> Any:
                    inputs = vision_inputs(
                        httpclient,
                        frame=np.ascontiguousarray(frame),
                        stream_id=stream,
                        timestamp=(base + dt.timedelta(seconds=t)).isoformat(),
                        config=config,
                    )
                    for attempt in range(4):
                        try:
                            return result_of(client.infer(model, inputs, timeout=120_000_000))
                        except InferenceServerException as exc:
                            # A busy shared host can push a pose pass past pose_estimator's 2 s deadline; this
                            # measures accuracy, not latency, so the frame is sent again (and counted).
                            if ("deadline" not in str(exc) and "Unavailable" not in str(exc)) or attempt == 3:
                                raise
                            RETRIES[model] = RETRIES.get(model, 0) + 1
                            time.sleep(2.0 * (attempt + 1))
                    raise AssertionError("unreachable")

                yield infer
        finally:
            handle.server.stop(grace_s=30)


# ---- scoring ------------------------------------------------------------------------------------------------------
def head_point(detection: Mapping[str, Any]) -> tuple[float, float]:
    face = [k for k in detection.get("keypoints", [])[:5] if k["confidence"] >= 0.3]
    if face:
        return float(np.mean([k["x"] for k in face])), float(np.mean([k["y"] for k in face]))
    x1, y1, x2, _ = detection["bbox"]
    return (x1 + x2) / 2, y1


def match_workers(
    workers: Iterable[ds.Worker], detections: list[dict[str, Any]], width: int, height: int
) -> list[dict[str, Any] | None]:
    """Each labelled worker's detection (nearest head within HEAD_MATCH), each detection used once."""
    free = list(range(len(detections)))
    matched: list[dict[str, Any] | None] = []
    limit = HEAD_MATCH * max(width, height)
    for worker in workers:
        wx, wy = worker.head[0] * width, worker.head[1] * height
        best, best_d = None, limit
        for i in free:
            hx, hy = head_point(detections[i])
            d = float(np.hypot(hx - wx, hy - wy))
            if d <= best_d:
                best, best_d = i, d
        if best is None:
            matched.append(None)
        else:
            free.remove(best)
            matched.append(detections[best])
    return matched


@dataclasses.dataclass
class Report:
    split: str
    counts: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    count_rows: list[tuple[str, str, int, int]] = dataclasses.field(default_factory=list)
    fall: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    sequences: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    ppe: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    ppe_items: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    conditions: dict[str, Tally] = dataclasses.field(default_factory=lambda: defaultdict(Tally))
    profiles: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: per real clip: (clip id, frames sent, frames with a lost-person search, frames with a person found by one)
    searches: list[tuple[str, int, int, int]] = dataclasses.field(default_factory=list)


def whole_frame_zone() -> dict[str, Any]:
    return {
        "zones": [
            {"id": "all", "name": "whole frame", "type": "restricted", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}
        ]
    }


def score_counts(report: Report, still: ds.Still, frame: np.ndarray, infer: Infer) -> None:
    result = infer("geo_fencing", frame, str(uuid.uuid4()), 0.0, whole_frame_zone())
    found = int(result.get("metadata", {}).get("persons_detected", len(result.get("detections", []))))
    truth = still.people
    if truth > 6:
        ok = abs(found - truth) <= TARGETS["crowd_within"] * truth
        key = "crowd (> 6 people), within ±30 %"
    elif still.people_sure:
        ok = found == truth
        key = "empty frames, exact" if truth == 0 else "1–6 people, exact"
    else:
        ok = found == truth
        key = "1–6 people, count uncertain (not scored against the target)"
    report.counts[key].add(ok, f"{still.id}: {found} found, {truth} labelled ({', '.join(still.conditions)})")
    report.count_rows.append((still.id, ", ".join(still.conditions), truth, found))
    for condition in still.conditions:
        report.conditions[f"count: {condition}"].add(ok, still.id)


def _events(result: Mapping[str, Any]) -> list[str]:
    return [d["event"] for d in result.get("detections", []) if d.get("event")]


def score_fall_still(
    report: Report, image_id: str, frame: np.ndarray, lying: int, postures: Mapping[str, int], infer: Infer, label: str
) -> None:
    result = infer("fall_detection", frame, str(uuid.uuid4()), 0.0, None)
    events = _events(result)
    summary = [f"{d['posture']}({d['lying_score']:.2f}, {d['torso_angle']}°)" for d in result.get("detections", [])]
    if lying:
        report.fall[f"lying people flagged ({label})"].add(
            len(events) >= lying, f"{image_id}: {len(events)} flagged of {lying} lying; seen {summary}"
        )
    else:
        kind = "empty" if not postures else "/".join(sorted(k for k, v in postures.items() if v))
        report.fall["no false alert on frames without a lying person"].add(
            not events, f"{image_id} ({kind}): {events}; seen {summary}"
        )
        report.fall[f"no false alert: {kind}"].add(not events, f"{image_id}: {events}; seen {summary}")


def score_sequence(report: Report, seq: ds.Sequence, base: np.ndarray, infer: Infer) -> None:
    stream = str(uuid.uuid4())
    seen: list[str] = []
    for t, frame in ds.sequence_frames(seq, base):
        result = infer("fall_detection", frame, stream, t, None)
        seen.append(",".join(_events(result)) or "-")
    confirmed = any("fall_detected" in s for s in seen)
    if seq.expect == "fall":
        report.sequences["rotated-still sequences confirmed (fall_detected)"].add(
            confirmed, f"{seq.id}: per frame {seen}"
        )
    else:
        report.sequences["still sequences (no fall) without fall_detected"].add(
            not confirmed, f"{seq.id}: per frame {seen}"
        )


def score_clip(report: Report, clip: ds.Clip, path: Path, infer: Infer) -> None:
    """A real fall on video, on one stream at the clip's own timestamps: fall_detected at or after the fall,
    and nothing flagged on the frames before it (walking, bending, playing ball)."""
    stream = str(uuid.uuid4())
    before: list[str] = []
    after: list[str] = []
    searched = recovered = 0
    for t, index, frame in ds.clip_frames(clip, path):
        result = infer("fall_detection", frame, stream, t, None)
        events = _events(result)
        detections = result.get("detections", [])
        searched += bool(result.get("metadata", {}).get("lost_searched"))
        recovered += any(d.get("recovered") for d in detections)
        # R: found by a search around a person the full-frame passes lost (ruth_vision.fall_search); x: a person
        # seen to fall who vanished where they lay (posture "lost", ruth_vision.fall `confirm_vanished`)
        seen = (
            ",".join(
                f"{'R' if d.get('recovered') else ''}{'x' if d['posture'] == 'lost' else d['posture'][0]}"
                f"{d['lying_score']:.2f}"
                for d in detections
            )
            or "none"
        )
        mark = "+".join(sorted(set(events))) or "-"
        label = f"{'hold' if index < 0 else index}:{seen}:{mark}"
        (before if 0 <= index < clip.fall_from else after).append(label)
    report.searches.append((clip.id, len(before) + len(after), searched, recovered))
    confirmed = any("fall_detected" in a.rsplit(":", 1)[1] for a in after)
    flagged = any(a.rsplit(":", 1)[1] != "-" for a in after)
    quiet = all(b.rsplit(":", 1)[1] == "-" for b in before)
    where = f"{clip.id} ({clip.ends}; {', '.join(clip.conditions)}): from the fall on {after}"
    report.sequences["real fall clips confirmed (fall_detected)"].add(confirmed, where)
    report.sequences["real fall clips flagged (possible_fall or fall_detected)"].add(flagged, where)
    report.sequences["real clips: nothing flagged before the fall"].add(
        quiet, f"{clip.id}: before the fall {[b for b in before if not b.endswith(':-')]}"
    )


def score_ppe(report: Report, still: ds.Still, frame: np.ndarray, infer: Infer) -> None:
    result = infer("ppe_detection", frame, str(uuid.uuid4()), 0.0, None)
    if still.people == 0:
        report.ppe["no violation on empty frames"].add(
            not result.get("violations"), f"{still.id}: {result.get('violations')}"
        )
        return
    if not still.workers:
        return
    height, width = frame.shape[:2]
    for index, (worker, detection) in enumerate(
        zip(still.workers, match_workers(still.workers, result.get("detections", []), width, height), strict=True)
    ):
        name = f"{still.id}#{index}"
        labelled = {k: v for k, v in (("hardhat", worker.hardhat), ("vest", worker.vest)) if v is not None}
        statuses = {} if detection is None else {i["item"]: i["status"] for i in detection.get("items", [])}
        got = {k: statuses.get(k, "not found") for k in labelled}
        compliant = all(labelled.values())
        # only the labelled items count: an item the labeller could not see is not scored either way
        alerted = [] if detection is None else [i for i in detection.get("alerted", []) if i in labelled]
        flagged = bool(alerted)
        where = f"{name} ({', '.join(still.conditions)}): labelled {labelled}, judged {got}"
        if compliant:
            report.ppe["compliant workers pass (no alert)"].add(detection is not None and not flagged, where)
        else:
            caught = any(item in alerted for item, worn in labelled.items() if not worn)
            report.ppe["violations caught (the missing item alerted)"].add(caught, where)
        for item, worn in labelled.items():
            status = got[item]
            key = f"{item} {'worn' if worn else 'not worn'}"
            good = status == ("present" if worn else "missing")
            report.ppe_items[key].add(good, f"{name}: {status}")
        for condition in still.conditions:
            report.conditions[f"ppe: {condition}"].add((not flagged) if compliant else flagged, name)


# ---- deployment profiles: passes, counts, CPU per frame ----------------------------------------------------------
def lost_search_around(box: tuple[float, float, float, float]) -> Any:
    """The search fall_detection makes for a person last seen in `box` (ruth_vision.fall_search.lost_searches)."""
    from ruth_vision.fall import FallConfig
    from ruth_vision.fall_search import Search

    x1, y1, x2, y2 = box
    side = max(FallConfig().search_grow * max(x2 - x1, y2 - y1), 32.0)
    return Search(0, (x1 + x2 - side) / 2, (y1 + y2 - side) / 2, side, box)


def profile_costs(stills: list[tuple[ds.Still, np.ndarray]]) -> list[dict[str, Any]]:
    from python_backends.weights import default_weights_dir
    from ruth_vision.fall import FallConfig
    from ruth_vision.fall_search import search_images
    from ruth_vision.pose import PoseEngineConfig, build_engine
    from ruthctl.render import render_parameters
    from ruthctl.spec import Profile, load_spec

    spec = load_spec(REPO_ROOT / "config" / "models" / "pose_estimator.yaml")
    keys = set(PoseEngineConfig.model_fields) - {"engine", "weights"}
    rows = []
    for profile in Profile:
        rendered = render_parameters(spec, profile)
        params = {k.removeprefix("model."): v for k, v in rendered.items() if k.startswith("model.")}
        detector = params.pop("person_detector", "")
        config = PoseEngineConfig.model_validate(
            {
                "engine": "litert",
                "weights": default_weights_dir() / params["weights"],
                "person_detector": default_weights_dir() / detector if detector else None,
                **{k: params[k] for k in keys if k in params},
            }
        )
        engine = build_engine(config, "cpu")
        engine.infer(np.zeros((256, 256, 3), np.uint8))
        exact, scored, crowd_ok, crowds, cpu, search_cpu = 0, 0, 0, 0, [], []
        for still, frame in stills:
            start = time.process_time()
            people = engine.infer(frame)
            cpu.append(time.process_time() - start)
            found = len(people)
            if people:  # what fall_detection adds on a frame where a tracked person went missing: one search
                search = lost_search_around(people[0].box)
                start = time.process_time()
                engine.infer_batch(search_images(frame, search, FallConfig().search_size))
                search_cpu.append(time.process_time() - start)
            if still.people > 6:
                crowds += 1
                crowd_ok += abs(found - still.people) <= TARGETS["crowd_within"] * still.people
            elif still.people_sure:
                scored += 1
                exact += found == still.people
        passes = ["256"] + [str(s) for s in config.extra_input_sizes]
        if config.tiles:
            passes.append(f"{config.tiles}x{config.tiles} tiles@{config.input_size}")
        if config.person_detector:
            passes.append("YOLOX-Nano people, posed on crops")
        rows.append(
            {
                "profile": profile.value,
                "passes": " + ".join(passes)
                + (" (+ rotated retry)" if config.rotated_retry else "")
                + (" (+ turned crops for wide/unsure people)" if config.rotated_people else ""),
                "exact": f"{exact}/{scored}",
                "crowds": f"{crowd_ok}/{crowds}",
                "cpu_ms_mean": 1000 * float(np.mean(cpu)) if cpu else 0.0,
                "cpu_ms_p90": 1000 * float(np.percentile(cpu, 90)) if cpu else 0.0,
                "search_ms_mean": 1000 * float(np.mean(search_cpu)) if search_cpu else 0.0,
            }
        )
    return rows


# ---- the run ------------------------------------------------------------------------------------------------------
def evaluate(dataset: ds.Dataset, infer: Infer, split: str, with_profiles: bool = True) -> Report:
    report = Report(split)
    paths = ds.materialise(dataset)
    frames = {s.id: ds.read_bgr(paths[s.id]) for s in dataset.stills if s.id in paths}
    bases = {d.base for d in dataset.lying} | {q.base for q in dataset.sequences}
    full = ds.load()
    for base in bases - frames.keys():  # a derived frame in this split made from a photograph of the other
        frames[base] = ds.read_bgr(ds.materialise(full, only=[base])[base])
    for still in dataset.stills:
        frame = frames[still.id]
        score_counts(report, still, frame, infer)
        score_fall_still(report, still.id, frame, still.lying, still.postures, infer, "real photographs")
        score_ppe(report, still, frame, infer)
    for derived in dataset.lying:
        frame = ds.rotated(frames[derived.base], derived.rotate)
        score_fall_still(report, derived.id, frame, 1, {"lying": 1}, infer, "rotated photographs")
    for seq in dataset.sequences:
        score_sequence(report, seq, frames[seq.base], infer)
    for clip in dataset.clips:
        score_clip(report, clip, paths[clip.id], infer)
    if with_profiles:
        report.profiles = profile_costs([(s, frames[s.id]) for s in dataset.stills])
    return report


def _section(title: str, tallies: Mapping[str, Tally], target: Mapping[str, str] | None = None) -> list[str]:
    lines = [f"### {title}", "", "| measure | result | target |", "|---|---|---|"]
    for key, tally in tallies.items():
        lines.append(f"| {key} | {_rate(tally)} | {(target or {}).get(key, '')} |")
    failures = [(k, f) for k, t in tallies.items() for f in t.failures]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- *{k}*: {f}" for k, f in failures]
    return [*lines, ""]


COUNT_TARGETS = {
    "1–6 people, exact": "≥ 90 %",
    "crowd (> 6 people), within ±30 %": "≥ 90 % (issue: within ±30 %)",
    "empty frames, exact": "no one found",
}
FALL_TARGETS = {
    "lying people flagged (rotated photographs)": "≥ 80 %",
    "lying people flagged (real photographs)": "≥ 80 %",
    "no false alert on frames without a lying person": "≥ 95 % (≤ 5 % false alerts)",
}
SEQ_TARGETS = {
    "real fall clips confirmed (fall_detected)": "≥ 2 of 3",
    "real clips: nothing flagged before the fall": "all",
}
PPE_TARGETS = {
    "compliant workers pass (no alert)": "≥ 80 %",
    "violations caught (the missing item alerted)": "≥ 90 %",
    "no violation on empty frames": "all",
}


def _sum(tallies: Iterable[Tally]) -> tuple[int, int]:
    items = list(tallies)
    return sum(t.ok for t in items), sum(t.total for t in items)


def _at_least(share: float, ok: int, total: int) -> tuple[int, int, bool]:
    return ok, total, bool(total) and ok >= share * total


SUMMARY: list[tuple[str, Callable[[Report], tuple[int, int, bool]]]] = [
    ("exact person count, 1–6 people (≥ 90 %)", lambda r: _at_least(0.9, *_sum([r.counts["1–6 people, exact"]]))),
    (
        "crowds counted within ±30 % (all)",
        lambda r: _at_least(1.0, *_sum([r.counts["crowd (> 6 people), within ±30 %"]])),
    ),
    ("empty frames: no one found", lambda r: _at_least(1.0, *_sum([r.counts["empty frames, exact"]]))),
    (
        "lying people flagged (≥ 80 %)",
        lambda r: _at_least(0.8, *_sum(t for k, t in r.fall.items() if k.startswith("lying"))),
    ),
    (
        "no false fall alert on standing/sitting/empty (≥ 95 %)",
        lambda r: _at_least(0.95, *_sum([r.fall["no false alert on frames without a lying person"]])),
    ),
    (
        "real fall clips confirmed (≥ 2 of 3)",
        lambda r: _at_least(2 / 3, *_sum([r.sequences["real fall clips confirmed (fall_detected)"]])),
    ),
    (
        "real fall clips: nothing flagged before the fall (all)",
        lambda r: _at_least(1.0, *_sum([r.sequences["real clips: nothing flagged before the fall"]])),
    ),
    (
        "rotated-still sequences confirmed (≥ 2 of 3)",
        lambda r: _at_least(2 / 3, *_sum([r.sequences["rotated-still sequences confirmed (fall_detected)"]])),
    ),
    (
        "no fall_detected on people not down, 12 s sequences (all)",
        lambda r: _at_least(1.0, *_sum([r.sequences["still sequences (no fall) without fall_detected"]])),
    ),
    ("compliant workers pass (≥ 80 %)", lambda r: _at_least(0.8, *_sum([r.ppe["compliant workers pass (no alert)"]]))),
    (
        "violations caught (≥ 90 %)",
        lambda r: _at_least(0.9, *_sum([r.ppe["violations caught (the missing item alerted)"]])),
    ),
    ("no PPE alert on empty frames", lambda r: _at_least(1.0, *_sum([r.ppe["no violation on empty frames"]]))),
]


def render(reports: list[Report], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Accuracy of the person models on real photographs",
        "",
        "Generated by `nox -s accuracy` (`python -m eval.accuracy`) from a run against the real tritonserver "
        f"(profile `{meta['profile']}`); do not edit by hand. Set: eval/labels.yaml (hand labels, provenance in "
        "eval/SOURCES.yaml, how it was made in eval/README.md).",
        "",
        f"Run: {meta['when']}, commit `{meta['commit']}`, {meta['stills']} photographs, {meta['lying']} rotated "
        f"lying copies, {meta['sequences']} rotated-still sequences, {meta['clips']} real fall clips, "
        f"{meta['seconds']:.0f} s; frames re-sent after a deadline "
        f"answer on the busy host: {meta['retries'] or 'none'}.",
        "",
        "**Splits.** `tune` is the set thresholds may be chosen on; `heldout` was never looked at while tuning. "
        "Targets are the issue's; a target missed is listed with its failure cases, not tuned away. Falls are "
        "measured on real care-home CCTV clips (eval/SOURCES.yaml `ambianic-fall`: evaluation use only, not "
        "redistributed; each clip's last frame held 4 s because the clips end about a second after the fall) and, "
        "separately, on semi-synthetic sequences (a real photograph of an upright person turned 90°).",
        "",
    ]
    lines += [
        "## Summary against the issue's targets",
        "",
        "| target | " + " | ".join(r.split for r in reports) + " |",
        "|---|" + "---|" * len(reports),
    ]
    for label, measure in SUMMARY:
        cells = []
        for report in reports:
            ok, total, met = measure(report)
            cells.append("–" if not total else f"{ok}/{total} {'**met**' if met else '**missed**'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Each missed target's failure cases are listed under its split below.", ""]
    for report in reports:
        lines += [f"## Split: {report.split}", ""]
        lines += _section("People counted (geo_fencing, persons_detected)", report.counts, COUNT_TARGETS)
        lines += _section(
            "Lying people on stills (fall_detection: possible_fall or fall_detected)", report.fall, FALL_TARGETS
        )
        lines += _section("Falls on sequences (fall_detection over frame time)", report.sequences, SEQ_TARGETS)
        lines += _section("PPE per worker (ppe_detection)", report.ppe, PPE_TARGETS)
        lines += _section("PPE per item", report.ppe_items)
        lines += _section(
            "Per condition (people counted exactly / PPE judged right)", dict(sorted(report.conditions.items()))
        )
        if report.profiles:
            lines += [
                "### Pose passes per deployment profile (in-process, same code as pose_estimator, LiteRT, 2 threads)",
                "",
                "| profile | passes | exact counts (0–6 people, sure) | crowds ±30 % | CPU ms/frame mean | p90 "
                "| + a lost-person search, CPU ms |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in report.profiles:
                lines.append(
                    f"| {row['profile']} | {row['passes']} | {row['exact']} | {row['crowds']} | "
                    f"{row['cpu_ms_mean']:.0f} | {row['cpu_ms_p90']:.0f} | {row['search_ms_mean']:.0f} |"
                )
            lines += [
                "",
                "CPU time is process CPU (both threads) on the shared 2-core build host: compare rows, not hosts. "
                "The last column is what fall_detection adds on a frame where a person it tracked on the way down "
                "went missing (ruth_vision.fall_search: the same passes on 3 crops of 256 px around where they were, "
                "one upright and two turned 90°); frames where nobody went missing cost nothing more.",
                "",
            ]
        if report.searches:
            lines += [
                "### Lost-person searches on the real fall clips (fall_detection)",
                "",
                "| clip | frames sent | frames with a search | frames with a person found by one |",
                "|---|---|---|---|",
            ]
            lines += [f"| {c} | {n} | {s} | {r} |" for c, n, s, r in report.searches]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


ACCURACY_START = "<!-- accuracy:start (written by `nox -s accuracy`) -->"
ACCURACY_END = "<!-- accuracy:end -->"


def update_benchmarks(reports: list[Report], doc: Path) -> bool:
    """Put the per-profile pose cost beside the accuracy it buys into docs/benchmarks.md, inside its hand-written
    reading (which `nox -s bench` keeps when it regenerates the report). False when the document has no reading."""
    from bench.report import READING_END

    if not doc.exists() or READING_END not in doc.read_text():
        return False
    lines = [
        ACCURACY_START,
        "### Person models: pose passes per profile, cost and accuracy (docs/accuracy.md)",
        "",
        "| split | profile | passes | exact counts (0–6 people, sure) | crowds ±30 % | CPU ms/frame mean | p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for row in report.profiles:
            lines.append(
                f"| {report.split} | {row['profile']} | {row['passes']} | {row['exact']} | {row['crowds']} | "
                f"{row['cpu_ms_mean']:.0f} | {row['cpu_ms_p90']:.0f} |"
            )
    lines += ["", "In-process LiteRT/ONNX Runtime CPU time, 2 threads, shared build host.", ACCURACY_END]
    text = doc.read_text()
    if ACCURACY_START in text and ACCURACY_END in text:
        head, rest = text.split(ACCURACY_START, 1)
        text = head + "\n".join(lines) + rest.split(ACCURACY_END, 1)[1]
    else:
        text = text.replace(READING_END, "\n".join(lines) + "\n" + READING_END, 1)
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)
    return True


def _commit() -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run(
    splits: list[str], out: Path, smoke: bool = False, profile: str = "cpu", with_profiles: bool = True
) -> list[Report]:
    dataset = ds.load()
    if smoke:
        packaged = {s.id for s in dataset.stills if dataset.sources[s.source]["kind"] == "package"}
        dataset = dataclasses.replace(
            dataset,
            stills=tuple(s for s in dataset.stills if s.id in packaged),
            lying=tuple(d for d in dataset.lying if d.base in packaged),
            sequences=tuple(q for q in dataset.sequences if q.base in packaged),
            clips=(),
        )
        splits = ["tune", "heldout"]
    started = time.monotonic()
    reports = []
    with served(profile) as infer:
        for split in splits:
            chosen = dataset.select(["tune", "heldout"] if split == "all" else [split])
            reports.append(evaluate(chosen, infer, split, with_profiles))
    meta = {
        "profile": profile,
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "stills": len(dataset.stills),
        "lying": len(dataset.lying),
        "sequences": len(dataset.sequences),
        "clips": len(dataset.clips),
        "seconds": time.monotonic() - started,
        "retries": dict(RETRIES),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(render(reports, meta))
    os.replace(tmp, out)
    (out.parent / (out.stem + ".json")).write_text(
        json.dumps(
            [
                {
                    "split": r.split,
                    "counts": {k: dataclasses.asdict(v) for k, v in r.counts.items()},
                    "fall": {k: dataclasses.asdict(v) for k, v in r.fall.items()},
                    "sequences": {k: dataclasses.asdict(v) for k, v in r.sequences.items()},
                    "ppe": {k: dataclasses.asdict(v) for k, v in r.ppe.items()},
                    "profiles": r.profiles,
                }
                for r in reports
            ],
            indent=1,
        )
    )
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--split",
        choices=["all", "tune", "heldout", "each"],
        default="each",
        help="each (default): tune and heldout reported apart",
    )
    parser.add_argument("--smoke", action="store_true", help="only the photographs shipped in PyPI packages")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "accuracy.md")
    parser.add_argument("--no-profiles", action="store_true", help="skip the per-profile pose passes")
    args = parser.parse_args(argv)
    splits = ["tune", "heldout"] if args.split == "each" else [args.split]
    reports = run(splits, args.out, smoke=args.smoke, with_profiles=not args.no_profiles)
    if not args.smoke and not args.no_profiles and args.out == REPO_ROOT / "docs" / "accuracy.md":
        update_benchmarks(reports, REPO_ROOT / "docs" / "benchmarks.md")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
