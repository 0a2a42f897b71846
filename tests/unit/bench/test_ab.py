"""bench/ab.py: two checkouts' hardening overhead side by side (measuring runs servers: `python -m bench.ab`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ab


def sample(full: float, bare: float) -> dict[str, dict[str, float]]:
    return {
        "tank": {
            "full_cpu_ms": full,
            "bare_cpu_ms": bare,
            "added_cpu_ms": full - bare,
            "throughput_ratio": bare / full,
            "foreign_cores": 0.0,
        }
    }


def test_the_report_gives_medians_per_checkout_and_their_difference(tmp_path: Path) -> None:
    sides = (ab.Side("new", tmp_path / "new"), ab.Side("old", tmp_path / "old"))
    samples = {
        "new": [sample(5.0, 4.0), sample(6.0, 4.0), sample(9.0, 4.0)],
        "old": [sample(5.0, 5.0), sample(5.5, 5.0), sample(4.0, 5.0)],
    }
    text = ab.report(sides, samples, ("tank",))
    assert "| tank | full_cpu_ms | 5.000 | 6.000 | +1.000 |" in text
    assert "| tank | added_cpu_ms | 0.000 | 2.000 | +2.000 |" in text
    assert '"new": [5.0, 6.0, 9.0]' in text


def test_a_checkout_without_its_own_environment_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ab.main(["--other", str(tmp_path)])
    assert "run scripts/install.sh there" in capsys.readouterr().err
