"""The clocks every time rule reads (``PATRONAGE_CLOCK``), pure: the wall time is injected.

- :class:`WallClock`: now = real time. For live use.
- :class:`EventClock`: now = event time, per partition, like a stream-time watermark: the
  *oldest* of the newest event times of the input topics still flowing into the partition.
  A topic stops holding it back only when it is *idle*: nothing left to read
  (``backlog(...) == 0``, reported by the consumer: lag plus records held back) and nothing
  seen for ``idle_ms`` of wall time. A partition whose inputs are all idle follows the
  newest event time seen anywhere; one that has seen nothing since a restart stays where
  it was restored. It never passes a record the partition was offered but has not applied
  yet (held back, :meth:`EventClock.pending`): that record is data still to read, whatever
  the idle rule says. Minus the allowed lateness; it never goes backwards. So a replay of
  history ticks through time as it would have live, a deadline fires only once every input
  with data still to read has passed it, and a busy worker never lets one topic run ahead.

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

    def least_now(self) -> int:
        """A lower bound of every later ``now_ms()`` (which may fall back)."""
        ...

    def least_now_after_restore(self, event_ms: int) -> int:
        """The least ``now_ms()`` reads once a partition was restored at ``event_ms``."""
        ...

    def started(self, partition: int) -> bool:
        """False while the clock knows no time for ``partition`` (an event clock that has
        seen and restored nothing): ``now_ms`` is then only real time, a placeholder."""
        ...

    def backlog(self, partition: int, topic: str, records: int) -> None:
        """Records of ``topic`` in ``partition`` still to be applied (event clock only)."""
        ...

    def pending(self, partition: int, oldest_ms: int | None) -> None:
        """Records of ``partition`` were offered and held back, not applied: the oldest has
        event time ``oldest_ms`` (None: nothing is held). Event clock only."""
        ...


class WallClock:
    name = "wall"

    def __init__(self, wall: Callable[[], int]) -> None:
        self._wall = wall

    def wall_ms(self) -> int:
        return self._wall()

    def observe(self, partition: int, topic: str, event_ms: int) -> None:
        return None

    def started(self, partition: int) -> bool:
        return True

    def now_ms(self, partition: int | None = None) -> int:
        return self._wall()

    def least_now_after_restore(self, event_ms: int) -> int:
        return self._wall()  # real time: what it reads now, at least, later

    def least_now(self) -> int:
        """A lower bound of every later ``now_ms()``."""
        return self._wall()

    def restore(self, partition: int, event_ms: int) -> None:
        return None

    def backlog(self, partition: int, topic: str, records: int) -> None:
        return None

    def pending(self, partition: int, oldest_ms: int | None) -> None:
        return None


class EventClock:
    name = "event"

    def __init__(self, wall: Callable[[], int], allowed_lateness_ms: int = 0, idle_ms: int = 5000) -> None:
        self._wall = wall
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_ms = idle_ms
        # partition -> topic -> [newest event ms, wall ms when last observed, oldest event ms]
        self._marks: dict[int, dict[str, list[int]]] = {}
        self._now: dict[int, int] = {}
        self._newest: int | None = None  # newest event time seen in any partition
        self._backlog: dict[tuple[int, str], int] = {}  # (partition, topic) -> records to read
        self._restored_at: dict[int, int] = {}  # partition -> wall ms of the restore
        self._pending: dict[int, int] = {}  # partition -> oldest event ms held back, not applied

    def wall_ms(self) -> int:
        return self._wall()

    def observe(self, partition: int, topic: str, event_ms: int) -> None:
        marks = self._marks.setdefault(partition, {})
        mark = marks.get(topic)
        wall = self._wall()
        if self._newest is None or event_ms > self._newest:
            self._newest = event_ms
        if mark is None:
            marks[topic] = [event_ms, wall, event_ms]
        else:
            if event_ms > mark[0]:
                mark[0] = event_ms
            elif event_ms < mark[2]:
                mark[2] = event_ms
            mark[1] = wall

    def backlog(self, partition: int, topic: str, records: int) -> None:
        """How many records of ``topic`` in ``partition`` are still to be applied (the
        consumer's lag plus what it holds back). A topic with a backlog is never idle."""
        self._backlog[(partition, topic)] = records

    def pending(self, partition: int, oldest_ms: int | None) -> None:
        """Records of ``partition`` were offered to the pipeline and held back (beyond the
        event-time horizon of its batch, or while stock arrivals are on their way): the
        oldest has event time ``oldest_ms``; None once nothing is held. Until they are
        applied the partition's clock stays at or before that time, even when its inputs look
        idle - they are not: the records are in hand. Without this, a partition whose records
        waited longer than ``idle_ms`` followed the newest event time of the other
        partitions, and a deadline fired ahead of the purchase that would have cancelled it."""
        if oldest_ms is None:
            self._pending.pop(partition, None)
        else:
            self._pending[partition] = oldest_ms

    def _held_back(self, partition: int, value: int) -> int:
        """``value``, but not past the oldest record held back in ``partition``."""
        oldest = self._pending.get(partition)
        return value if oldest is None else min(value, oldest - self.allowed_lateness_ms)

    def now_ms(self, partition: int | None = None) -> int:
        previous = self._now.get(partition) if partition is not None else None
        marks = self._marks.get(partition) if partition is not None else None
        if partition is not None and not marks:
            # nothing seen here (since a restart): stay where it was restored until its inputs
            # are known to be read and quiet; never pin a partition to another's time before
            if previous is None:
                if self._newest is None:
                    return self._wall()
                return self._held_back(partition, self._newest - self.allowed_lateness_ms)
            reported = [n for (p, _t), n in self._backlog.items() if p == partition]
            quiet = self._wall() - self._restored_at.get(partition, self._wall()) > self.idle_ms
            if not reported or any(reported) or not quiet or self._newest is None:
                return previous
            value = max(previous, self._held_back(partition, self._newest - self.allowed_lateness_ms))
            self._now[partition] = value
            return value
        active: list[int] = []
        if marks:
            assert partition is not None
            wall = self._wall()
            backlog = self._backlog
            for (p, topic), waiting in backlog.items():
                if p == partition and waiting > 0 and topic not in marks:
                    # an input with records to read but none applied yet (e.g. since a
                    # restart): its time is unknown, so the partition's clock must wait
                    if previous is not None:
                        return previous
                    oldest = min(mark[2] for mark in marks.values())
                    return self._held_back(partition, oldest - self.allowed_lateness_ms)
            active = [
                mark[0]
                for topic, mark in marks.items()
                if wall - mark[1] <= self.idle_ms or backlog.get((partition, topic), 0) > 0
            ]
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
        value = self._held_back(partition, value)
        if previous is not None and value < previous:
            return previous
        self._now[partition] = value
        return value

    def least_now_after_restore(self, event_ms: int) -> int:
        """The least the worker-wide ``now_ms()`` reads once a partition was restored at
        ``event_ms`` (a rebuild bounds what it keeps with it before the clock is restored)."""
        return event_ms - self.allowed_lateness_ms

    def least_now(self) -> int:
        """A lower bound of every later ``now_ms()`` (while the partitions stay assigned):
        the newest time a partition has settled at. ``now_ms()`` itself can fall back (it
        reads the newest event anywhere while every input is idle, the oldest active input
        otherwise), so what is kept for the reports it dates must not follow it."""
        return max(self._now.values(), default=-(2**62))

    def started(self, partition: int) -> bool:
        # a time of its own: restored, or events seen here. Not another partition's time:
        # after a restart with some partitions at the end of a backlog, one never read
        # before took their time, and its first batches applied purchases far ahead of
        # touchpoints still unread (a SIGTERM under load reordered 483 customers' stages)
        return partition in self._now or bool(self._marks.get(partition))

    def restore(self, partition: int, event_ms: int) -> None:
        self._restored_at[partition] = self._wall()
        value = event_ms - self.allowed_lateness_ms
        if self._now.get(partition, value - 1) < value:
            self._now[partition] = value
        if self._newest is None or event_ms > self._newest:
            self._newest = event_ms

    def forget(self, partition: int) -> None:
        """The partition moved to another worker."""
        self._marks.pop(partition, None)
        self._now.pop(partition, None)
        self._pending.pop(partition, None)
        for key in [k for k in self._backlog if k[0] == partition]:
            del self._backlog[key]


class CappedEventClock(EventClock):
    """An :class:`EventClock` that never reads more than ``max_ahead_ms`` past the wall
    clock (``PATRONAGE_EVENT_CLOCK_MAX_AHEAD_S``, default 0).

    Event times up to ``PATRONAGE_TS_MAX_FUTURE_S`` (a day) ahead are accepted as clock skew,
    and an idle partition follows the newest event time seen anywhere: one producer with a
    clock a day fast would otherwise move every partition's clock a day ahead, for good, and
    fire that day's churn deadlines at once. Capped, the clock waits for real time to catch
    up; replays of the past are unaffected. The value kept is the uncapped one, so the cap
    lifts as real time passes and the clock never goes backwards."""

    def __init__(
        self,
        wall: Callable[[], int],
        allowed_lateness_ms: int = 0,
        idle_ms: int = 5000,
        max_ahead_ms: int = 0,
    ) -> None:
        super().__init__(wall, allowed_lateness_ms, idle_ms)
        self.max_ahead_ms = max_ahead_ms

    def now_ms(self, partition: int | None = None) -> int:
        return min(super().now_ms(partition), self._wall() + self.max_ahead_ms)

    def least_now_after_restore(self, event_ms: int) -> int:
        return min(super().least_now_after_restore(event_ms), self._wall() + self.max_ahead_ms)

    def least_now(self) -> int:
        return min(super().least_now(), self._wall() + self.max_ahead_ms)
