"""Interest profiles: which categories a customer buys a large share of (pure).

Per customer and category, from purchase line items (event time):

- recency-weighted spend and purchase occasions (an order with the category is one
  occasion), each weighted ``2 ** ((ts - ref) / half_life)`` against a per-customer
  reference time, so a share (category / total) is exact and independent of "now": both
  sides decay alike;
- the times of the most recent occasions (enough to tell ">= N within the last W days");
- recency-weighted touches (views, cart adds, inquiries with the category): they add to
  the score, they never make a customer interested on their own.

"Interested" (the documented default, every number a setting in
:class:`streams.policy.InterestPolicy`): at least ``min_occasions`` orders with the category
within ``occasion_window_days`` before the moment asked about, and a spend share of at least
``min_spend_share``. At most ``max_categories`` categories are tracked; when a new one comes,
the one with the least weighted spend is folded into "other" (its spend still counts in the
total, so the shares of the tracked ones stay exact).

The profile is a plain JSON-able dict in ``CustomerState.interest``::

    {"r": ref_ms, "s": weighted total spend (cents), "o": weighted total occasions,
     "c": {category: [w_spend, w_occasions, w_touches, [recent occasion ms, ascending]]}}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from schemas.events import ItemLike
from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.policy import InterestPolicy

# the reference time moves when weights would leave a comfortable float range
_REBASE_EXPONENT = 400.0
_SPEND, _OCC, _TOUCH, _RECENT = 0, 1, 2, 3


class Interest(NamedTuple):
    """One category of one customer, as of a moment."""

    category: str
    score: float  # 0..1 (+ the touch bonus): what ranks interests
    spend_share: float
    occasion_share: float
    occasions_in_window: int  # recent orders with the category within the window (capped)
    last_ms: int | None  # newest order with the category
    interested: bool  # the documented definition holds


def _half_life_ms(policy: InterestPolicy) -> float:
    return policy.half_life_days * DAY_MS


def _keep(policy: InterestPolicy) -> int:
    return max(policy.min_occasions, 4)


def _profile(state: CustomerState, ts_ms: int) -> dict[str, Any]:
    prof = state.interest
    if prof is None:
        prof = state.interest = {"r": ts_ms, "s": 0.0, "o": 0.0, "c": {}}
    return prof


def _weight(prof: dict[str, Any], ts_ms: int, policy: InterestPolicy) -> float:
    """The weight of an event at ``ts_ms`` against the profile's reference (rebasing first
    when it would grow too large)."""
    h = _half_life_ms(policy)
    exponent = (ts_ms - prof["r"]) / h
    if exponent > _REBASE_EXPONENT:
        factor = 2.0 ** (-exponent)
        prof["r"] = ts_ms
        prof["s"] *= factor
        prof["o"] *= factor
        for entry in prof["c"].values():
            entry[_SPEND] *= factor
            entry[_OCC] *= factor
            entry[_TOUCH] *= factor
        exponent = 0.0
    return 2.0**exponent if exponent > -1000 else 0.0


def _entry(prof: dict[str, Any], category: str, policy: InterestPolicy) -> list[Any] | None:
    cats: dict[str, list[Any]] = prof["c"]
    entry = cats.get(category)
    if entry is None:
        if len(cats) >= policy.max_categories:
            # fold the weakest into "other": its spend stays in the total
            weakest = min(cats.items(), key=lambda kv: (kv[1][_SPEND], kv[1][_OCC], kv[0]))[0]
            del cats[weakest]
        entry = cats[category] = [0.0, 0.0, 0.0, []]
    return entry


def note_purchase(
    state: CustomerState, ts_ms: int, items: Iterable[ItemLike], policy: InterestPolicy
) -> None:
    """Fold one new (de-duplicated) order's line items into the profile."""
    spend: dict[str, float] = {}
    for it in items:
        spend[it.category] = spend.get(it.category, 0.0) + it.qty * it.price * 100
    if not spend:
        return
    prof = _profile(state, ts_ms)
    w = _weight(prof, ts_ms, policy)
    keep = _keep(policy)
    for category, cents in spend.items():
        prof["s"] += cents * w
        prof["o"] += w
        entry = _entry(prof, category, policy)
        assert entry is not None
        entry[_SPEND] += cents * w
        entry[_OCC] += w
        recent: list[int] = entry[_RECENT]
        if not recent or ts_ms >= recent[-1]:
            recent.append(ts_ms)
        else:  # out of order
            recent.append(ts_ms)
            recent.sort()
        if len(recent) > keep:
            del recent[0]


def note_touch(state: CustomerState, ts_ms: int, category: str, policy: InterestPolicy) -> None:
    """A view / cart add / inquiry with a category: weight for the score only."""
    prof = state.interest
    if prof is None:
        prof = _profile(state, ts_ms)
    cats = prof["c"]
    if category not in cats and len(cats) >= policy.max_categories:
        return  # never evict a bought category for a touch
    w = _weight(prof, ts_ms, policy)
    entry = _entry(prof, category, policy)
    assert entry is not None
    entry[_TOUCH] += w


def _touch_bonus(prof: dict[str, Any], entry: list[Any], at_ms: int, policy: InterestPolicy) -> float:
    if not entry[_TOUCH]:
        return 0.0
    decayed = entry[_TOUCH] * 2.0 ** ((prof["r"] - at_ms) / _half_life_ms(policy))
    return min(policy.touch_max, policy.touch_weight * decayed)


def _occasions_since(recent: list[int], since_ms: int, until_ms: int) -> int:
    return sum(1 for t in recent if since_ms <= t <= until_ms)


def assess(state: CustomerState, category: str, at_ms: int, policy: InterestPolicy) -> Interest | None:
    """The customer's interest in ``category`` as of ``at_ms`` (None: never bought or viewed it)."""
    prof = state.interest
    if prof is None:
        return None
    entry = prof["c"].get(category)
    if entry is None:
        return None
    spend_share = entry[_SPEND] / prof["s"] if prof["s"] > 0 else 0.0
    occ_share = entry[_OCC] / prof["o"] if prof["o"] > 0 else 0.0
    recent: list[int] = entry[_RECENT]
    window_ms = policy.occasion_window_days * DAY_MS
    occasions = _occasions_since(recent, int(at_ms - window_ms), at_ms)
    interested = occasions >= policy.min_occasions and spend_share >= policy.min_spend_share
    score = 0.5 * spend_share + 0.5 * occ_share + _touch_bonus(prof, entry, at_ms, policy)
    return Interest(
        category,
        round(score, 4),
        round(spend_share, 4),
        round(occ_share, 4),
        occasions,
        recent[-1] if recent else None,
        interested,
    )


def candidates(state: CustomerState, policy: InterestPolicy) -> frozenset[str]:
    """Categories the customer *may* be interested in at some moment: the share holds and
    there were ever ``min_occasions`` orders (the window is checked when asked, with the
    moment's time). What the interest index holds."""
    prof = state.interest
    if prof is None or prof["s"] <= 0:
        return _EMPTY
    return _scan(prof, policy)


def _scan(prof: dict[str, Any], policy: InterestPolicy) -> frozenset[str]:
    total = prof["s"]
    need = policy.min_occasions
    floor = policy.min_spend_share * total
    out = [
        c for c, e in prof["c"].items() if len(e[_RECENT]) >= need and e[_SPEND] >= floor and e[_SPEND] > 0
    ]
    return frozenset(out) if out else _EMPTY


def bought(state: CustomerState) -> frozenset[str]:
    """Categories the customer has bought (tracked ones), for co-purchase lift."""
    prof = state.interest
    if prof is None:
        return _EMPTY
    out = [c for c, e in prof["c"].items() if e[_RECENT]]
    return frozenset(out) if out else _EMPTY


def bought_within(state: CustomerState, category: str, since_ms: int, until_ms: int) -> bool:
    """An order with ``category`` in [since, until] (for "just bought it")."""
    prof = state.interest
    if prof is None:
        return False
    entry = prof["c"].get(category)
    return entry is not None and _occasions_since(entry[_RECENT], since_ms, until_ms) > 0


def top(state: CustomerState, at_ms: int, policy: InterestPolicy, n: int = 5) -> list[dict[str, Any]]:
    """The top ``n`` interests by score (profiles show them)."""
    prof = state.interest
    if prof is None:
        return []
    rows = [assess(state, c, at_ms, policy) for c in prof["c"]]
    ranked = sorted((r for r in rows if r is not None), key=lambda r: (-r.score, r.category))[:n]
    return [r._asdict() for r in ranked]


_EMPTY: frozenset[str] = frozenset()
