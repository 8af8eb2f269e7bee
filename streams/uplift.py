"""Uplift: do the triggers work? Treated vs held-out conversion per trigger type x segment.

Pure, no I/O; times are epoch ms. **Event time** drives attribution (a trigger's ``ts``, a
purchase's ``ts``); the **configured clock** only closes windows (through the deadline
index, so an exposure closes even for a customer who never sends anything again).

- An **exposure** is recorded in the customer's state when a trigger of an uplift type is
  decided for them: ``treated`` when it is delivered, ``control`` when it is held out
  (``holdout: true``, ``deliver: false``). It keeps the trigger type, the categories (stock:
  the notification's items; churn risk: none = any purchase), the customer's RFM segment
  and value tier at that moment, and its window ``[ts, ts + window_days)`` on event time.
- A later purchase by that customer with ``start < purchase ts < end`` (stock: with an item
  in one of the categories) **converts** it. A purchase already applied when the trigger is
  decided (a late-arriving complaint) counts too, found in the remembered purchase times.
- When the clock reaches ``end`` the exposure is **closed** (final): it moves into the
  customer's tally ``{type|segment|tier|group: [exposures, conversions]}``. Only closed
  exposures count, so a fast conversion never raises a rate before the slow ones are in.
- At most ``max_open`` exposures stay open per customer; a trigger beyond that is not
  measured (counted, never silently).

The tallies live in ``CustomerState.uplift`` (changelog), so :class:`UpliftIndex` - their
sum over a worker's customers, kept per touched customer - is rebuilt from the table after
a restart. Re-applied events are duplicates before they get here (the id memory), and a
trigger is decided once, so nothing counts twice.

Statistics: rates, uplift = treated rate - control rate, and a 95 % interval for the
difference of two independent proportions by Newcombe's hybrid score method (method 10 of
Newcombe 1998, Wilson intervals combined): unlike the Wald interval it stays inside [-1, 1]
and keeps its coverage for small groups and rates near 0 or 1.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from math import sqrt
from typing import Any

from scipy.special import ndtri

from schemas.state import CustomerState
from streams import interest as interests
from streams.indexes import PartitionedIndex
from streams.policy import UpliftPolicy

CHURN_RISK = "churn_risk"
NEW_STOCK = "new_stock_for_interest"
TYPES = (CHURN_RISK, NEW_STOCK)  # trigger types measured (they have control groups)
GROUPS = ("treated", "control")
NONE = "none"  # segment / tier of a customer without one (a bounded label all the same)
Z95 = float(ndtri(0.975))  # 1.959963984540054

# an open exposure: [start ms, end ms, type, segment, tier, group, categories or None, converted 0/1]
_START, _END, _TYPE, _SEG, _TIER, _GROUP, _CATS, _CONV = range(8)

Key = tuple[str, str, str, str]  # (type, segment, tier, group)


def _memory(state: CustomerState) -> dict[str, Any]:
    u = state.uplift
    if u is None:
        u = state.uplift = {"open": [], "done": {}}
    return u


def group_of(trigger: Mapping[str, Any]) -> str:
    return "control" if trigger.get("holdout") else "treated"


def categories_of(trigger: Mapping[str, Any]) -> list[str] | None:
    """The categories a purchase must touch to convert (None: any purchase)."""
    if trigger.get("type") != NEW_STOCK:
        return None
    return sorted({it["category"] for it in trigger.get("items") or () if it.get("category")})


def _bought(state: CustomerState, cats: list[str] | None, start: int, end: int) -> bool:
    """A purchase already applied with start < ts < end (in the categories, when given)."""
    if cats is None:
        return any(start < t < end for t in state.purchase_ids.ts)
    return any(interests.bought_within(state, c, start + 1, end - 1) for c in cats)


def expose(
    state: CustomerState,
    trigger: Mapping[str, Any],
    ts_ms: int,
    segment: str | None,
    tier: str | None,
    policy: UpliftPolicy,
) -> bool:
    """Record the exposure a decided trigger creates; False when it is not measured (not an
    uplift type, or ``max_open`` exposures are open already)."""
    type_ = trigger.get("type")
    if type_ not in TYPES:
        return False
    u = _memory(state)
    if len(u["open"]) >= policy.max_open:
        return False
    cats = categories_of(trigger)
    end = ts_ms + policy.window_ms
    converted = 1 if _bought(state, cats, ts_ms, end) else 0
    u["open"].append([ts_ms, end, type_, segment or NONE, tier or NONE, group_of(trigger), cats, converted])
    return True


def on_purchase(state: CustomerState, ts_ms: int, categories: Iterable[str]) -> bool:
    """A new (de-duplicated) purchase: close what ended before it, convert what it falls in."""
    u = state.uplift
    if not u or not u["open"]:
        return False
    changed = close(state, ts_ms)
    bought: set[str] | None = None
    for exp in u["open"]:
        if exp[_CONV] or not exp[_START] < ts_ms < exp[_END]:
            continue
        cats = exp[_CATS]
        if cats is not None:
            if bought is None:
                bought = set(categories)
            if bought.isdisjoint(cats):
                continue
        exp[_CONV] = 1
        changed = True
    return changed


def close(state: CustomerState, now_ms: int) -> bool:
    """Close every exposure whose window ended by ``now_ms`` (the clock): into the tally."""
    u = state.uplift
    if not u or not u["open"]:
        return False
    still: list[list[Any]] = []
    done: dict[str, list[int]] = u["done"]
    for exp in u["open"]:
        if exp[_END] > now_ms:
            still.append(exp)
            continue
        key = "|".join((exp[_TYPE], exp[_SEG], exp[_TIER], exp[_GROUP]))
        tally = done.setdefault(key, [0, 0])
        tally[0] += 1
        tally[1] += exp[_CONV]
    if len(still) == len(u["open"]):
        return False
    u["open"] = still
    return True


def next_end(state: CustomerState) -> int | None:
    """When the next open exposure's window ends (for the deadline index)."""
    u = state.uplift
    if not u or not u["open"]:
        return None
    return min(exp[_END] for exp in u["open"])


# --- aggregates -------------------------------------------------------------------------------
Counts = dict[Key, list[int]]  # key -> [closed exposures, conversions, open exposures]


@functools.lru_cache(maxsize=4096)
def _shared_key(t: str, s: str, tr: str, g: str) -> Key:
    """One tuple (and one copy of its strings) per distinct key: the index remembers every
    customer's contribution, and each decoded state brings its own copies (~70 B a customer)."""
    return (t, s, tr, g)


@functools.lru_cache(maxsize=4096)
def _split_key(key: str) -> Key:
    t, s, tr, g = key.split("|")
    return _shared_key(t, s, tr, g)


def contribution(state: CustomerState) -> Counts | None:
    """One customer's part of the aggregates."""
    u = state.uplift
    if not u or (not u["open"] and not u["done"]):
        return None
    out: Counts = {}
    for key, (n, conv) in u["done"].items():
        out[_split_key(key)] = [n, conv, 0]
    for exp in u["open"]:
        k = _shared_key(exp[_TYPE], exp[_SEG], exp[_TIER], exp[_GROUP])
        entry = out.setdefault(k, [0, 0, 0])
        entry[2] += 1
    return out


class UpliftIndex(PartitionedIndex):
    """Sum of the customers' tallies (a StateIndex): kept per touched customer, so a scrape
    reads a small dict and never walks the table; rebuilt from the table on assignment."""

    __slots__ = ("_totals",)

    def __init__(self) -> None:
        super().__init__()
        self._totals: Counts = {}

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        old = self._of.get(subject)
        if old is None and (state is None or not state.uplift):
            return
        new = None if state is None else contribution(state)
        if old is not None:
            if new is not None and old[1] == new:
                if old[0] != partition:
                    self._of[subject] = (partition, new)
                return
            self._add(old[1], -1)
            del self._of[subject]
        if new is not None:
            self._add(new, 1)
            self._of[subject] = (partition, new)

    def _add(self, counts: Counts, sign: int) -> None:
        totals = self._totals
        for key, values in counts.items():
            entry = totals.setdefault(key, [0, 0, 0])
            for i, v in enumerate(values):
                entry[i] += sign * v
            if not any(entry):
                del totals[key]

    def totals(self) -> Counts:
        return {k: list(v) for k, v in self._totals.items()}

    def _clear_all(self) -> None:
        self._totals.clear()


# --- statistics -------------------------------------------------------------------------------
def rate(x: int, n: int) -> float | None:
    return x / n if n else None


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion x / n (n > 0)."""
    p = x / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval for p1 - p2 (None when either group is empty)."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d - sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def rows(counts: Mapping[Key, list[int]]) -> list[dict[str, Any]]:
    """The uplift table: one row per (type, segment, tier), treated vs control."""
    cells: dict[tuple[str, str, str], dict[str, int]] = {}
    for (type_, segment, tier, group), (n, conv, open_) in counts.items():
        cell = cells.setdefault((type_, segment, tier), dict.fromkeys(("tn", "tc", "cn", "cc", "open"), 0))
        prefix = "t" if group == "treated" else "c"
        cell[prefix + "n"] += n
        cell[prefix + "c"] += conv
        cell["open"] += open_
    out = []
    for (type_, segment, tier), c in sorted(cells.items()):
        t_rate, c_rate = rate(c["tc"], c["tn"]), rate(c["cc"], c["cn"])
        ci = newcombe(c["tc"], c["tn"], c["cc"], c["cn"])
        out.append(
            {
                "type": type_,
                "segment": segment,
                "tier": tier,
                "treated": c["tn"],
                "treated_converted": c["tc"],
                "control": c["cn"],
                "control_converted": c["cc"],
                "treated_rate": t_rate,
                "control_rate": c_rate,
                "uplift": None if t_rate is None or c_rate is None else t_rate - c_rate,
                "ci_low": None if ci is None else ci[0],
                "ci_high": None if ci is None else ci[1],
                "open": c["open"],
            }
        )
    return out


def counts_from_rows(doc_rows: Iterable[Mapping[str, Any]]) -> Counts:
    """Back from rows to counts (to add up the answers of several workers). The open
    exposures of a row are put on its treated side (rows carry only their sum)."""
    out: Counts = {}
    for r in doc_rows:
        base = (str(r["type"]), str(r["segment"]), str(r["tier"]))
        for group, n, conv, open_ in (
            ("treated", r["treated"], r["treated_converted"], r["open"]),
            ("control", r["control"], r["control_converted"], 0),
        ):
            entry = out.setdefault((*base, group), [0, 0, 0])
            entry[0] += int(n)
            entry[1] += int(conv)
            entry[2] += int(open_)
    return out
