"""PATRONAGE_TEST_HOT_STATES=N runs every PipelineHarness on a StateStore with hot bound N
(0: every batch starts with every customer encoded; see streams/store.py)."""

from __future__ import annotations

import os

from streams import testing

_hot = os.environ.get("PATRONAGE_TEST_HOT_STATES")
if _hot not in (None, ""):
    testing.DEFAULT_HOT_STATES = int(_hot)
