"""Finding the outside tools some tests need, and skipping (never in CI) when absent."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, candidates: tuple[str, ...] = ()) -> str:
    """Return the path of tool ``name``; skip the test naming it, or fail under CI."""
    for candidate in (name, *candidates):
        if shutil.which(candidate):
            return shutil.which(candidate)
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    message = f"missing tool: {name} (install it: see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message + " - CI must install it, nothing may skip there")
    pytest.skip(message)
