"""Recency, frequency, monetary on event time.

State lives in :class:`schemas.state.CustomerState`:
- lifetime: ``frequency`` (distinct purchase events), ``monetary_cents``, first/last purchase;
- trailing windows: one bucket per UTC day ``[purchases, cents]``, kept for
  ``policy.bucket_retention_days`` before the newest purchase (bounded memory);
- the trailing N-day window as of ``now`` covers UTC days ``day(now)-N+1 .. day(now)``.

Every aggregate is a sum, min or max, so applying the same set of events in any order gives
the same state; duplicates are rejected by the bounded id memory in :mod:`streams.dedupe`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.dedupe import Seen, id_hash, remember
from streams.policy import Policy


def apply_purchase(
    state: CustomerState, event_id: str, ts_ms: int, amount_cents: int, policy: Policy, content: int = 0
) -> Seen:
    """Add one purchase to ``state`` (mutated in place) unless the id memory says otherwise:
    a duplicate, a conflict, or (with ``policy.beyond_horizon == "dead_letter"``) an event
    beyond the horizon leave ``state`` unchanged; the caller decides what they become."""
    seen = remember(state.purchase_ids, id_hash(event_id), ts_ms, policy.purchase_id_cap, content)
    if seen is Seen.DUPLICATE or seen is Seen.CONFLICT:
        return seen
    if seen is Seen.BEYOND_HORIZON and policy.beyond_horizon == "dead_letter":
        return seen
    state.frequency += 1
    state.monetary_cents += amount_cents
    if state.first_purchase_ms is None or ts_ms < state.first_purchase_ms:
        state.first_purchase_ms = ts_ms
    newest_moved = state.last_purchase_ms is None or ts_ms > state.last_purchase_ms
    if newest_moved:
        state.last_purchase_ms = ts_ms
    day = ts_ms // DAY_MS
    horizon = state.last_purchase_ms // DAY_MS - policy.bucket_retention_days  # type: ignore[operator]
    if day > horizon:
        bucket = state.days.get(day)
        if bucket is None:
            state.days[day] = [1, amount_cents]
        else:
            bucket[0] += 1
            bucket[1] += amount_cents
    if newest_moved and len(state.days) > 1 and min(state.days) <= horizon:
        for d in [d for d in state.days if d <= horizon]:
            del state.days[d]
    return seen


@dataclass(frozen=True, slots=True)
class Window:
    days: int
    purchases: int
    monetary_cents: int


def trailing_windows(state: CustomerState, now_ms: int, policy: Policy) -> list[Window]:
    """Purchases and spend in each trailing window (``policy.windows_days``) as of ``now_ms``."""
    today = now_ms // DAY_MS
    out = []
    for n in policy.windows_days:
        lo = today - n
        count = cents = 0
        for day, (k, c) in state.days.items():
            if lo < day <= today:
                count += k
                cents += c
        out.append(Window(n, count, cents))
    return out


def recency_days(state: CustomerState, now_ms: int) -> int | None:
    """Whole days since the last purchase (event time), or None for non-buyers."""
    if state.last_purchase_ms is None:
        return None
    return max(0, (now_ms - state.last_purchase_ms) // DAY_MS)


def mean_interpurchase_days(state: CustomerState) -> float | None:
    """Average gap between consecutive purchases = (last - first) / (n - 1)."""
    if state.frequency < 2 or state.first_purchase_ms is None or state.last_purchase_ms is None:
        return None
    return (state.last_purchase_ms - state.first_purchase_ms) / DAY_MS / (state.frequency - 1)


def own_gaps(state: CustomerState) -> list[int]:
    """Whole days between consecutive distinct purchase days in the retained buckets (the
    last ``bucket_retention_days`` before the newest purchase): the customer's own rhythm."""
    days = state.days
    if len(days) < 2:
        return []
    ordered = sorted(days)
    return [b - a for a, b in itertools.pairwise(ordered)]


def rhythm(state: CustomerState) -> tuple[float, int]:
    """(median of :func:`own_gaps` or 0.0, how many gaps), cached on the state until its
    purchases change (it is read on every deadline computation)."""
    key = (state.frequency, state.last_purchase_ms or 0)
    cached = state.rhythm_cache
    if cached is not None and (cached[0], cached[1]) == key:
        return cached[2], cached[3]
    gaps = own_gaps(state)
    n = len(gaps)
    if n:
        gaps.sort()
        half = n // 2
        median = float(gaps[half]) if n % 2 else (gaps[half - 1] + gaps[half]) / 2
    else:
        median = 0.0
    state.rhythm_cache = (key[0], key[1], median, n)
    return median, n


# RFM segments from the (R, F) grid, the common 10-segment map.
_SEGMENTS = {
    (1, 1): "hibernating", (1, 2): "hibernating", (2, 1): "hibernating", (2, 2): "hibernating",
    (1, 3): "at_risk", (1, 4): "at_risk", (2, 3): "at_risk", (2, 4): "at_risk",
    (1, 5): "cant_lose", (2, 5): "cant_lose",
    (3, 1): "about_to_sleep", (3, 2): "about_to_sleep",
    (3, 3): "need_attention",
    (3, 4): "loyal", (3, 5): "loyal", (4, 4): "loyal", (4, 5): "loyal",
    (4, 1): "promising",
    (5, 1): "new",
    (4, 2): "potential_loyalist", (4, 3): "potential_loyalist",
    (5, 2): "potential_loyalist", (5, 3): "potential_loyalist",
    (5, 4): "champions", (5, 5): "champions",
}  # fmt: skip
SEGMENTS = tuple(sorted(set(_SEGMENTS.values())))


def segment(r: int, f: int) -> str:
    """Name of the RFM segment for recency score ``r`` and frequency score ``f`` (1-5)."""
    return _SEGMENTS[(r, f)]


def quintile_score(count_below: int, population: int) -> int:
    """Score 1-5 from a rank: the share of the population strictly below this value."""
    if population <= 0:
        return 1
    return 1 + (5 * count_below) // population


def recency_score(count_older: int, count_same_day: int, population: int) -> int:
    """R, 1-5, from where the customer's last purchase day ranks among the buyers': the
    buyers of the newest last-purchase day anyone has score 5; the others by the midpoint
    of their day's group, 1 + 5 x (older + same day / 2) / buyers.

    F and M give ties the lowest score of their group (one-time buyers, often most of them,
    are F1), but recency ties pile up at the newest days: every purchase today joins one
    group, so after a sale day or a short backfill, with more than a fifth of the buyers on
    one day, customers who bought minutes ago would have scored R1-R4 ("hibernating")."""
    if count_older + count_same_day >= population:
        return 5
    return 1 + (5 * (2 * count_older + count_same_day)) // (2 * population)
