"""Developer sessions. They reuse the project's .venv (made by scripts/install.sh) instead of building new ones:
installing Triton, torch-free vision deps and the test tools again per session would cost minutes for nothing."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

PY = ".venv/bin/python"


@nox.session
def lint(session: nox.Session) -> None:
    session.run(PY, "-m", "ruff", "check", ".", external=True)
    session.run(PY, "-m", "ruff", "format", "--check", "python_backends", "ruth_vision", external=True)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run(PY, "-m", "mypy", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests, then the integration tests against the real server (`-- -m "not integration"` for unit only)."""
    session.run(PY, "-m", "ruthctl", "generate", "--check", external=True)
    session.run(PY, "-m", "pytest", "-q", *session.posargs, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks into docs/benchmarks.md (`nox -s bench -- --smoke` for the one-minute version)."""
    session.run(PY, "-m", "bench", *(session.posargs or ["--full"]), external=True)


@nox.session
def accuracy(session: nox.Session) -> None:
    """The person models on the hand-labelled photographs (eval/) through the real server, into docs/accuracy.md.
    Needs the git snapshots named in eval/SOURCES.yaml (`-- --smoke`: only the packaged photographs)."""
    session.run(PY, "-m", "eval.accuracy", *session.posargs, external=True)
