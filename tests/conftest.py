"""PATRONAGE_TEST_HOT_STATES=N runs every PipelineHarness on a StateStore with hot bound N
(0: every batch starts with every customer encoded; see streams/store.py)."""

from __future__ import annotations

import os

import pytest

from streams import testing

_hot = os.environ.get("PATRONAGE_TEST_HOT_STATES")
if _hot not in (None, ""):
    testing.DEFAULT_HOT_STATES = int(_hot)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The integration tests first: they take minutes each (a worker, a broker, a scenario),
    the ~360 others seconds, so with ``make test``'s two processes (pytest-xdist, worksteal)
    the short ones fill in at the end instead of one long test running alone."""
    items.sort(key=lambda item: 0 if "/integration/" in str(item.path) else 1)
