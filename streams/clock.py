"""The clocks every time rule reads (``PATRONAGE_CLOCK``), pure: the wall time is injected.

- :class:`WallClock`: now = real time. For live use.
- :class:`EventClock`: now = event time, per partition, like a stream-time watermark: the
  *oldest* of the newest event times of the input topics still flowing into the partition
  (a topic that sent nothing for ``idle_ms`` of wall time no longer holds it back); a
  partition with no flowing input follows the newest event time seen anywhere. Minus the
  allowed lateness; it never goes backwards. So a replay of history ticks through time as
  it would have live, and a deadline fires only once every active input has passed it.

Both take ``wall: () -> epoch ms`` (agents pass the system clock; tests a value they move).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    name: str

    def wall_ms(self) -> int:
        """Real time (dead-letter stamps, the future-skew bound, idleness)."""
        ...

    def observe(self, partition: int, topic: str, event_ms: int) -> None:
        """An event with this event time was applied on ``topic`` in ``partition``."""
        ...

    def now_ms(self, partition: int | None = None) -> int:
        """The configured clock's now for ``partition`` (None: the newest over all)."""
        ...

    def restore(self, partition: int, event_ms: int) -> None:
        """After recovery: the clock of ``partition`` is at least ``event_ms``."""
        ...


class WallClock:
    name = "wall"

    def __init__(self, wall: Callable[[], int]) -> None:
        self._wall = wall

    def wall_ms(self) -> int:
        return self._wall()

    def observe(self, partition: int, topic: str, event_ms: int) -> None:
        return None

    def now_ms(self, partition: int | None = None) -> int:
        return self._wall()

    def restore(self, partition: int, event_ms: int) -> None:
        return None


class EventClock:
    name = "event"

    def __init__(self, wall: Callable[[], int], allowed_lateness_ms: int = 0, idle_ms: int = 5000) -> None:
        self._wall = wall
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_ms = idle_ms
        # partition -> topic -> [newest event ms, wall ms when last observed]
        self._marks: dict[int, dict[str, list[int]]] = {}
        self._now: dict[int, int] = {}
        self._newest: int | None = None  # newest event time seen in any partition

    def wall_ms(self) -> int:
        return self._wall()

    def observe(self, partition: int, topic: str, event_ms: int) -> None:
        marks = self._marks.setdefault(partition, {})
        mark = marks.get(topic)
        wall = self._wall()
        if self._newest is None or event_ms > self._newest:
            self._newest = event_ms
        if mark is None:
            marks[topic] = [event_ms, wall]
        else:
            if event_ms > mark[0]:
                mark[0] = event_ms
            mark[1] = wall

    def now_ms(self, partition: int | None = None) -> int:
        previous = self._now.get(partition) if partition is not None else None
        marks = self._marks.get(partition) if partition is not None else None
        active: list[int] = []
        if marks:
            wall = self._wall()
            active = [newest for newest, seen in marks.values() if wall - seen <= self.idle_ms]
        if active:
            value = min(active) - self.allowed_lateness_ms
        elif self._newest is not None:
            value = self._newest - self.allowed_lateness_ms
        elif self._now:
            value = max(self._now.values())
        else:
            return self._wall()  # nothing seen yet: real time
        if partition is None:
            return max(value, *self._now.values()) if self._now else value
        if previous is not None and value < previous:
            return previous
        self._now[partition] = value
        return value

    def restore(self, partition: int, event_ms: int) -> None:
        value = event_ms - self.allowed_lateness_ms
        if self._now.get(partition, value - 1) < value:
            self._now[partition] = value
        if self._newest is None or event_ms > self._newest:
            self._newest = event_ms

    def forget(self, partition: int) -> None:
        """The partition moved to another worker."""
        self._marks.pop(partition, None)
        self._now.pop(partition, None)
