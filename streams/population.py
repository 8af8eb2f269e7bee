"""Live RFM score cut-offs against the current customer population.

Scores are ranks, not fixed thresholds: a customer's F score is 1 + 5 x (share of buyers
with strictly lower frequency), likewise M (spend) and R (last purchase day: more recent
ranks higher). Ties share a score. Only customers with at least one purchase take part.
Each dimension is a value -> count histogram: O(1) per update on the hot path. Reading a
score builds (once per change of the population) a table of "how many buyers are below
each value", so scores are always computed against the current population.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    __slots__ = ("_below", "_by_subject", "_hists")

    def __init__(self) -> None:
        self._by_subject: dict[str, tuple[int, int, int]] = {}
        # recency (last purchase day), frequency, monetary (cents): value -> buyers
        self._hists: tuple[dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {})
        # cached "how many buyers have a smaller value" tables, dropped on every change
        self._below: list[dict[int, int] | None] = [None, None, None]

    def __len__(self) -> int:
        return len(self._by_subject)

    def update(self, subject: str, state: CustomerState | None) -> None:
        """Replace ``subject``'s contribution with the one from ``state`` (None removes it)."""
        new = None if state is None else _contribution(state)
        old = self._by_subject.get(subject)
        if old == new:
            return
        self._below = [None, None, None]
        hists = self._hists
        if old is not None:
            for hist, value in zip(hists, old, strict=True):
                _dec(hist, value)
            del self._by_subject[subject]
        if new is not None:
            for hist, value in zip(hists, new, strict=True):
                hist[value] = hist.get(value, 0) + 1
            self._by_subject[subject] = new

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _count_below(self, which: int, value: int) -> int:
        table = self._below[which]
        if table is None:
            table = self._below[which] = _cumulative(self._hists[which])
        below = table.get(value)
        if below is None:  # a value nobody holds (customer not indexed yet)
            below = sum(k for v, k in self._hists[which].items() if v < value)
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
            m=quintile_score(self._count_below(2, c[2]), n),
        )
