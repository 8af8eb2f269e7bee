"""Live RFM score cut-offs against the current customer population.

Scores are ranks, not fixed thresholds: a customer's F score is 1 + 5 x (share of buyers
with strictly lower frequency), likewise M (spend) and R (last purchase day: more recent
ranks higher). Ties share a score. Only customers with at least one purchase take part.
Backed by sorted lists (O(log n) update and rank), so scores are always current.
"""

from __future__ import annotations

from dataclasses import dataclass

from sortedcontainers import SortedList

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.rfm import quintile_score, segment


@dataclass(frozen=True, slots=True)
class RfmScores:
    r: int
    f: int
    m: int

    @property
    def segment(self) -> str:
        return segment(self.r, self.f)

    @property
    def code(self) -> str:
        return f"{self.r}{self.f}{self.m}"


def _contribution(state: CustomerState) -> tuple[int, int, int] | None:
    if state.frequency <= 0 or state.merged_into is not None or state.last_purchase_ms is None:
        return None
    return (state.last_purchase_ms // DAY_MS, state.frequency, state.monetary_cents)


class Population:
    """Rank index over the buyers this process holds (keyed by subject id)."""

    __slots__ = ("_by_subject", "_recency", "_frequency", "_monetary")

    def __init__(self) -> None:
        self._by_subject: dict[str, tuple[int, int, int]] = {}
        self._recency: SortedList = SortedList()
        self._frequency: SortedList = SortedList()
        self._monetary: SortedList = SortedList()

    def __len__(self) -> int:
        return len(self._by_subject)

    def update(self, subject: str, state: CustomerState | None) -> None:
        """Replace ``subject``'s contribution with the one from ``state`` (None removes it)."""
        new = None if state is None else _contribution(state)
        old = self._by_subject.get(subject)
        if old == new:
            return
        if old is not None:
            self._recency.remove(old[0])
            self._frequency.remove(old[1])
            self._monetary.remove(old[2])
            del self._by_subject[subject]
        if new is not None:
            self._recency.add(new[0])
            self._frequency.add(new[1])
            self._monetary.add(new[2])
            self._by_subject[subject] = new

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def scores(self, state: CustomerState) -> RfmScores | None:
        """The customer's R, F, M scores (1-5) against the population, None for non-buyers."""
        c = _contribution(state)
        if c is None:
            return None
        n = len(self._by_subject)
        if self._by_subject.get(state.subject) != c:
            n += 1  # not (yet) indexed: rank it as if it were
        return RfmScores(
            r=quintile_score(self._recency.bisect_left(c[0]), n),
            f=quintile_score(self._frequency.bisect_left(c[1]), n),
            m=quintile_score(self._monetary.bisect_left(c[2]), n),
        )
