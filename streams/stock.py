"""Stock fan-out as broadcast state (pure): who hears about an arrival, in O(matches).

Every customer partition receives every stock arrival (the stock processor broadcasts it to
each partition of an internal topic, Flink's broadcast-state pattern / a Kafka Streams
GlobalKTable). Each partition matches it against its own in-memory inverted index
``category -> customers who may be interested`` (:class:`InterestIndex`, kept through the
index interface as states change, rebuilt from the table on assignment), checks the
customer's own state (the occasion window as of the arrival, where they shop) and passes the
customer to the notification gate. Nothing scans all customers.

Cross-category affinity (:class:`AffinityIndex`): population counts of customers who bought
categories A and B (bounded: at most ``affinity_max_categories`` categories are counted),
``lift(A -> B) = n(A and B) x N / (n(A) x n(B))``. For a category with affinity switched on,
an arrival in B also reaches customers interested in an A with high lift (reason
``affinity``), never those already interested in B.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson

from schemas.events import StockArrival
from schemas.state import CustomerState
from streams import interest as interests
from streams.interest import Interest
from streams.policy import InterestPolicy

_EMPTY: frozenset[str] = frozenset()


class Arrival(NamedTuple):
    """A validated stock arrival as broadcast to every customer partition."""

    event_id: str
    ts_ms: int
    sku: str
    category: str
    qty: int
    store_id: str | None
    region: str | None
    tags: tuple[str, ...]

    def item(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sku": self.sku, "category": self.category, "qty": self.qty}
        if self.store_id is not None:
            out["store_id"] = self.store_id
        if self.region is not None:
            out["region"] = self.region
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "ts": self.ts_ms,
            "sku": self.sku,
            "category": self.category,
            "qty": self.qty,
            "store_id": self.store_id,
            "region": self.region,
            "tags": list(self.tags),
        }


def broadcast_value(obj: dict[str, Any]) -> dict[str, Any]:
    """A validated stock-arrivals record as broadcast to the customer partitions (times as
    epoch ms; raises pydantic's ValidationError for an invalid one)."""
    ev = StockArrival.model_validate(obj)
    return Arrival(
        ev.event_id, ev.ts, ev.sku, ev.category, ev.qty, ev.store_id, ev.region, tuple(ev.tags)
    ).to_json()


def region_record(store_id: str, region: str, ts_ms: int) -> dict[str, Any]:
    """The value kept on the compacted ``store-regions`` topic (keyed by store id) for a store
    whose region an arrival at ``ts_ms`` named: a restart loads these before it applies any
    record, so a region-only arrival read after it reaches the same customers as before it."""
    return {"store_id": store_id, "region": region, "ts": ts_ms}


# store -> (region, event time of the earliest arrival that named it; CONFIGURED: always known)
Regions = dict[str, tuple[str, int]]
CONFIGURED = -(2**63)


def configured_regions(pairs: tuple[tuple[str, str], ...]) -> Regions:
    """``PATRONAGE_STORE_REGIONS`` as a map: known at every time, never replaced."""
    return {store: (region, CONFIGURED) for store, region in pairs}


def learn_region(regions: Regions, store: str, region: str, ts_ms: int) -> bool:
    """Note that an arrival at ``ts_ms`` named ``store`` in ``region``. The earliest such
    arrival wins (ties: the smaller region name), so the map is the same whatever order the
    partitions apply their arrivals in, and after a restart that loaded it. True if it
    changed."""
    if not names_earlier(regions, store, region, ts_ms):
        return False
    regions[store] = (region, ts_ms)
    return True


def names_earlier(regions: Regions, store: str, region: str, ts_ms: int) -> bool:
    """Would an arrival at ``ts_ms`` naming ``store`` in ``region`` change ``regions`` (no
    region known for the store yet, or this naming comes first)?"""
    known = regions.get(store)
    return known is None or (ts_ms, region) < (known[1], known[0])


def region_of(regions: Regions, store: str, at_ms: int) -> str | None:
    """``store``'s region as known at ``at_ms``: named by an arrival before then (or
    configured). A region-only arrival is matched against what was known at its own time,
    as live: learned from a later arrival - another partition ahead in event time, or a
    restart that loaded the map - it reached customers one run and not the next (fresh-eyes
    2026-12-08: 4 to 5 of 2,135 new-stock triggers differed between two undisturbed runs)."""
    known = regions.get(store)
    return known[0] if known is not None and known[1] < at_ms else None


def parse_region_record(key: bytes | None, value: bytes | None) -> tuple[str, str, int] | None:
    """(store id, region, event time of the arrival that named it) of a ``store-regions``
    record; None for a tombstone or a record that is not one (never raises: the topic is read
    at every start)."""
    if key is None or value is None:
        return None
    try:
        obj = orjson.loads(value)
        store = key.decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    region, ts = obj.get("region"), obj.get("ts")
    if not isinstance(region, str) or not region or not store or type(ts) is not int:
        return None
    return store, region, ts


def learn_regions(regions: Regions, learned: Regions) -> int:
    """:func:`learn_region` for every pair of ``learned``; returns how many changed the map."""
    return sum(learn_region(regions, store, region, ts) for store, (region, ts) in learned.items())


class InterestIndex:
    """Per partition: category -> subjects whose profile may make them interested
    (``streams.interest.candidates``). Implements ``StateIndex``."""

    __slots__ = ("_by", "_entries", "_of", "policy")

    def __init__(self, policy: InterestPolicy) -> None:
        self.policy = policy
        self._of: dict[str, tuple[int, frozenset[str]]] = {}
        self._by: dict[tuple[int, str], set[str]] = {}
        # one shared (partition, categories) entry per distinct pair (customers share a few
        # category sets; a frozenset of its own took ~220 B a customer)
        self._entries: dict[tuple[int, frozenset[str]], tuple[int, frozenset[str]]] = {}

    def __len__(self) -> int:
        return len(self._of)

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        new = _EMPTY if state is None else interests.candidates(state, self.policy)
        old = self._of.get(subject)
        if old is None:
            if not new:
                return
        elif old[0] == partition and old[1] == new:
            return
        else:
            for category in old[1]:
                members = self._by.get((old[0], category))
                if members is not None:
                    members.discard(subject)
                    if not members:
                        del self._by[(old[0], category)]
        if new:
            entry = (partition, new)
            self._of[subject] = self._entries.setdefault(entry, entry)
            by = self._by
            for category in new:
                key = (partition, category)
                members = by.get(key)
                if members is None:
                    by[key] = {subject}
                else:
                    members.add(subject)
        else:
            self._of.pop(subject, None)

    def members(self, partition: int, category: str) -> set[str]:
        return self._by.get((partition, category), set())

    def size(self, category: str) -> int:
        """Candidates for ``category`` over every partition this worker holds."""
        return sum(len(s) for (_p, c), s in self._by.items() if c == category)

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._of.clear()
            self._by.clear()
            self._entries.clear()
            return
        for key in [k for k in self._by if k[0] == partition]:
            del self._by[key]
        for subject in [s for s, (p, _) in self._of.items() if p == partition]:
            del self._of[subject]


class AffinityIndex:
    """Customers per bought category and per pair of categories (co-purchase lift).
    Implements ``StateIndex``; memory is bounded by ``affinity_max_categories``."""

    __slots__ = ("_known", "_of", "customers", "pairs", "per_category", "policy")

    def __init__(self, policy: InterestPolicy) -> None:
        self.policy = policy
        self._of: dict[str, tuple[int, frozenset[str]]] = {}
        self._known: set[str] = set()
        self.per_category: dict[str, int] = {}
        self.pairs: dict[tuple[str, str], int] = {}
        self.customers = 0

    def _bounded(self, cats: frozenset[str]) -> frozenset[str]:
        known = self._known
        if cats <= known:
            return cats
        room = self.policy.affinity_max_categories - len(known)
        for c in sorted(cats - known):
            if room <= 0:
                break
            known.add(c)
            room -= 1
        return frozenset(c for c in cats if c in known)

    def _add(self, cats: frozenset[str], sign: int) -> None:
        if not cats:
            return
        self.customers += sign
        per = self.per_category
        for c in cats:
            per[c] = per.get(c, 0) + sign
        if len(cats) > 1:
            ordered = sorted(cats)
            pairs = self.pairs
            for i, a in enumerate(ordered):
                for b in ordered[i + 1 :]:
                    pairs[(a, b)] = pairs.get((a, b), 0) + sign

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        new = _EMPTY if state is None else self._bounded(interests.bought(state))
        old = self._of.get(subject)
        if old is not None and old[1] == new:
            if old[0] != partition:
                self._of[subject] = (partition, new)
            return
        if old is None and not new:
            return
        if old is not None:
            self._add(old[1], -1)
        if new:
            self._of[subject] = (partition, new)
            self._add(new, 1)
        else:
            self._of.pop(subject, None)

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._of.clear()
            self.per_category.clear()
            self.pairs.clear()
            self.customers = 0
            self._known.clear()
            return
        for subject in [s for s, (p, _) in self._of.items() if p == partition]:
            self.update(partition, subject, None)

    def both(self, a: str, b: str) -> int:
        return self.pairs.get((a, b) if a < b else (b, a), 0)

    def lift(self, a: str, b: str) -> float:
        na, nb = self.per_category.get(a, 0), self.per_category.get(b, 0)
        if not na or not nb:
            return 0.0
        return self.both(a, b) * self.customers / (na * nb)

    def sources(self, target: str) -> list[tuple[str, float]]:
        """Categories A with lift(A -> target) >= the minimum and enough support."""
        policy = self.policy
        out = []
        for a in self.per_category:
            if a == target:
                continue
            if self.both(a, target) >= policy.affinity_min_support:
                lift = self.lift(a, target)
                if lift >= policy.affinity_min_lift:
                    out.append((a, round(lift, 3)))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out


def shops_there(state: CustomerState, arrival: Arrival, regions: Regions) -> bool:
    """A store arrival reaches customers who bought or visited there; a region arrival those
    with a store in the region (as known at the arrival's time); online stock (neither)
    everybody."""
    if arrival.store_id is not None:
        return arrival.store_id in state.stores
    if arrival.region is not None:
        return any(region_of(regions, s, arrival.ts_ms) == arrival.region for s in state.stores)
    return True


class Match(NamedTuple):
    subject: str
    state: CustomerState
    reason: str  # interest | affinity
    interest: Interest  # the interest behind it (in the arrival's category, or the source)
    lift: float | None  # affinity: lift(source -> arrival category)


def audience(
    partition: int,
    arrival: Arrival,
    get: Callable[[str], CustomerState | None],
    index: InterestIndex,
    affinity: AffinityIndex | None,
    regions: Regions,
) -> Iterator[Match]:
    """Everyone in ``partition`` who should hear about ``arrival``, in O(candidates)."""
    policy = index.policy
    category = arrival.category
    at = arrival.ts_ms
    direct = index.members(partition, category)
    for subject in sorted(direct):  # sorted: the same order in every run
        state = get(subject)
        if state is None or not shops_there(state, arrival, regions):
            continue
        found = interests.assess(state, category, at, policy)
        if found is not None and found.interested:
            yield Match(subject, state, "interest", found, None)
    if affinity is None or not policy.affinity_on(category):
        return
    done: set[str] = set()
    for source, lift in affinity.sources(category):
        for subject in sorted(index.members(partition, source)):
            if subject in direct or subject in done:
                continue
            state = get(subject)
            if state is None or not shops_there(state, arrival, regions):
                continue
            found = interests.assess(state, source, at, policy)
            if found is not None and found.interested:
                done.add(subject)
                yield Match(subject, state, "affinity", found, lift)
