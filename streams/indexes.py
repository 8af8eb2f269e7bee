"""Indexes kept beside the customer table, maintained from the state changes the pipeline
computes and rebuilt from the table when partitions are assigned.

Each implements :class:`StateIndex`: ``update(partition, subject, state)`` replaces the
subject's entry (``state=None`` removes it), ``clear(partition)`` forgets a partition
(``None``: everything).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Protocol

from schemas.state import CustomerState


class StateIndex(Protocol):
    def update(self, partition: int, subject: str, state: CustomerState | None) -> None: ...

    def clear(self, partition: int | None = None) -> None: ...


class DeadlineIndex:
    """Per partition: each subject's next deadline (epoch ms on the configured clock).

    A heap per partition with lazy deletion: ``update`` pushes the new deadline and the
    current one is remembered per subject; stale heap entries are skipped when popped and
    swept out when they outnumber live ones. ``pop_due`` costs O(due x log n), never a scan.
    """

    __slots__ = ("_deadline_of", "_due", "_heaps", "_swept_at")

    def __init__(self, deadline_of: Callable[[CustomerState], int | None]) -> None:
        self._deadline_of = deadline_of
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._due: dict[str, int] = {}
        self._swept_at: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._due)

    def deadline(self, subject: str) -> int | None:
        return self._due.get(subject)

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        new = None if state is None else self._deadline_of(state)
        self.set(partition, subject, new)

    def set(self, partition: int, subject: str, deadline: int | None) -> None:
        current = self._due.get(subject)
        if current == deadline:
            return
        if deadline is None:
            del self._due[subject]
            return
        self._due[subject] = deadline
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (deadline, subject))
        if len(heap) > 3 * self._swept_at.get(partition, 0) + 4096:
            self._sweep(partition)

    def load(self, entries: Iterable[tuple[int, str, int]]) -> None:
        """Set many (partition, subject, deadline) at once on an empty index (a rebuild):
        one heapify per partition instead of a push per subject."""
        if self._due:
            raise ValueError("DeadlineIndex.load needs an empty index (clear() first)")
        due = self._due
        heaps = self._heaps
        for partition, subject, deadline in entries:
            due[subject] = deadline
            heap = heaps.get(partition)
            if heap is None:
                heap = heaps[partition] = []
            heap.append((deadline, subject))
        for partition, heap in heaps.items():
            if len(heap) != len(set(heap)):  # a subject given twice: keep its last deadline
                heap[:] = list({(d, s) for d, s in heap if due.get(s) == d})
            heapq.heapify(heap)
            self._swept_at[partition] = len(heap)

    def _sweep(self, partition: int) -> None:
        due = self._due
        live = {(d, s) for d, s in self._heaps[partition] if due.get(s) == d}
        heap = list(live)
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._swept_at[partition] = len(heap)

    def pop_due(self, partition: int, now_ms: int) -> list[str]:
        """Subjects of ``partition`` whose deadline is <= ``now_ms``, removed from the index."""
        heap = self._heaps.get(partition)
        out: list[str] = []
        if not heap:
            return out
        due = self._due
        pop = heapq.heappop
        while heap and heap[0][0] <= now_ms:
            deadline, subject = pop(heap)
            if due.get(subject) == deadline:
                del due[subject]
                out.append(subject)
        return out

    def next_deadline(self, partition: int) -> int | None:
        heap = self._heaps.get(partition)
        due = self._due
        while heap:
            deadline, subject = heap[0]
            if due.get(subject) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._heaps.clear()
            self._due.clear()
            self._swept_at.clear()
            return
        for deadline, subject in self._heaps.pop(partition, []):
            if self._due.get(subject) == deadline:
                del self._due[subject]
        self._swept_at.pop(partition, None)


class PartitionedIndex:
    """An index holding one entry per subject, ``_of[subject] = (partition, entry)``:
    ``clear(partition)`` removes that partition's subjects through ``update(..., None)``."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[str, tuple[int, Any]] = {}

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        raise NotImplementedError

    def _clear_all(self) -> None:
        raise NotImplementedError

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._of.clear()
            self._clear_all()
            return
        for subject, (p, _) in list(self._of.items()):
            if p == partition:
                self.update(partition, subject, None)


class CountIndex(PartitionedIndex):
    """How many subjects fall in each class (lifecycle stage, open churn alerts, ...), kept
    incrementally so a metrics scrape never walks the table."""

    __slots__ = ("_class_of", "_counts", "_entries")

    def __init__(self, class_of: Callable[[CustomerState], Hashable | None]) -> None:
        super().__init__()
        self._class_of = class_of
        self._counts: dict[Hashable, int] = {}
        # one shared (partition, class) entry per distinct pair: a subject's entry costs its
        # dict slot, not a tuple of its own (~150 B a customer less, with millions held)
        self._entries: dict[tuple[int, Hashable], tuple[int, Hashable]] = {}

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        new = None if state is None else self._class_of(state)
        old = self._of.get(subject)
        if old is not None:
            if new is not None and old[1] == new:
                return
            left = self._counts[old[1]] - 1
            if left:
                self._counts[old[1]] = left
            else:
                del self._counts[old[1]]
            del self._of[subject]
        if new is not None:
            entry = (partition, new)
            self._of[subject] = self._entries.setdefault(entry, entry)
            self._counts[new] = self._counts.get(new, 0) + 1

    def counts(self) -> dict[Hashable, int]:
        return dict(self._counts)

    def _clear_all(self) -> None:
        self._counts.clear()
        self._entries.clear()

    def members(self) -> Iterator[tuple[str, Hashable]]:
        """(subject, class) of every subject in some class (no table walk)."""
        for subject, (_, cls) in self._of.items():
            yield subject, cls
