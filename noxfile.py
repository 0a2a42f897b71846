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


@nox.session(name="bench_pose")
def bench_pose(session: nox.Session) -> None:
    """The pose network's engines side by side, and one frame to three analytics with the frame cache off and on,
    into docs/bench/pose.md (`nox -s bench_pose -- --smoke` for a short run)."""
    session.run(PY, "-m", "bench.pose", *session.posargs, external=True)


@nox.session(name="gpu_dryrun")
def gpu_dryrun(session: nox.Session) -> None:
    """The prepared GPU check for a bare GPU machine (scripts/gpu_device_check.py), rehearsed on the CPU so it can't
    rot: installs CPU PyTorch and onnx2torch into .venv (the `torch` pose engine), runs the engine's tests and the
    script with --allow-cpu (CUDA verdicts SKIP, everything else must pass)."""
    session.run(PY, "-m", "pip", "install", "-q", "torch==2.13.0", external=True)
    # onnx2torch declares torchvision, whose PyPI build doesn't import beside this torch; MoveNet needs none of it
    session.run(PY, "-m", "pip", "install", "-q", "--no-deps", "onnx2torch==1.5.15", external=True)
    session.run(
        PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/ruth_vision/test_pose_torch.py", external=True
    )
    session.run(
        PY, "scripts/gpu_device_check.py", "--allow-cpu", "--frames", "20", "--out", ".nox/gpu-dryrun", external=True
    )


@nox.session(name="bench_profile")
def bench_profile(session: nox.Session) -> None:
    """Where a served request's CPU goes (stubs and tritonserver, by library, with perf) into docs/bench/profile.md:
    the measured explanation of the served vs in-process gap. Needs Debian's linux-perf (`perf`)."""
    session.run(PY, "-m", "bench.profile", *session.posargs, external=True)


@nox.session(name="bench_ab")
def bench_ab(session: nox.Session) -> None:
    """This checkout's hardening overhead against another checkout's, interleaved: `nox -s bench_ab -- --other DIR`
    (DIR: e.g. `git worktree add DIR <rev>` then `scripts/install.sh` there). Before/after a change to the library."""
    session.run(PY, "-m", "bench.ab", *session.posargs, external=True)


@nox.session
def bench_streamstore(session: nox.Session) -> None:
    """Redis vs SQLite stream state per frame into docs/benchmarks.md (`-- --smoke` for the quick version)."""
    session.run(PY, "-m", "bench.streamstore", *session.posargs, external=True)


@nox.session
def images(session: nox.Session) -> None:
    """Build the CPU image with podman and run it as deployed (tests/images/): as root, with podman, runc,
    debootstrap and catatonit installed (.ci/run does). The debootstrap base and the wheelhouse are cached."""
    env = {"CONTAINERS_CONF": "tests/images/containers.conf"}
    made = session.run("bash", "containers/cpu/debootstrap-base.sh", env=env, silent=True, external=True)
    base = str(made).strip().splitlines()[-1]
    session.log(f"base image: {base}")
    session.run(PY, "-m", "ruthctl", "image", "wheelhouse", external=True)
    env["RUTH_IMAGE_BASE"] = base
    session.run(PY, "-m", "pytest", "-q", "-m", "images", "tests/images", *session.posargs, env=env, external=True)


@nox.session
def accuracy(session: nox.Session) -> None:
    """The person models on the hand-labelled photographs (eval/) through the real server, into docs/accuracy.md.
    Needs the git snapshots named in eval/SOURCES.yaml (`-- --smoke`: only the packaged photographs)."""
    session.run(PY, "-m", "eval.accuracy", *session.posargs, external=True)
