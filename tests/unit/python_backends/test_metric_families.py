"""The metric families the models declare are the ones docs/metrics.md documents: names, types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from python_backends.metrics import FAMILIES

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(ruth_[a-z_]+)` \| (\w+) \| ([^|]*) \|", re.MULTILINE)


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        name: (kind.upper(), tuple(label.strip() for label in labels.split(",") if label.strip()))
        for name, kind, labels in ROW.findall(DOC.read_text())
    }


def test_every_declared_family_is_documented_with_its_type_and_labels() -> None:
    declared = {name: (family.kind, family.labels) for name, family in FAMILIES.items()}
    assert declared == documented()


def test_the_doc_table_is_read() -> None:  # a reformatted table must not make the test above vacuous
    assert len(documented()) >= 10
