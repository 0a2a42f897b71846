"""Fixtures of the integration tests that drive ruthctl against a real tritonserver (tests/reconcile_support.py)."""

from reconcile_support import clean, world

__all__ = ["clean", "world"]
