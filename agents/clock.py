"""The worker's clock: the pure clocks of :mod:`streams.clock` fed with the system's time.

- ``event`` (default): now = event time per partition (replays and backfills behave as if
  live); ``PATRONAGE_ALLOWED_LATENESS_S`` is subtracted, ``PATRONAGE_EVENT_CLOCK_IDLE_S``
  says when a quiet input stops holding the clock back, ``PATRONAGE_EVENT_CLOCK_MAX_AHEAD_S``
  how far past real time it may read (producers with fast clocks).
- ``wall``: now = the machine's real time (live data).
"""

from __future__ import annotations

import time

from streams.clock import CappedEventClock, Clock, WallClock


def system_ms() -> int:
    return time.time_ns() // 1_000_000


def make_clock(kind: str, allowed_lateness_s: float, idle_s: float = 5.0, max_ahead_s: float = 0.0) -> Clock:
    if kind == "event":  # never ahead of real time by more than max_ahead_s (clock skew)
        return CappedEventClock(
            system_ms, int(allowed_lateness_s * 1000), int(idle_s * 1000), int(max_ahead_s * 1000)
        )
    if kind == "wall":
        return WallClock(system_ms)
    raise ValueError(f"unknown clock {kind!r} (use 'event' or 'wall')")
