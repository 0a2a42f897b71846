"""Shared by the deployment tests: a Dockerfile reader and a check that a command line suits the real ruthctl CLI.

Loaded by file path (`load_module`), so it needs no package layout under `tests/`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    # variant: (Dockerfile, final base image (the default of its BASE build arg), profile)
    "cpu": (
        REPO / "containers/cpu/Dockerfile",
        "python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91",
        "cpu",
    ),
    "gpu": (REPO / "containers/triton-gpu/Dockerfile", "nvcr.io/nvidia/tritonserver:24.10-py3", "gpu"),
    "jetson": (REPO / "containers/triton-jetson/Dockerfile", "nvcr.io/nvidia/tritonserver:24.10-py3-igpu", "jetson"),
}


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # everything after the keyword, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            match = re.search(r"\bCMD\s+(.*)$", text, re.S)
            if not match:
                return None
            text = match.group(1)
        text = text.strip()
        if not text.startswith("["):
            return None
        return list(json.loads(text))


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.value):
                key, _, value = token.partition("=")
                values[key] = value
        return values

    def args(self) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for instruction in self.all("ARG"):
            key, sep, value = instruction.value.strip().partition("=")
            values[key] = value if sep else None
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; comments dropped, backslash continuations joined."""
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buffer and line.lstrip().startswith("#"):
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append((start, buffer + line))
        buffer = ""
    global_args: dict[str, str] = {}  # ARGs before the first FROM: usable in FROM lines only
    for number, line in logical:
        keyword, _, value = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), number)
        if instruction.keyword == "FROM":
            parts = [p for p in instruction.value.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            stages.append(Stage(base, name, [instruction]))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {number}: {keyword} before FROM"
            key, _, default = instruction.value.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return stages


def global_args(text: str) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("FROM "):
            break
        if line.startswith("ARG "):
            key, _, default = line[4:].partition("=")
            found[key.strip()] = default.strip()
    return found


def cli_accepts(argv: Sequence[str]) -> None:
    """Parse `ruthctl <argv>` with the real Typer app, down to the subcommand, without running anything.

    Raises click's UsageError (unknown option, missing command...) when the command line would not start.
    """
    import typer

    from ruthctl.cli import app

    assert argv and argv[0] == "ruthctl", argv
    root = typer.main.get_command(app)
    with root.make_context("ruthctl", list(argv[1:])) as ctx:
        rest = [*ctx._protected_args, *ctx.args]
        command = root
        while rest:
            name, sub, rest = command.resolve_command(ctx, rest)  # type: ignore[attr-defined]
            assert sub is not None, f"no command {name!r} in {argv}"
            ctx = sub.make_context(name or "", rest, parent=ctx)
            rest = [*ctx._protected_args, *ctx.args] if hasattr(sub, "resolve_command") else []
            command = sub
