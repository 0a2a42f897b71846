"""The reconciler's I/O: gathering facts from a real deployment folder and a fake server, executing plans."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from ruthctl.invariants import Action, ActionKind, Kind, plan_repairs
from ruthctl.procs import ProcessTable
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Desired, Registry, State
from ruthctl.settings import Profile
from ruthctl.triton_client import IndexEntry

S = "127.0.0.1:8000"
NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


# -- the reconciler's I/O, on a real deployment folder and a fake server (the `reconciler` fixture) -------------


def triton_of(reconciler: Reconciler) -> Any:
    return reconciler.adapters[S]


def repair(reconciler: Reconciler) -> list[Any]:
    return reconciler.execute(plan_repairs(reconciler.verify()))


def test_adopt_then_load_brings_a_fresh_deployment_to_its_specs(reconciler: Reconciler) -> None:
    assert next(v.kind for v in reconciler.verify()) is Kind.REGISTRY_MISSING
    [adopt] = repair(reconciler)
    assert adopt.ok and adopt.action.kind is ActionKind.ADOPT
    results = repair(reconciler)
    assert sorted((r.action.kind, r.action.model, r.ok) for r in results) == [
        (ActionKind.LOAD, "alpha", True),
        (ActionKind.LOAD, "beta", True),
    ]
    assert reconciler.verify() == []
    assert triton_of(reconciler).entries["beta"].version == "2"


def test_disk_drift_is_found_by_comparing_messages_and_fixed_by_regenerating(
    reconciler: Reconciler, deployment: Any
) -> None:
    config = deployment.repository / "alpha" / "configs" / "gpu.pbtxt"
    config.write_text(config.read_text().replace("count: 1", "count: 3", 1))
    (deployment.repository / "beta" / "config.pbtxt").unlink()
    local_facts = reconciler.gather_local()
    assert set(local_facts.disk_drift) == {"alpha", "beta"}
    assert any("count: 1 != 3" in d for d in local_facts.disk_drift["alpha"])
    text = (deployment.repository / "alpha" / "config.pbtxt").read_text()
    (deployment.repository / "alpha" / "config.pbtxt").write_text("# reformatted by hand\n" + text)
    assert "alpha/config.pbtxt" not in " ".join(reconciler.gather_local().disk_drift["alpha"])  # same message
    reconciler.registry.set_desired("alpha", Desired.INACTIVE)
    reconciler.registry.set_desired("beta", Desired.INACTIVE)
    results = repair(reconciler)
    assert {r.action.model for r in results if r.action.kind is ActionKind.REGENERATE} == {"alpha", "beta"}
    assert reconciler.gather_local().disk_drift == {}


def test_live_drift_is_repaired_by_a_reload_with_the_spec_config(reconciler: Reconciler) -> None:
    reconciler.registry.set_desired("alpha", Desired.ACTIVE)
    reconciler.registry.set_desired("beta", Desired.INACTIVE)
    repair(reconciler)
    triton = triton_of(reconciler)
    triton.configs["alpha"].instance_group[0].count = 1  # someone reloaded it by hand
    assert [(v.kind, v.model) for v in reconciler.verify()] == [(Kind.LIVE_DRIFT, "alpha")]
    repair(reconciler)
    assert triton.configs["alpha"].instance_group[0].count == 2
    assert reconciler.verify() == []


def test_breaker_orphans_and_stale_ledger_entries_are_cleaned(reconciler: Reconciler, deployment: Any) -> None:
    reconciler.registry.set_desired("alpha", Desired.INACTIVE)
    reconciler.registry.set_desired("beta", Desired.INACTIVE)
    breakers = deployment.state / "breakers"
    breakers.mkdir()
    (breakers / "ghost-1.json").write_text(json.dumps({"state": "closed", "schema": 1}))
    (breakers / "alpha-1.json").write_text(json.dumps({"state": "closed", "schema": 1}))
    (deployment.state / "gpu-ledger.json").write_text(
        json.dumps(
            {
                "reservations": {
                    "o": {
                        "owner": "o",
                        "pid": 0,
                        "device_index": 0,
                        "bytes": 1,
                        "model": "alpha",
                        "version": "1",
                        "instance": "a",
                        "created_at": 1.0,
                    }
                }
            }
        )
    )
    assert sorted(v.kind.value for v in reconciler.verify()) == ["breaker_orphan", "ledger_stale"]
    assert all(r.ok for r in repair(reconciler))
    assert reconciler.verify() == []
    assert (breakers / "alpha-1.json").exists() and not (breakers / "ghost-1.json").exists()


def test_a_breaker_file_outside_the_state_dir_is_never_removed(reconciler: Reconciler, tmp_path: Path) -> None:
    victim = tmp_path / "precious.json"
    victim.write_text("{}")
    [result] = reconciler.execute([Action(ActionKind.REMOVE_BREAKER, "x", subject=str(victim))])
    assert not result.ok and victim.exists()


def test_a_stuck_claim_is_resolved_from_what_triton_says(reconciler: Reconciler) -> None:
    reconciler.registry.set_desired("beta", Desired.INACTIVE)
    reconciler.registry.set_desired("alpha", Desired.ACTIVE)
    reconciler.registry.transition("alpha", S, State.LOADING)
    reconciler.stuck_after_s = -1
    assert [v.kind for v in reconciler.verify()] == [Kind.STUCK]
    results = repair(reconciler)
    assert [r.detail for r in results] == ["recorded FAILED (the next round loads it again if it is wanted)"]
    reconciler.stuck_after_s = 300
    repair(reconciler)
    assert reconciler.registry.get("alpha").on(S).state is State.READY  # type: ignore[union-attr]


def test_a_damaged_registry_is_rebuilt_before_anything_else(reconciler: Reconciler) -> None:
    reconciler.registry.set_desired("alpha", Desired.INACTIVE)
    reconciler.registry.set_desired("beta", Desired.INACTIVE)
    reconciler.registry.path.write_text("[")
    triton_of(reconciler).entries["alpha"] = IndexEntry("alpha", "1", "READY")
    violations = reconciler.verify()
    assert Kind.REGISTRY_CORRUPT in [v.kind for v in violations]
    [rebuilt] = repair(reconciler)
    assert rebuilt.ok and rebuilt.action.kind is ActionKind.REBUILD_REGISTRY
    assert [(v.kind, v.model) for v in reconciler.verify()] == [(Kind.UNWANTED, "alpha")]


def test_a_model_without_spec_is_unloaded_and_forgotten(reconciler: Reconciler, deployment: Any) -> None:
    reconciler.registry.set_desired("alpha", Desired.INACTIVE)
    reconciler.registry.set_desired("beta", Desired.ACTIVE)
    repair(reconciler)
    (deployment.specs / "beta.yaml").unlink()
    assert sorted(v.kind.value for v in reconciler.verify()) == ["unknown_model", "unwanted"]
    repair(reconciler)
    assert reconciler.registry.get("beta") is None
    assert not triton_of(reconciler).entries["beta"].ready
    assert reconciler.verify() == []


def test_repair_is_idempotent(reconciler: Reconciler) -> None:
    repair(reconciler)
    repair(reconciler)
    assert reconciler.verify() == []
    assert repair(reconciler) == []


def test_a_server_in_another_container_whose_processes_we_share_is_stub_checked(
    deployment: Any, fake_triton: Any, tmp_path: Path
) -> None:
    """compose: watch reaches Triton as `triton:8000` (another network namespace) and shares its process namespace
    (`pid: service:...`): the server's process is the tritonserver on that port whose namespace holds the address."""
    proc = tmp_path / "proc"
    for pid, argv in {100: ["tritonserver", "--http-port=8000"], 101: ["tritonserver", "--http-port=8000"]}.items():
        (proc / str(pid) / "net").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))
        (proc / str(pid) / "net" / "fib_trie").write_text(
            f"Main:\n     |-- 127.0.0.{pid - 90}\n        /32 host LOCAL\n"
        )
    stub = ["triton_python_backend_stub", "m.py", "shm", "1", "1", "101", "/b", "1", "alpha_0_0"]
    (proc / "102").mkdir()
    (proc / "102" / "cmdline").write_bytes(b"\0".join(a.encode() for a in stub))
    remote = fake_triton("127.0.0.11:8000")  # not a loopback name ruthctl knows: resolved, matched to pid 101
    rec = Reconciler(
        deployment.paths(), Profile.CPU, Registry(deployment.state), [remote], processes=ProcessTable(proc)
    )
    matches, unseen = rec._stubs(remote, {"alpha": ["alpha_0_0", "alpha_0_1"]})
    assert unseen is None and matches is not None
    assert (matches["alpha"].alive, matches["alpha"].dead) == (1, 1)
    elsewhere = fake_triton("127.0.0.99:8000")  # no visible process holds that address: remote, not judged
    assert Reconciler(
        deployment.paths(), Profile.CPU, Registry(deployment.state), [elsewhere], processes=ProcessTable(proc)
    )._stubs(elsewhere, {"alpha": ["alpha_0_0"]}) == (None, None)
