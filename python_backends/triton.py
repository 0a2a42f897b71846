"""The only module that touches `triton_python_backend_utils`.

That module exists only inside a Triton stub process, so it is imported lazily; unit tests install a fake with
`use_backend_module`. Keeping every pb_utils call behind this seam is what lets the rest of the library be tested
without a server.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

_module: ModuleType | Any | None = None


def pb() -> Any:
    """`triton_python_backend_utils`, imported on first use."""
    global _module
    if _module is None:
        _module = importlib.import_module("triton_python_backend_utils")
    return _module


def use_backend_module(module: ModuleType | Any | None) -> None:
    """Install a stand-in (tests) or reset to the real one (None)."""
    global _module
    _module = module
