"""One repair run as a function returning its report: the registry fixed first and the rest planned again, the
dry run, and the exit code each report calls for."""

from __future__ import annotations

from typing import Any

import pytest

from ruthctl.exit_codes import ExitCode
from ruthctl.invariants import ActionKind, Kind
from ruthctl.reconcile import Reconciler
from ruthctl.repair import repair


@pytest.fixture
def rec(reconciler: Reconciler) -> Reconciler:
    return reconciler


def test_a_dry_run_plans_changes_nothing_and_exits_drift(rec: Reconciler, deployment: Any) -> None:
    report = repair(rec, dry_run=True)
    assert Kind.REGISTRY_MISSING in [v.kind for v in report.found]
    assert [a.kind for a in report.plan] == [ActionKind.ADOPT]  # the registry alone: the rest is judged against it
    assert report.results == [] and report.remaining == report.found
    assert report.exit_code is ExitCode.DRIFT
    assert not (deployment.state / "registry.json").exists()


def test_a_missing_registry_is_adopted_first_then_the_rest_is_planned_again_in_the_same_run(rec: Reconciler) -> None:
    report = repair(rec, dry_run=False)
    assert [r.action.kind for r in report.results[:1]] == [ActionKind.ADOPT]
    assert sorted((r.action.kind, r.action.model) for r in report.results[1:]) == [
        (ActionKind.LOAD, "alpha"),
        (ActionKind.LOAD, "beta"),
    ]
    assert report.remaining == [] and report.exit_code is ExitCode.OK
    assert repair(rec, dry_run=False).found == []  # safe to run twice


def test_what_needs_a_person_remains_and_exits_1(rec: Reconciler, deployment: Any) -> None:
    (deployment.weights / "alpha" / "weights.bin").unlink()
    report = repair(rec, dry_run=False)
    assert report.unfixable and all(not v.fixable for v in report.unfixable)
    assert report.exit_code is ExitCode.ERROR
    assert repair(rec, dry_run=True).exit_code in (ExitCode.DRIFT, ExitCode.ERROR)
    document = report.to_json()
    assert set(document) == {"dry_run", "found", "plan", "results", "remaining"}
