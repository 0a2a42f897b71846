"""`ruthctl verify` and `repair` through the CLI: text, --json, exit codes (fake Triton)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ruthctl.registry import Desired, Registry
from ruthctl.triton_client import IndexEntry

S = "127.0.0.1:8000"


@pytest.fixture
def triton(fake_triton: Any, with_fakes: Any, deployment: Any) -> Any:
    server = fake_triton(S)
    with_fakes([server])
    registry = Registry(deployment.state)
    registry.set_desired("alpha", Desired.ACTIVE)
    registry.set_desired("beta", Desired.INACTIVE)
    return server


def test_verify_reports_each_violation_and_exits_1(cli: Any, triton: Any) -> None:
    triton.entries["beta"] = IndexEntry("beta", "2", "READY")
    result = cli("verify", url=S)
    assert result.exit_code == 1
    assert "not_ready" in result.stdout and "unwanted" in result.stdout
    document = json.loads(cli("verify", "--json", url=S).stdout)
    assert document["ok"] is False
    assert sorted((v["kind"], v["model"]) for v in document["violations"]) == [
        ("not_ready", "alpha"),
        ("unwanted", "beta"),
    ]


def test_repair_dry_run_plans_without_changing_anything(cli: Any, triton: Any) -> None:
    result = cli("repair", "--dry-run", "--json", url=S)
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert [(a["kind"], a["model"]) for a in document["plan"]] == [("load", "alpha")]
    assert document["results"] == [] and "alpha" not in triton.entries
    text = cli("repair", "--dry-run", url=S)
    assert "dry run: nothing changed" in text.stdout


def test_repair_fixes_then_verify_is_clean(cli: Any, triton: Any) -> None:
    result = cli("repair", url=S)
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "load" in result.stdout
    assert triton.entries["alpha"].ready
    clean = cli("verify", url=S)
    assert clean.exit_code == 0 and "no violations" in clean.stdout
    assert json.loads(cli("verify", "--json", url=S).stdout) == {"ok": True, "servers": [S], "violations": []}
    assert json.loads(cli("repair", "--json", url=S).stdout)["plan"] == []  # idempotent


def test_repair_reports_what_it_cannot_fix_and_exits_1(cli: Any, deployment: Any, triton: Any) -> None:
    (deployment.weights / "alpha" / "weights.bin").write_bytes(b"tampered")
    result = cli("repair", "--json", url=S)
    assert result.exit_code == 1
    remaining = json.loads(result.stdout)["remaining"]
    assert [(v["kind"], v["fixable"]) for v in remaining] == [("weight_corrupt", False)]
    assert "copy it from the test fixture" in remaining[0]["fix"]
    assert "need a person" in cli("repair", url=S).stderr


def test_repair_without_a_registry_adopts_then_repairs(cli: Any, deployment: Any, triton: Any) -> None:
    Registry(deployment.state).path.unlink()
    result = cli("repair", "--json", url=S)
    assert result.exit_code == 0, result.output
    kinds = [r["kind"] for r in json.loads(result.stdout)["results"]]
    assert kinds == ["adopt", "load", "load"]


def test_only_unreachable_servers_exit_4(cli: Any, triton: Any) -> None:
    triton.unreachable = True
    result = cli("verify", "--json", url=S)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["violations"][0]["kind"] == "server_unreachable"
