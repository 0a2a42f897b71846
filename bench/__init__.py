"""Benchmarks of the Triton runtime (issue 8): `python -m bench --smoke | --full`. See docs/benchmarks.md."""

__all__: list[str] = []
