"""The one clock every time rule reads (``PATRONAGE_CLOCK``).

- ``event``: now = newest event time this worker has seen, minus the allowed lateness.
  Replays and backfills then behave exactly as if they were happening live.
- ``wall``: now = the machine's real time (production with live data).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    name: str

    def observe(self, event_ms: int) -> None: ...

    def now_ms(self) -> int: ...


class EventClock:
    name = "event"

    def __init__(self, allowed_lateness_ms: int = 0) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self.newest_ms: int | None = None

    def observe(self, event_ms: int) -> None:
        if self.newest_ms is None or event_ms > self.newest_ms:
            self.newest_ms = event_ms

    def now_ms(self) -> int:
        if self.newest_ms is None:
            return int(time.time() * 1000)  # nothing seen yet: fall back to real time
        return self.newest_ms - self.allowed_lateness_ms


class WallClock:
    name = "wall"

    def observe(self, event_ms: int) -> None:
        return None

    def now_ms(self) -> int:
        return int(time.time() * 1000)


def make_clock(kind: str, allowed_lateness_s: float) -> Clock:
    if kind == "event":
        return EventClock(int(allowed_lateness_s * 1000))
    if kind == "wall":
        return WallClock()
    raise ValueError(f"unknown clock {kind!r} (use 'event' or 'wall')")
