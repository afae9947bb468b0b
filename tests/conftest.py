"""Shared pytest fixtures. Helper functions live in tests/helpers.py."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def workers(request) -> int:
    """Serial and parallel runs must agree: tests taking this fixture run with both."""
    return request.param
