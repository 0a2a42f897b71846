"""One repair run: verify, plan one action per violation, carry the plan out, verify again (ruthctl repair).

A missing or damaged registry is fixed alone first (everything else is judged against it), then the plan is made
again from what the rebuilt registry says. `dry_run` plans and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ruthctl.exit_codes import ExitCode
from ruthctl.invariants import Action, ActionKind, ActionResult, Violation, plan_repairs
from ruthctl.reconcile import Reconciler

#: actions that fix the registry itself: after them the rest is planned again
REGISTRY_FIXES = frozenset({ActionKind.REBUILD_REGISTRY, ActionKind.ADOPT})


@dataclasses.dataclass(frozen=True)
class RepairReport:
    dry_run: bool
    found: Sequence[Violation]
    plan: Sequence[Action]
    results: Sequence[ActionResult]  # the plan's, then those of the second plan after a registry fix
    remaining: Sequence[Violation]

    @property
    def unfixable(self) -> list[Violation]:
        return [v for v in self.remaining if not v.fixable]

    @property
    def exit_code(self) -> ExitCode:
        """0 nothing left to fix; 1 violations remain; --dry-run: 3 when the plan has work, 1 only unfixable."""
        if self.dry_run:
            return ExitCode.DRIFT if self.plan else (ExitCode.ERROR if self.unfixable else ExitCode.OK)
        return ExitCode.OK if not self.remaining else ExitCode.ERROR

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "found": [v.to_json() for v in self.found],
            "plan": [a.to_json() for a in self.plan],
            "results": [r.to_json() for r in self.results],
            "remaining": [v.to_json() for v in self.remaining],
        }


def repair(rec: Reconciler, *, dry_run: bool) -> RepairReport:
    before = rec.verify()
    plan = plan_repairs(before)
    if dry_run:
        return RepairReport(True, before, plan, [], before)
    results = rec.execute(plan)
    if plan and all(a.kind in REGISTRY_FIXES for a in plan):
        results += rec.execute(plan_repairs(rec.verify()))
    return RepairReport(False, before, plan, results, rec.verify())
