"""The packages import one way: ruth_vision (pure algorithms) <- python_backends (inside Triton) <- ruthctl.

Read from the source files (every `import` and `from ... import`, at any depth, lazy ones included), so an import
that only runs on some code path can't slip a cycle back in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: what each package may never import (directly or inside a function)
FORBIDDEN = {
    "ruth_vision": ("python_backends", "ruthctl"),
    "python_backends": ("ruthctl",),
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in one file."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, forbidden: tuple[str, ...], root: Path = REPO_ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)}:{line} imports {name}"
        for path in sorted((root / package).rglob("*.py"))
        for line, name in sorted(imported_packages(path))
        if name in forbidden
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_package_never_imports_a_higher_one(package: str) -> None:
    assert violations(package, FORBIDDEN[package]) == []


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The check itself can fail: a function-level import of a higher package is found."""
    (tmp_path / "ruth_vision").mkdir()
    (tmp_path / "ruth_vision" / "ok.py").write_text("import numpy\nfrom ruth_vision import pose\nfrom . import x\n")
    (tmp_path / "ruth_vision" / "bad.py").write_text("def f():\n    from python_backends.weights import verify\n")
    assert violations("ruth_vision", FORBIDDEN["ruth_vision"], tmp_path) == [
        "ruth_vision/bad.py:2 imports python_backends"
    ]
