"""Live RFM score cut-offs against the current customer population.

Scores are ranks, not fixed thresholds: a customer's F score is 1 + 5 x (share of buyers
with strictly lower frequency), likewise M (spend) and R (last purchase day: more recent
ranks higher). Ties share a score. Only customers with at least one purchase take part.
Each of the three values is a sorted list of every buyer's value (sortedcontainers): an
update is O(log n), and so is a rank. (Recency and frequency were value -> count
histograms with a "how many below" table rebuilt at the first read after a change; once
the index followed every record of a batch, a tick or an uplift exposure between two
purchases rebuilt it each time, 16,000 rebuilds per 100k purchases.) Scores are always
computed against the current population.

The same index gives the value tier (top ``core_share`` of buyers by spend = ``core``) and
the churn prior: the median of the customers' own usual intervals (whole days, customers
with at least three gaps between purchase days).
"""

from __future__ import annotations

import math
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


class Population:
    """Rank index over the buyers this process holds (keyed by subject id); a StateIndex."""

    __slots__ = ("_added", "_by_subject", "_gaps", "_gaps_changed", "_prior", "_rf", "_sorted")

    def __init__(self) -> None:
        self._by_subject: dict[str, Contribution] = {}
        # every buyer's last purchase day, frequency and spend (cents), each ascending: a
        # rank is a bisection, an update O(log n)
        self._sorted: tuple[SortedList, SortedList, SortedList] = (SortedList(), SortedList(), SortedList())
        # values added since a list was last read, merged in one sort then (a restart
        # indexes every buyer before the first rank is asked for)
        self._added: tuple[list[int], list[int], list[int]] = ([], [], [])
        # own median gap (days) -> buyers, only customers with enough gaps (the churn prior)
        self._gaps: dict[int, int] = {}
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
        added = self._added
        if old is not None:
            for which in (0, 1, 2):
                if new is None or old[which] != new[which]:
                    self._values(which).remove(old[which])
            _dec(self._rf, old[:2])  # type: ignore[arg-type]
            if old[3] >= 0:
                _dec(self._gaps, old[3])
                self._prior = None
                self._gaps_changed += 1
            del self._by_subject[subject]
        if new is not None:
            for which in (0, 1, 2):
                if old is None or old[which] != new[which]:
                    added[which].append(new[which])
            rf = self._rf
            rf[new[:2]] = rf.get(new[:2], 0) + 1
            if new[3] >= 0:
                self._gaps[new[3]] = self._gaps.get(new[3], 0) + 1
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
        value = _median(self._gaps, min_customers)
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

    def settle(self) -> None:
        """Sort in what was added since the last read (a rebuild adds every buyer unsorted:
        sorted here, the first tick after a restart does not pay for it)."""
        for which in (0, 1, 2):
            self._values(which)

    def _values(self, which: int) -> SortedList:
        """Every buyer's recency day (0), frequency (1) or spend (2), ascending."""
        values = self._sorted[which]
        added = self._added[which]
        if added:
            values.update(added)
            added.clear()
        return values

    def _count_below(self, which: int, value: int) -> int:
        return self._values(which).bisect_left(value)

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
        spend = self._values(2)
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

    def settle(self) -> None:
        for part in self._parts.values():
            part.settle()

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
            for gap, n in part._gaps.items():
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
