"""Live RFM score cut-offs against the current customer population.

Scores are ranks, not fixed thresholds: a customer's F score is 1 + 5 x (share of buyers
with strictly lower frequency), likewise M (spend) and R (last purchase day: more recent
ranks higher). Ties share a score. Only customers with at least one purchase take part.
Recency (a day) and frequency (a count) take few distinct values, so they are kept as
value -> count histograms (O(1) update, rank = sum over smaller values); spend uses a
sorted list (O(log n)). Scores are always current.
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


def _dec(hist: dict[int, int], value: int) -> None:
    left = hist[value] - 1
    if left:
        hist[value] = left
    else:
        del hist[value]


def _cumulative(hist: dict[int, int]) -> dict[int, int]:
    out = {}
    running = 0
    for value in sorted(hist):
        out[value] = running
        running += hist[value]
    return out


class Population:
    """Rank index over the buyers this process holds (keyed by subject id)."""

    __slots__ = ("_below", "_by_subject", "_frequency", "_monetary", "_recency")

    def __init__(self) -> None:
        self._by_subject: dict[str, tuple[int, int, int]] = {}
        self._recency: dict[int, int] = {}
        self._frequency: dict[int, int] = {}
        self._monetary: SortedList = SortedList()
        # cached "how many buyers have a smaller value" tables, dropped on every change
        self._below: tuple[dict[int, int], dict[int, int]] | None = None

    def __len__(self) -> int:
        return len(self._by_subject)

    def update(self, subject: str, state: CustomerState | None) -> None:
        """Replace ``subject``'s contribution with the one from ``state`` (None removes it)."""
        new = None if state is None else _contribution(state)
        old = self._by_subject.get(subject)
        if old == new:
            return
        self._below = None
        if old is not None:
            _dec(self._recency, old[0])
            _dec(self._frequency, old[1])
            self._monetary.remove(old[2])
            del self._by_subject[subject]
        if new is not None:
            r, f = self._recency, self._frequency
            r[new[0]] = r.get(new[0], 0) + 1
            f[new[1]] = f.get(new[1], 0) + 1
            self._monetary.add(new[2])
            self._by_subject[subject] = new

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _count_below(self, which: int, value: int) -> int:
        if self._below is None:
            self._below = (_cumulative(self._recency), _cumulative(self._frequency))
        table = self._below[which]
        below = table.get(value)
        if below is None:  # a value nobody holds (customer not indexed yet)
            hist = self._recency if which == 0 else self._frequency
            below = sum(k for v, k in hist.items() if v < value)
        return below

    def scores(self, state: CustomerState) -> RfmScores | None:
        """The customer's R, F, M scores (1-5) against the population, None for non-buyers."""
        c = _contribution(state)
        if c is None:
            return None
        n = len(self._by_subject)
        if self._by_subject.get(state.subject) != c:
            n += 1  # not (yet) indexed: rank it as if it were
        return RfmScores(
            r=quintile_score(self._count_below(0, c[0]), n),
            f=quintile_score(self._count_below(1, c[1]), n),
            m=quintile_score(self._monetary.bisect_left(c[2]), n),
        )
