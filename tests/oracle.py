"""An independent batch computation of what every customer's state must be.

Written from the README's definitions, without importing ``streams`` logic, so tests can
compare the streaming result against it: distinct events by event_id, identity resolution
(anonymous touchpoints count for the customer they identified as), trailing windows by UTC
day, RFM ranks against the whole buyer population, lifecycle rules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

DAY = 86_400_000
INTENT = {"inquiry", "cart", "signup"}


def ts_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def cents(value: Any) -> int:
    return int((Decimal(str(value)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@dataclass
class Expected:
    customer_id: str
    purchases: list[tuple[int, int]] = field(default_factory=list)  # (ts, cents)
    touches: dict[str, int] = field(default_factory=dict)
    positive_reviews: int = 0
    loyalty: bool | None = None
    loyalty_version: tuple[int, str] = (-1, "")
    aliases: set[str] = field(default_factory=set)

    @property
    def frequency(self) -> int:
        return len(self.purchases)

    @property
    def monetary_cents(self) -> int:
        return sum(c for _, c in self.purchases)

    @property
    def first_ms(self) -> int | None:
        return min((t for t, _ in self.purchases), default=None)

    @property
    def last_ms(self) -> int | None:
        return max((t for t, _ in self.purchases), default=None)

    def window(self, now_ms: int, days: int) -> tuple[int, int]:
        today = now_ms // DAY
        sel = [c for t, c in self.purchases if today - days < t // DAY <= today]
        return len(sel), sum(sel)

    def stage(self, member_min: int = 3) -> str:
        member = self.frequency >= member_min or bool(self.loyalty)
        if member and (self.touches.get("referral", 0) > 0 or self.positive_reviews > 0):
            return "advocate"
        if member:
            return "member"
        if self.frequency >= 1:
            return "customer"
        if any(self.touches.get(t, 0) for t in INTENT):
            return "prospect"
        if self.touches:
            return "visitor"
        return "stranger"


def compute(
    purchases: list[dict[str, Any]],
    touchpoints: list[dict[str, Any]],
    updates: list[dict[str, Any]] = (),  # type: ignore[assignment]
    currency: str = "EUR",
) -> dict[str, Expected]:
    """Expected state per known customer (anonymous ids resolved through identify)."""
    out: dict[str, Expected] = {}

    def get(cid: str) -> Expected:
        if cid not in out:
            out[cid] = Expected(cid)
        return out[cid]

    seen: set[str] = set()
    for p in purchases:
        if p["event_id"] in seen or p.get("currency") != currency:
            continue
        seen.add(p["event_id"])
        get(str(p["customer_id"])).purchases.append((ts_ms(p["ts"]), cents(p["amount"])))

    owner: dict[str, str] = {}
    for t in touchpoints:
        if t["type"] == "identify" and t.get("customer_id"):
            anon = t.get("alias_of") or t.get("anonymous_id")
            if anon and anon != t["customer_id"]:
                owner.setdefault(str(anon), str(t["customer_id"]))
    seen_t: set[str] = set()
    anon_touch: dict[str, dict[str, int]] = defaultdict(dict)
    for t in touchpoints:
        if t["event_id"] in seen_t:
            continue
        seen_t.add(t["event_id"])
        cid = t.get("customer_id")
        if cid is None:
            anon = str(t["anonymous_id"])
            cid = owner.get(anon)
            if cid is None:
                counts = anon_touch[anon]
                counts[t["type"]] = counts.get(t["type"], 0) + 1
                continue
        e = get(str(cid))
        e.touches[t["type"]] = e.touches.get(t["type"], 0) + 1
        if t["type"] == "review" and (t.get("rating") or 0) >= 4:
            e.positive_reviews += 1
    for anon, cid in owner.items():
        get(cid).aliases.add(anon)

    for u in updates:
        if "loyalty_member" not in u or u.get("erase"):
            continue
        e = get(str(u["customer_id"]))
        version = (ts_ms(u["ts"]), str(u["event_id"]))
        if version > e.loyalty_version:
            e.loyalty_version = version
            e.loyalty = bool(u["loyalty_member"])
    return out


def rank_score(values: list[int], mine: int) -> int:
    below = sum(1 for v in values if v < mine)
    return 1 + (5 * below) // len(values)


def rfm_scores(expected: dict[str, Expected], partitions: int) -> dict[str, tuple[int, int, int]]:
    """R, F, M scores (1-5) of every buyer, ranked against the buyers of its own partition
    (``partitions``: the co-partitioned inputs' count; murmur2 of the id, as a worker)."""
    from streams.partitioning import key_hash

    groups: dict[int, list[Expected]] = defaultdict(list)
    for e in expected.values():
        if e.frequency:
            groups[key_hash(e.customer_id.encode()) % partitions].append(e)
    out: dict[str, tuple[int, int, int]] = {}
    for buyers in groups.values():
        out.update(_ranked(buyers))
    return out


def _ranked(buyers: list[Expected]) -> dict[str, tuple[int, int, int]]:
    rec = [e.last_ms // DAY for e in buyers]  # type: ignore[operator]
    freq = [e.frequency for e in buyers]
    mon = [e.monetary_cents for e in buyers]
    rec.sort()
    freq.sort()
    mon.sort()
    import bisect

    n = len(buyers)
    out = {}
    for e in buyers:
        day = e.last_ms // DAY  # type: ignore[operator]
        older, same = (
            bisect.bisect_left(rec, day),
            bisect.bisect_right(rec, day) - bisect.bisect_left(rec, day),
        )
        # R: the newest day anyone bought on is 5; other days by the middle of their group
        r = 5 if older + same == n else 1 + int(5 * (older + same / 2) / n)
        out[e.customer_id] = (
            r,
            1 + (5 * bisect.bisect_left(freq, e.frequency)) // n,
            1 + (5 * bisect.bisect_left(mon, e.monetary_cents)) // n,
        )
    return out


# --- stock: who should be told (the README's interest definition, computed in batch) ---------
def stock_audience(
    purchases: list[dict[str, Any]],
    touchpoints: list[dict[str, Any]],
    arrivals: list[dict[str, Any]],
    *,
    regions: dict[str, str],
    min_occasions: int = 2,
    window_days: float = 365,
    min_share: float = 0.25,
    half_life_days: float = 180,
) -> dict[str, set[str]]:
    """arrival event_id -> customers who should hear about it: >= ``min_occasions`` orders
    with the category within ``window_days`` before the arrival, a recency-weighted spend
    share >= ``min_share`` (weights 2^((ts - arrival) / half-life), orders up to the
    arrival), and shopping where the stock landed (a store bought at or visited before the
    arrival; for a region arrival a store in the region; online stock: everybody)."""
    orders: dict[str, dict[str, tuple[int, dict[str, int]]]] = defaultdict(dict)
    for p in purchases:
        lines: dict[str, int] = defaultdict(int)
        for it in p.get("items", []):
            lines[it["category"]] += cents(it["price"]) * int(it["qty"])
        orders[p["customer_id"]].setdefault(p["event_id"], (ts_ms(p["ts"]), dict(lines)))
    stores: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for p in purchases:
        if p.get("store_id"):
            stores[p["customer_id"]].append((ts_ms(p["ts"]), p["store_id"]))
    for t in touchpoints:
        if t.get("type") == "visit" and t.get("customer_id") and t.get("store_id"):
            stores[t["customer_id"]].append((ts_ms(t["ts"]), t["store_id"]))
    by_category: dict[str, set[str]] = defaultdict(set)
    for customer, mine in orders.items():
        for _ts, lines in mine.values():
            for category in lines:
                by_category[category].add(customer)
    half = half_life_days * DAY
    out: dict[str, set[str]] = {}
    for a in arrivals:
        at, category = ts_ms(a["ts"]), a["category"]
        told: set[str] = set()
        for customer in by_category.get(category, ()):
            mine = [o for o in orders[customer].values() if o[0] <= at]
            recent = sum(1 for ts, lines in mine if category in lines and at - window_days * DAY <= ts)
            if recent < min_occasions:
                continue
            total = sum(sum(lines.values()) * 2 ** ((ts - at) / half) for ts, lines in mine)
            share = sum(lines.get(category, 0) * 2 ** ((ts - at) / half) for ts, lines in mine)
            if total <= 0 or share < min_share * total:
                continue
            where = {s for ts, s in stores.get(customer, ()) if ts <= at}
            if a.get("store_id"):
                if a["store_id"] not in where:
                    continue
            elif a.get("region"):
                if not any(regions.get(s) == a["region"] for s in where):
                    continue
            told.add(customer)
        out[a["event_id"]] = told
    return out
