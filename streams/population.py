"""Live RFM score cut-offs against the current customer population.

Scores are ranks, not fixed thresholds: a customer's F score is 1 + 5 x (share of buyers
with strictly lower frequency), likewise M (spend) and R (last purchase day: more recent
ranks higher). Ties share a score. Only customers with at least one purchase take part.
Recency and frequency are value -> count histograms (few distinct values: whole days,
purchase counts): O(1) per update on the hot path, and reading a score builds (once per
change of the population) a table of "how many buyers are below each value". Spend has about
as many distinct values as buyers, so such a table would cost a sort of the whole population
after every batch (a quarter of a second at a million buyers): it is a sorted list instead
(sortedcontainers), O(log n) per update and per rank. Scores are always computed against the
current population.

The same index gives the value tier (top ``core_share`` of buyers by spend = ``core``) and
the churn prior: the median of the customers' own usual intervals (whole days, customers
with at least three gaps between purchase days).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from sortedcontainers import SortedList

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.rfm import quintile_score, recency_score, rhythm, segment

# contribution of one buyer: (last purchase day, frequency, cents, own median gap days or -1, partition)
Contribution = tuple[int, int, int, int, int]
MIN_OWN_GAPS = 3


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


def _rfm(state: CustomerState) -> tuple[int, int, int] | None:
    if state.frequency <= 0 or state.merged_into is not None or state.last_purchase_ms is None:
        return None
    return (state.last_purchase_ms // DAY_MS, state.frequency, state.monetary_cents)


def _median_gap(state: CustomerState) -> int:
    median, gaps = rhythm(state)
    return int(median) if gaps >= MIN_OWN_GAPS else -1


def _dec(hist: dict[int, int], value: int) -> None:
    left = hist[value] - 1
    if left:
        hist[value] = left
    else:
        del hist[value]


def _median(hist: dict[int, int], min_customers: int) -> float | None:
    """The median value of a value -> count histogram, or None with fewer than
    ``min_customers`` counted."""
    n = sum(hist.values())
    if n < max(1, min_customers):
        return None
    half = (n - 1) // 2
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > half:
            return float(value)
    return None  # pragma: no cover - n > 0 reaches the median


class _Ranks:
    """Counts below each held value (a dict lookup), and for a value nobody holds (a customer
    changed in the batch, not re-indexed yet) a bisection of the sorted values."""

    __slots__ = ("at", "cum", "keys")

    def __init__(self, hist: dict[int, int]) -> None:
        self.keys = sorted(hist)
        self.cum: list[int] = []
        self.at: dict[int, int] = {}
        running = 0
        for value in self.keys:
            self.at[value] = running
            self.cum.append(running)
            running += hist[value]
        self.cum.append(running)

    def below(self, value: int) -> int:
        found = self.at.get(value)
        return found if found is not None else self.cum[bisect_left(self.keys, value)]


class Population:
    """Rank index over the buyers this process holds (keyed by subject id); a StateIndex."""

    __slots__ = (
        "_below",
        "_by_subject",
        "_gaps_changed",
        "_hists",
        "_prior",
        "_rf",
        "_spend",
        "_spend_added",
    )

    def __init__(self) -> None:
        self._by_subject: dict[str, Contribution] = {}
        # recency (last purchase day), frequency, (unused: spend is below), own median gap
        # (days): value -> buyers (the gap histogram holds only customers with enough gaps)
        self._hists: tuple[dict[int, int], dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {}, {})
        # every buyer's spend (cents), ascending: ranks by bisection
        self._spend: SortedList = SortedList()
        # spends added since the list was last read, merged in one sort then (a restart
        # indexes every buyer before the first rank is asked for)
        self._spend_added: list[int] = []
        # cached "how many buyers have a smaller value" tables of recency and frequency,
        # dropped when one of those changes
        self._below: list[_Ranks | None] = [None, None, None]
        self._prior: tuple[int, float | None] | None = None
        self._gaps_changed = 0  # counts changes of the gap histogram (a merged median's cache key)
        # (last purchase day, frequency) -> buyers: the R x F grid at a scrape costs the
        # distinct pairs (days x frequencies), not the buyers
        self._rf: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._by_subject)

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        """Replace ``subject``'s contribution with the one from ``state`` (None removes it)."""
        rfm = None if state is None else _rfm(state)
        new = None if rfm is None or state is None else (*rfm, _median_gap(state), partition)
        old = self._by_subject.get(subject)
        if old == new:
            return
        hists = self._hists
        if old is not None:
            if new is None or old[:2] != new[:2]:
                self._below = [None, None, None]
            for hist, value in zip(hists[:2], old[:2], strict=True):
                _dec(hist, value)
            self._spends().remove(old[2])
            _dec(self._rf, old[:2])  # type: ignore[arg-type]
            if old[3] >= 0:
                _dec(hists[3], old[3])
                self._prior = None
                self._gaps_changed += 1
            del self._by_subject[subject]
        else:
            self._below = [None, None, None]
        if new is not None:
            for hist, value in zip(hists[:2], new[:2], strict=True):
                hist[value] = hist.get(value, 0) + 1
            self._spend_added.append(new[2])
            rf = self._rf
            rf[new[:2]] = rf.get(new[:2], 0) + 1
            if new[3] >= 0:
                hists[3][new[3]] = hists[3].get(new[3], 0) + 1
                self._prior = None
                self._gaps_changed += 1
            self._by_subject[subject] = new

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self.__init__()  # type: ignore[misc]
            return
        for subject, c in list(self._by_subject.items()):
            if c[4] == partition:
                self.update(partition, subject, None)

    def median_interval_days(self, min_customers: int) -> float | None:
        """Median of the buyers' own usual intervals (customers with >= 3 gaps), or None when
        fewer than ``min_customers`` have that much history."""
        cached = self._prior
        if cached is not None and cached[0] == min_customers:
            return cached[1]
        value = _median(self._hists[3], min_customers)
        self._prior = (min_customers, value)
        return value

    def is_core(self, state: CustomerState, share: float) -> bool:
        """In the top ``share`` of buyers by lifetime spend (ties included)."""
        c = _rfm(state)
        if c is None:
            return False
        n = len(self._by_subject)
        indexed = self._by_subject.get(state.subject)
        if indexed is None or indexed[:3] != c:
            n += 1
        below = self._count_below(2, c[2])
        at_or_above = n - below
        return at_or_above <= max(1.0, share * n)

    def _spends(self) -> SortedList:
        added = self._spend_added
        if added:
            self._spend.update(added)
            added.clear()
        return self._spend

    def _count_below(self, which: int, value: int) -> int:
        if which == 2:
            return self._spends().bisect_left(value)
        table = self._below[which]
        if table is None:
            table = self._below[which] = _Ranks(self._hists[which])
        return table.below(value)

    def scores(self, state: CustomerState) -> RfmScores | None:
        """The customer's R, F, M scores (1-5) against the population, None for non-buyers."""
        c = _rfm(state)
        if c is None:
            return None
        n = len(self._by_subject)
        indexed = self._by_subject.get(state.subject)
        held = 0  # of the buyers counted in n, those not in the index (this one, if it is not)
        if indexed is None or indexed[:3] != c:
            n += 1  # not (yet) indexed: rank it as if it were
            held = 1
        older = self._count_below(0, c[0])
        return RfmScores(
            r=recency_score(older, self._count_below(0, c[0] + 1) + held - older, n),
            f=quintile_score(self._count_below(1, c[1]), n),
            m=quintile_score(self._count_below(2, c[2]), n),
        )

    def rf_grid(self) -> dict[tuple[int, int], int]:
        """Buyers per (R score, F score) right now (what ``scores`` gives each of them)."""
        n = len(self._by_subject)
        grid: dict[tuple[int, int], int] = {}
        for (day, freq), count in self._rf.items():
            cell = (
                recency_score(older := self._count_below(0, day), self._count_below(0, day + 1) - older, n),
                quintile_score(self._count_below(1, freq), n),
            )
            grid[cell] = grid.get(cell, 0) + count
        return grid

    def core_count(self, share: float) -> int:
        """Buyers in the top ``share`` by lifetime spend (tier ``core``, as ``is_core``: a
        buyer is core when at most ``max(1, share * n)`` buyers spent as much or more)."""
        n = len(self._by_subject)
        if not n:
            return 0
        limit = max(1.0, share * n)
        spend = self._spends()
        # core: buyers whose count of smaller spends is at least n - limit
        threshold = n - limit
        first = max(0, math.ceil(threshold))
        if first >= n:
            return 0
        value = spend[first]
        below = spend.bisect_left(value)
        return n - below if below >= threshold else n - spend.bisect_right(value)


class PartitionedPopulation:
    """One :class:`Population` per partition; a StateIndex.

    A customer is ranked (R/F/M scores, value tier) against the buyers of its own partition.
    Ranked against every partition a worker holds, a score depended on how far the other
    partitions had got - which differs between runs of the same data (a backlog, a restart,
    a second worker taking half the partitions): a run and its ``kill -9`` twin sent churn
    alerts to ~10 % different customers. A partition applies its records in event-time
    order, so its own population at a record's time is the same in every run. Partitions
    are hash samples of the customers, so each ranks like the whole (with a few hundred
    buyers or more). The churn prior (a median over the customers' own rhythms) stays one
    for the worker; the worker-wide views (R x F grid, core count, buyers) add the
    partitions up."""

    __slots__ = ("_parts", "_prior")

    def __init__(self) -> None:
        self._parts: dict[int, Population] = {}
        self._prior: tuple[tuple[tuple[int, int, int], ...], int, float | None] | None = None

    def of(self, partition: int) -> Population:
        """The population customers of ``partition`` are ranked against."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = Population()
        return part

    def partition_holding(self, subject: str) -> Population | None:
        for part in self._parts.values():
            if subject in part._by_subject:
                return part
        return None

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        part = self._parts.get(partition)
        if part is None:
            if state is None:
                return
            part = self.of(partition)
        part.update(partition, subject, state)

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._parts.clear()
        else:
            self._parts.pop(partition, None)

    def median_interval_days(self, min_customers: int) -> float | None:
        """Median of the buyers' own usual intervals over every partition (see Population)."""
        parts = list(self._parts.values())
        if len(parts) == 1:
            return parts[0].median_interval_days(min_customers)
        key = tuple((p, id(part), part._gaps_changed) for p, part in self._parts.items())
        cached = self._prior
        if cached is not None and cached[0] == key and cached[1] == min_customers:
            return cached[2]
        value = self._merged_median(parts, min_customers)
        self._prior = (key, min_customers, value)
        return value

    @staticmethod
    def _merged_median(parts: list[Population], min_customers: int) -> float | None:
        hist: dict[int, int] = {}
        for part in parts:
            for gap, n in part._hists[3].items():
                hist[gap] = hist.get(gap, 0) + n
        return _median(hist, min_customers)

    def scores(self, state: CustomerState) -> RfmScores | None:
        """Scores within the partition holding the customer (None: not a buyer, or no
        partition holds it yet)."""
        part = self.partition_holding(state.subject)
        return None if part is None else part.scores(state)

    def rf_grid(self) -> dict[tuple[int, int], int]:
        grid: dict[tuple[int, int], int] = {}
        for part in self._parts.values():
            for cell, n in part.rf_grid().items():
                grid[cell] = grid.get(cell, 0) + n
        return grid

    def core_count(self, share: float) -> int:
        return sum(part.core_count(share) for part in self._parts.values())
