"""The store funnel: per store and hour, visits, distinct visitors, purchasing visitors,
orders and revenue - derived from customer state, so it is exact after a restart.

Definitions (event time; ``hour`` = the UTC hour an event falls in):

- **visits** of (store S, hour H): ``visit`` touchpoints with ``store_id`` S in H (each
  touchpoint once: they are de-duplicated by event id before they get here);
- **visitors**: distinct subjects (customer id, or anonymous id until it is identified:
  an identified visitor's visits move to the customer) with a visit at S in H;
- **buyers** (purchasing visitors): visitors of (S, H) with a purchase at S (``store_id`` S)
  no earlier than one of their visits at S in H and at most ``buy_window_ms`` after it;
- **orders** / **revenue**: purchases at S whose event time falls in H (every customer's,
  visit or not) and their amounts; ``conversion`` = buyers / visitors, ``avg_basket`` =
  revenue / orders.

Each customer keeps its recent store visits and store purchases in its state
(``CustomerState.funnel``: bounded by ``retention_ms`` before the partition clock's now,
and by ``max_entries``), and :class:`StoreFunnelIndex` sums the per-customer contributions.
The index is rebuilt from the table after a restart, like the population. Entries older
than the retention are dropped only when the customer changes, so hours older than
``now - retention`` may be incomplete: they are never reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from schemas.state import CustomerState
from schemas.timestamps import HOUR_MS
from streams.indexes import PartitionedIndex
from streams.policy import FunnelPolicy

Cell = tuple[str, int]  # (store id, hour start in epoch ms)
# per cell: visits, visitors, buyers, orders, revenue cents
VISITS, VISITORS, BUYERS, ORDERS, CENTS = range(5)


def hour_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


def _entries(state: CustomerState) -> tuple[list[list[Any]], list[list[Any]]]:
    funnel = state.funnel
    if funnel is None:
        funnel = state.funnel = {"v": [], "p": []}
    return funnel["v"], funnel["p"]


def _prune(state: CustomerState, now_ms: int, policy: FunnelPolicy) -> None:
    visits, buys = _entries(state)
    floor = now_ms - policy.retention_ms
    visits[:] = [e for e in visits if e[1] >= floor]
    buys[:] = [e for e in buys if e[1] >= floor]
    extra = len(visits) + len(buys) - policy.max_entries
    if extra > 0:  # drop the oldest entries of either kind
        oldest = sorted(
            [(e[1], 0, i) for i, e in enumerate(visits)] + [(e[1], 1, i) for i, e in enumerate(buys)]
        )
        drop = {(kind, i) for _ts, kind, i in oldest[:extra]}
        visits[:] = [e for i, e in enumerate(visits) if (0, i) not in drop]
        buys[:] = [e for i, e in enumerate(buys) if (1, i) not in drop]
    if not visits and not buys:
        state.funnel = None


def note_visit(state: CustomerState, store_id: str, ts_ms: int, now_ms: int, policy: FunnelPolicy) -> None:
    """A (new, de-duplicated) store visit. Older than the retention before ``now_ms``: it
    lies in hours never reported, so it is not kept."""
    if ts_ms < now_ms - policy.retention_ms:
        return
    visits, _ = _entries(state)
    visits.append([store_id, ts_ms])
    visits.sort(key=lambda e: (e[1], e[0]))
    _prune(state, now_ms, policy)


def note_purchase(
    state: CustomerState, store_id: str, ts_ms: int, cents: int, now_ms: int, policy: FunnelPolicy
) -> None:
    """A (new, de-duplicated) purchase at a store."""
    if ts_ms < now_ms - policy.retention_ms:
        return
    _, buys = _entries(state)
    buys.append([store_id, ts_ms, cents])
    buys.sort(key=lambda e: (e[1], e[0]))
    _prune(state, now_ms, policy)


def merge(into: CustomerState, other: CustomerState, now_ms: int, policy: FunnelPolicy) -> None:
    """An identified anonymous visitor's entries join the customer's (the merge record
    carries them once; entries already held are not added twice)."""
    if other.funnel is None:
        return
    visits, buys = _entries(into)
    for mine, theirs in ((visits, other.funnel["v"]), (buys, other.funnel["p"])):
        held = {tuple(e) for e in mine}
        mine.extend(list(e) for e in theirs if tuple(e) not in held)
        mine.sort(key=lambda e: (e[1], e[0]))
    _prune(into, now_ms, policy)


def contribution(state: CustomerState, buy_window_ms: int) -> dict[Cell, tuple[int, int, int, int, int]]:
    """What one customer adds to each (store, hour): (visits, visitor, buyer, orders, cents)."""
    return {cell: (v[0], v[1], v[2], v[3], v[4]) for cell, v in _cells_of(state, buy_window_ms).items()}


def _cells_of(state: CustomerState, buy_window_ms: int) -> dict[Cell, list[int]]:
    funnel = state.funnel
    if not funnel:
        return {}
    out: dict[Cell, list[int]] = {}
    buys: dict[str, list[int]] = {}
    for store, ts, cents in funnel["p"]:
        cell = out.setdefault((store, hour_of(ts)), [0, 0, 0, 0, 0])
        cell[ORDERS] += 1
        cell[CENTS] += cents
        buys.setdefault(store, []).append(ts)
    for store, ts in funnel["v"]:
        cell = out.setdefault((store, hour_of(ts)), [0, 0, 0, 0, 0])
        cell[VISITS] += 1
        cell[VISITORS] = 1
        if not cell[BUYERS] and any(ts <= b <= ts + buy_window_ms for b in buys.get(store, ())):
            cell[BUYERS] = 1
    return out


_FLAT = 7  # store, hour, visits, visitor, buyer, orders, cents


def _flat(contrib: dict[Cell, list[int]], floor: int) -> tuple[Any, ...]:
    """A contribution as one flat tuple, ``_FLAT`` items a cell, hours before ``floor`` left
    out: what the index remembers per customer to take it out again (a dict of tuples took
    ~700 B a customer, this ~200)."""
    return tuple(
        x for (store, hour), values in contrib.items() if hour >= floor for x in (store, hour, *values)
    )


# customers' remembered contributions checked per advance (tick or batch) while a sweep for
# contributions wholly before the floor runs: ~1.5 us each
SWEEP_SLICE = 2000


class StoreFunnelIndex(PartitionedIndex):
    """Sums of the customers' contributions per (store, hour); a StateIndex.

    Kept as hour -> store -> sums, so a window of recent hours (the scrape's gauges, the
    page) reads only its own hours, never the years of history before it.

    Only hours from ``retention_ms`` before the clock's now on are kept (``advance``): no
    report reads older ones (``CustomerPipeline._funnel_since``), and over years of history
    nearly every (hour, store) cell was one customer's - ~370 B per customer in memory for
    numbers never shown. Contributions wholly before that floor are forgotten by a sweep, a
    slice per advance; cells before it in a remembered contribution are skipped when it is
    taken out (their hour is gone). ``retention_ms`` None: every hour is kept."""

    __slots__ = ("_floor", "_hours", "_sweep", "buy_window_ms", "retention_ms")

    def __init__(self, buy_window_ms: int, retention_ms: int | None = None) -> None:
        super().__init__()
        self.buy_window_ms = buy_window_ms
        self.retention_ms = retention_ms
        self._hours: dict[int, dict[str, list[int]]] = {}
        self._floor = -(2**62)  # hours before it are not kept
        self._sweep: Iterator[str] | None = None

    @property
    def floor_ms(self) -> int:
        return self._floor

    def advance(self, now_ms: int) -> None:
        """The clock's now is ``now_ms``: drop the hours before ``now - retention`` (the
        floor only rises) and sweep a slice of the remembered contributions."""
        if self.retention_ms is None:
            return
        floor = hour_of(now_ms - self.retention_ms)
        if floor > self._floor:
            self._floor = floor
            hours = self._hours
            for hour in [h for h in hours if h < floor]:
                del hours[hour]
            if self._sweep is None:
                self._sweep = iter(list(self._of))
        sweep = self._sweep
        if sweep is None:
            return
        of = self._of
        floor = self._floor
        for _ in range(SWEEP_SLICE):
            subject = next(sweep, None)
            if subject is None:
                self._sweep = None
                return
            entry = of.get(subject)
            if entry is not None and max(entry[1][1::_FLAT]) < floor:
                del of[subject]  # every hour of it is gone already

    def load(self, partition: int, subject: str, flat: tuple[Any, ...]) -> None:
        """A contribution taken before the floor was known (a rebuild), hours before it
        left out."""
        floor = self._floor
        if any(flat[at + 1] < floor for at in range(0, len(flat), _FLAT)):
            flat = tuple(
                x for at in range(0, len(flat), _FLAT) if flat[at + 1] >= floor for x in flat[at : at + _FLAT]
            )
        if flat:
            self._add(flat, 1)
            self._of[subject] = (partition, flat)

    def contribution_of(self, state: CustomerState, floor_ms: int) -> tuple[Any, ...]:
        """The cells of ``state`` from the hour of ``floor_ms`` on (a bound of the floor
        ``load`` will use): for ``load``."""
        if state.funnel is None:
            return ()
        return _flat(_cells_of(state, self.buy_window_ms), hour_of(floor_ms))

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        new = (
            ()
            if state is None or state.funnel is None
            else _flat(_cells_of(state, self.buy_window_ms), self._floor)
        )
        old = self._of.get(subject)
        if old is None and not new:
            return
        if old is not None:
            if old[1] == new and old[0] == partition:
                return
            self._add(old[1], -1)
            del self._of[subject]
        if new:
            self._add(new, 1)
            self._of[subject] = (partition, new)

    def _add(self, flat: tuple[Any, ...], sign: int) -> None:
        hours = self._hours
        floor = self._floor
        for at in range(0, len(flat), _FLAT):
            store, hour = flat[at], flat[at + 1]
            if hour < floor:
                continue  # an hour dropped since this was remembered (never added after)
            stores = hours.get(hour)
            if stores is None:
                stores = hours[hour] = {}
            agg = stores.get(store)
            if agg is None:
                agg = stores[store] = [0, 0, 0, 0, 0]
            for i in range(5):
                agg[i] += sign * flat[at + 2 + i]
            if not any(agg):
                del stores[store]
                if not stores:
                    del hours[hour]

    def _clear_all(self) -> None:
        self._hours.clear()
        self._floor = -(2**62)
        self._sweep = None

    def _window(self, since_ms: int) -> Iterator[tuple[int, dict[str, list[int]]]]:
        start = hour_of(since_ms)
        return ((hour, stores) for hour, stores in self._hours.items() if hour >= start)

    def cells(self, since_ms: int) -> dict[Cell, tuple[int, int, int, int, int]]:
        """(store, hour) -> (visits, visitors, buyers, orders, cents) for the hours from
        ``hour_of(since_ms)`` on (hours past the clock's now included: events a partition
        applied ahead of another's clock)."""
        return {
            (store, hour): (v[0], v[1], v[2], v[3], v[4])
            for hour, stores in self._window(since_ms)
            for store, v in stores.items()
        }

    def per_store(self, since_ms: int) -> dict[str, tuple[int, int, int, int, int]]:
        """Store -> totals over the hours from ``since_ms`` on (visitors and buyers summed
        over hours: a customer visiting in two hours counts in both)."""
        out: dict[str, list[int]] = {}
        for _hour, stores in self._window(since_ms):
            for store, v in stores.items():
                agg = out.get(store)
                if agg is None:
                    agg = out[store] = [0, 0, 0, 0, 0]
                for i in range(5):
                    agg[i] += v[i]
        return {s: (v[0], v[1], v[2], v[3], v[4]) for s, v in out.items()}


def rows(
    cells: dict[Cell, tuple[int, int, int, int, int]], iso: Callable[[int], str | None]
) -> list[dict[str, Any]]:
    """The ``/store-funnel`` rows, newest hour first, then by store. ``iso`` formats epoch ms."""
    out: list[dict[str, Any]] = []
    for (store, hour), (visits, visitors, buyers, orders, cents) in sorted(
        cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])
    ):
        revenue = cents / 100
        out.append(
            {
                "store": store,
                "hour": iso(hour),
                "visits": visits,
                "visitors": visitors,
                "buyers": buyers,
                "conversion": round(buyers / visitors, 4) if visitors else None,
                "orders": orders,
                "revenue": revenue,
                "avg_basket": round(revenue / orders, 2) if orders else None,
            }
        )
    return out
