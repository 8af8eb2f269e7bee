"""What the Redis projection holds for one customer (pure: the agent in agents/projection.py
writes it). The key layout is a contract other services read; it carries a version, so a
change of layout is a new prefix next to the old one, never a silent change:

``<prefix>:v1:profile:<customer id>``   hash, the customer's profile (fields below)
``<prefix>:v1:audience:<category>``     sorted set, customer id -> interest score (0..1)
``<prefix>:v1:at_risk:<store>``         sorted set, customers at risk now (as on the staff page:
                                        an open churn alert, or valued and in a risk stage),
                                        customer id -> epoch ms since when (newest first: ZREVRANGE)
``<prefix>:v1:synced:<partition>``      string, set when a partition was fully projected
                                        (expires after the refresh interval: then projected again)

Profile hash fields: ``doc`` (the whole profile JSON, exactly what ``GET /profile/<id>``
returns as of ``updated_at``) and, for one-field reads, ``stage``, ``base_stage``, ``tier``,
``segment``, ``rfm``, ``recency_days``, ``frequency``, ``monetary``, ``risk``, ``p_alive``,
``valued``, ``home_store``, ``interests`` (JSON list of ``[category, score]``),
``last_trigger:<type>`` (``<trigger_id> <ISO time>``), ``updated_at`` (ISO) and
``updated_at_ms``. Fields starting with ``_`` are the projection's own bookkeeping.
Empty string means "none".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas.state import CustomerState
from schemas.timestamps import iso_utc
from streams import churn
from streams import interest as interests
from streams.core import Context
from streams.profile import PROFILE_INTERESTS, build_profile

LAYOUT_VERSION = "v1"
NO_STORE = "-"  # the at-risk set of valued customers with no store (online only)


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Key names under ``<prefix>:v1:``; ``prefix`` is PATRONAGE_REDIS_PREFIX."""

    prefix: str = "patronage"

    @property
    def base(self) -> str:
        return f"{self.prefix}:{LAYOUT_VERSION}:"

    def profile(self, subject: str) -> str:
        return f"{self.base}profile:{subject}"

    def audience(self, category: str) -> str:
        return f"{self.base}audience:{category}"

    def at_risk(self, store: str) -> str:
        return f"{self.base}at_risk:{store}"

    def synced(self, partition: int) -> str:
        return f"{self.base}synced:{partition}"


@dataclass(frozen=True, slots=True)
class Projection:
    """One customer's projection; ``fields is None``: the customer is gone (erased, merged
    into another id, unknown) and everything of theirs is removed."""

    subject: str
    fields: dict[str, str] | None
    audiences: dict[str, float]
    at_risk: tuple[str, int] | None  # (store, since epoch ms)


def home_store(state: CustomerState) -> str | None:
    """The store the customer shops at most (ties: the smallest id), None if none."""
    if not state.stores:
        return None
    return min(state.stores.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def gone(subject: str) -> Projection:
    return Projection(subject, None, {}, None)


def project(
    subject: str, state: CustomerState | None, ctx: Context, clock: str, max_audiences: int
) -> Projection:
    """The projection of ``state`` as of ``ctx.now_ms``. ``max_audiences``: how many of the
    customer's interest categories (best first) put them into an audience set."""
    if state is None or state.merged_into is not None or state.erased_ms is not None:
        return gone(subject)
    # one ranking for the profile's interests and the audiences (the first n of a ranking are
    # the top n)
    ranked = interests.top(state, ctx.now_ms, ctx.policy.interest, max(max_audiences, PROFILE_INTERESTS))
    doc = build_profile(state, ctx, clock, ranked)
    rows = ranked[:max_audiences]
    audiences = {row["category"]: round(float(row["score"]), 6) for row in rows}
    view = doc["churn"]
    rfm = doc["rfm"]
    store = home_store(state)
    since = churn.at_risk_since(state, ctx)  # the staff page's rule (streams/page.py)
    at_risk = None if since is None else (store or NO_STORE, since)
    fields = {
        "doc": orjson.dumps(doc).decode(),
        "stage": _s(state.stage),
        "base_stage": _s(doc["base_stage"]),
        "tier": _s(None if view is None else view["tier"]),
        "segment": _s(None if rfm is None else rfm["segment"]),
        "rfm": _s(None if rfm is None else rfm["code"]),
        "recency_days": _s(doc["recency_days"]),
        "frequency": _s(state.frequency),
        "monetary": _s(doc["monetary"]),
        "risk": _s(state.risk),
        "p_alive": _s(None if view is None else view.get("p_alive")),
        "valued": _s(None if view is None else view["valued"]),
        "home_store": _s(store),
        "interests": orjson.dumps([[c, s] for c, s in audiences.items()]).decode(),
        "updated_at": _s(iso_utc(ctx.now_ms)),
        "updated_at_ms": _s(ctx.now_ms),
    }
    for type_, (trigger_id, ts_ms) in sorted(state.last_triggers.items()):
        fields[f"last_trigger:{type_}"] = f"{trigger_id} {iso_utc(ts_ms)}"
    return Projection(subject, fields, audiences, at_risk)


def clock_moved_on(
    projected_ms: dict[int, int],
    seen_ms: dict[int, int],
    now_ms: dict[int, int],
    step_ms: int,
) -> list[int]:
    """Partitions to project whole because their clock moved on (pure; updates the two maps).

    ``projected_ms``: the clock a partition's profiles were last all written with;
    ``seen_ms``: the clock at the previous check; ``now_ms``: the clock now. A partition is
    due once its clock is more than ``step_ms`` away from ``projected_ms`` (either way: before
    its first event an event clock reads the wall clock, and a replay then sets it years back)
    *and* moved less than ``step_ms`` since the previous check - so a replay racing through years of event time
    is not re-projected at every check, only once it has caught up. The caller records the
    clock of the whole projection it then makes in ``projected_ms``."""
    due: list[int] = []
    for partition, now in now_ms.items():
        previous = seen_ms.get(partition)
        seen_ms[partition] = now
        projected = projected_ms.setdefault(partition, now)
        if step_ms <= 0 or previous is None:
            continue
        if abs(now - projected) > step_ms and abs(now - previous) <= step_ms:
            due.append(partition)
    return sorted(due)
