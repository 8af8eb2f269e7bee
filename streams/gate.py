"""The notification gate: one pure module every customer-facing trigger goes through.

Per customer, with the customer's own state (no I/O; the configured clock's time passed in):

1. **seen** - an offer (a stock arrival for this customer) already handled is a no-op, so a
   re-delivered arrival after a crash notifies nobody twice;
2. **just bought** - an order with the category in the last ``just_bought_days``: suppressed;
3. **cooldown** - the category was in a notification within ``cooldown_days``: suppressed;
4. **consent** - the first channel in ``channels`` the customer consented to (a channel with
   no recorded consent counts as ``consent_default``); none: suppressed;
5. **coalescing** - the first offer opens a pending notification due ``coalesce_s`` later;
   offers until it goes out join it (at most ``max_items`` items listed);
6. at release (the clock reaching the due time): consent again, then **quiet hours** in the
   customer's time zone - inside them the notification is deferred to their end through the
   clock (never dropped) - then the **frequency cap** across all customer-facing
   notifications (``cap_per_day`` per rolling 24 h, ``cap_per_week`` per rolling 7 days;
   staff alerts such as churn risk never pass here and never count): suppressed; then the
   **holdout** (a deterministic hash of customer, experiment and type under the type's
   share): recorded with ``deliver: false``, not delivered.

Every decision is counted by reason (``Decision``) and remembered per customer (the last
``log_size``) so "why did customer X not hear about Y?" has an answer.

The gate's memory is a plain JSON-able dict in ``CustomerState.notify``::

    {"seen": [id hash, ...], "sent": [ms, ...], "cool": {category: ms},
     "pend": {type: pending notification}, "log": [[ms, type, ref, category, sku, reason]]}
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from schemas.outputs import deterministic_id
from schemas.state import CustomerState
from schemas.timestamps import DAY_MS, iso_utc
from schemas.topics import Topic
from streams import interest as interests
from streams.core import Emit, in_control
from streams.dedupe import id_hash
from streams.policy import GatePolicy, Policy

NEW_STOCK = "new_stock_for_interest"
_UTC = ZoneInfo("UTC")


class Decision(StrEnum):
    """What the gate did with an offer or a notification (a bounded metric label)."""

    SENT = "sent"
    HELD_OUT = "held_out"
    PENDING = "pending"  # opened a notification (coalescing window)
    COALESCED = "coalesced"  # joined an open notification
    DEFERRED_QUIET_HOURS = "deferred_quiet_hours"
    NO_CONSENT = "no_consent"
    COOLDOWN = "cooldown"
    JUST_BOUGHT = "just_bought"
    FREQUENCY_CAP = "frequency_cap"
    DUPLICATE = "duplicate"


SUPPRESSIONS = frozenset(
    {Decision.NO_CONSENT, Decision.COOLDOWN, Decision.JUST_BOUGHT, Decision.FREQUENCY_CAP}
)


class Offer(NamedTuple):
    """Something worth telling one customer (one stock arrival matched to them)."""

    type: str  # trigger type
    ref: str  # the arrival's event id
    ts_ms: int  # when it happened (event time of the arrival)
    category: str
    item: dict[str, Any]  # {sku, category, qty, store_id?}
    reason: str  # interest | affinity
    interest: dict[str, Any]  # the interest behind it (category, score, shares, occasions)


class Gated(NamedTuple):
    emits: list[Emit]
    decisions: list[tuple[str, str]]  # (type, Decision)
    changed: bool


def _memory(state: CustomerState) -> dict[str, Any]:
    n = state.notify
    if n is None:
        n = state.notify = {"seen": [], "sent": [], "cool": {}, "pend": {}, "log": []}
    return n


def _log(n: dict[str, Any], policy: GatePolicy, row: list[Any]) -> None:
    log = n["log"]
    log.append(row)
    if len(log) > policy.log_size:
        del log[: len(log) - policy.log_size]


# --- channel, quiet hours ---------------------------------------------------------------------
def channel(state: CustomerState, policy: GatePolicy) -> str | None:
    """The first channel in the preference order the customer consented to."""
    consent = state.fact("consent") or {}
    for ch in policy.channels:
        given = consent.get(ch)
        if given is True or (given is None and policy.consent_default):
            return ch
    return None


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except Exception:  # unknown or malformed zone name: the default zone is used
        return None


def _minutes(text: str) -> int:
    return int(text[:2]) * 60 + int(text[3:5])


def quiet_window(state: CustomerState, policy: GatePolicy) -> tuple[ZoneInfo, int, int]:
    """(zone, start minute, end minute) of the customer's quiet hours."""
    own = state.fact("quiet_hours")
    if own is None and policy.quiet_start_min == policy.quiet_end_min:
        return _UTC, 0, 0  # no quiet hours at all: the zone does not matter
    zone = _zone(str(state.fact("timezone") or policy.default_timezone)) or _zone(policy.default_timezone)
    zone = zone or _UTC
    if isinstance(own, dict) and "start" in own and "end" in own:
        return zone, _minutes(own["start"]), _minutes(own["end"])
    return zone, policy.quiet_start_min, policy.quiet_end_min


def quiet_until(ts_ms: int, zone: ZoneInfo, start: int, end: int) -> int | None:
    """The end of the quiet period ``ts_ms`` falls in (epoch ms), or None when not quiet."""
    if start == end:
        return None
    local = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    quiet = start <= minute < end if start < end else (minute >= start or minute < end)
    if not quiet:
        return None
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    until = datetime.combine(day, dtime(end // 60, end % 60), zone)
    return max(ts_ms + 1, int(until.timestamp() * 1000))


# --- the gate ---------------------------------------------------------------------------------
def offer(state: CustomerState, o: Offer, policy: Policy) -> Gated:
    """Offer ``o`` to the customer: suppressed, pending (coalescing) or - with no coalescing
    window - released at once."""
    gate = policy.gate
    n = _memory(state)
    h = id_hash(f"{o.type}\x1f{o.ref}")
    seen: list[int] = n["seen"]
    if h in seen:
        return Gated([], [(o.type, Decision.DUPLICATE)], False)
    seen.append(h)
    if len(seen) > gate.seen_ids:
        del seen[: len(seen) - gate.seen_ids]
    reason = _suppressed(state, o, n, policy)
    if reason is not None:
        _log(n, gate, [o.ts_ms, o.type, o.ref, o.category, o.item.get("sku"), reason.value])
        return Gated([], [(o.type, reason)], True)
    pend: dict[str, Any] = n["pend"]
    pending = pend.get(o.type)
    if pending is not None:
        items = pending["items"]
        if len(items) < gate.max_items and all(it.get("sku") != o.item.get("sku") for it in items):
            items.append(o.item)
            pending.setdefault("refs", [pending["id"]]).append(o.ref)
        pending["n"] += 1
        if o.interest.get("score", 0) > pending["int"].get("score", 0):
            pending["int"] = o.interest
        _log(n, gate, [o.ts_ms, o.type, o.ref, o.category, o.item.get("sku"), Decision.COALESCED.value])
        return Gated([], [(o.type, Decision.COALESCED)], True)
    pend[o.type] = {
        "id": o.ref,
        "open": o.ts_ms,
        "due": o.ts_ms + int(gate.coalesce_s * 1000),
        "why": o.reason,
        "items": [o.item],
        "int": o.interest,
        "n": 1,
    }
    _log(n, gate, [o.ts_ms, o.type, o.ref, o.category, o.item.get("sku"), Decision.PENDING.value])
    decisions: list[tuple[str, str]] = [(o.type, Decision.PENDING)]
    emits: list[Emit] = []
    if gate.coalesce_s <= 0:
        released = release(state, o.ts_ms, policy)
        emits, decisions = released.emits, decisions + released.decisions
    return Gated(emits, decisions, True)


def _suppressed(state: CustomerState, o: Offer, n: dict[str, Any], policy: Policy) -> Decision | None:
    gate = policy.gate
    if gate.just_bought_days > 0 and interests.bought_within(
        state, o.category, o.ts_ms - int(gate.just_bought_days * DAY_MS), o.ts_ms
    ):
        return Decision.JUST_BOUGHT
    cooled = n["cool"].get(o.category)
    if cooled is not None and o.ts_ms - cooled < gate.cooldown_days * DAY_MS:
        return Decision.COOLDOWN
    if channel(state, gate) is None:
        return Decision.NO_CONSENT
    return None


def next_due(state: CustomerState) -> int | None:
    """When the next pending notification is due (for the deadline index)."""
    n = state.notify
    if not n or not n["pend"]:
        return None
    return min(p["due"] for p in n["pend"].values())


def release(state: CustomerState, now_ms: int, policy: Policy) -> Gated:
    """Send (or defer, or suppress) every pending notification due by ``now_ms``. A
    notification is stamped with its due time, whenever the clock gets there."""
    n = state.notify
    if not n or not n["pend"]:
        return Gated([], [], False)
    gate = policy.gate
    emits: list[Emit] = []
    decisions: list[tuple[str, str]] = []
    for type_, pending in list(n["pend"].items()):
        due = pending["due"]
        if due > now_ms:
            continue
        first = pending["items"][0]
        ch = channel(state, gate)
        if ch is None:
            _finish(n, gate, type_, pending, due, Decision.NO_CONSENT, decisions)
            continue
        zone, start, end = quiet_window(state, gate)
        later = None if start == end else quiet_until(due, zone, start, end)
        if later is not None:
            pending["due"] = later
            _log(
                n,
                gate,
                [due, type_, pending["id"], first["category"], first.get("sku"), "deferred_quiet_hours"],
            )
            decisions.append((type_, Decision.DEFERRED_QUIET_HOURS))
            continue
        sent: list[int] = n["sent"]
        day = sum(1 for t in sent if due - DAY_MS < t <= due)
        week = sum(1 for t in sent if due - 7 * DAY_MS < t <= due)
        if day >= gate.cap_per_day or week >= gate.cap_per_week:
            _finish(n, gate, type_, pending, due, Decision.FREQUENCY_CAP, decisions)
            continue
        held = held_out(state.subject, type_, gate)
        emits.append(_trigger(state, type_, pending, due, ch, held, policy))
        sent.append(due)
        sent.sort()
        del sent[: max(0, len(sent) - max(gate.cap_per_week, gate.cap_per_day, 1))]
        for it in pending["items"]:
            n["cool"][it["category"]] = max(due, n["cool"].get(it["category"], due))
        _finish(n, gate, type_, pending, due, Decision.HELD_OUT if held else Decision.SENT, decisions)
    return Gated(emits, decisions, True)


def _finish(
    n: dict[str, Any],
    gate: GatePolicy,
    type_: str,
    pending: dict[str, Any],
    at_ms: int,
    decision: Decision,
    decisions: list[tuple[str, str]],
) -> None:
    del n["pend"][type_]
    refs = pending.get("refs") or [pending["id"]] * len(pending["items"])
    for ref, it in zip(refs, pending["items"], strict=False):
        _log(n, gate, [at_ms, type_, ref, it["category"], it.get("sku"), decision.value])
    decisions.append((type_, decision))


def held_out(subject: str, type_: str, gate: GatePolicy) -> bool:
    """Deterministic holdout draw: the same customer, experiment and type, the same answer."""
    return in_control(gate.holdout_share(type_), gate.experiment, type_, subject)


def recipient(state: CustomerState, type_: str, gate: GatePolicy) -> tuple[str, str]:
    """(kind, id): the customer, or the payer when this type goes to the payer and one is known
    (``payer_id`` from customer-updates, else the newest ``payer_id`` of their purchases)."""
    if type_ in gate.to_payer:
        payer = state.fact("payer_id") or state.fact("paid_by")
        if payer and payer != state.subject:
            return "payer", str(payer)
    return "customer", state.subject


def _trigger(
    state: CustomerState,
    type_: str,
    pending: dict[str, Any],
    due_ms: int,
    ch: str,
    held: bool,
    policy: Policy,
) -> Emit:
    kind, who = recipient(state, type_, policy.gate)
    trigger_id = deterministic_id("trigger", type_, state.subject, pending["id"])
    record: dict[str, Any] = {
        "trigger_id": trigger_id,
        "type": type_,
        "customer_id": state.subject,
        "recipient_id": who,
        "recipient_kind": kind,
        "ts": iso_utc(due_ms),
        "reason": pending["why"],
        "channel": ch,
        "deliver": not held,
        "holdout": held,
        "items": pending["items"],
        "interest": pending["int"],
        "details": {
            "arrivals": pending["n"],
            "first_arrival_at": iso_utc(pending["open"]),
            "first_arrival_id": pending["id"],
        },
    }
    if kind == "payer":
        record["user_id"] = state.subject
    if held:
        record["details"]["experiment"] = policy.gate.experiment
    state.outbox.append(record)
    state.last_triggers[type_] = [trigger_id, due_ms]
    return Emit(Topic.TRIGGERS, state.subject, record)


def decisions_for(state: CustomerState, category: str | None = None) -> list[dict[str, Any]]:
    """The remembered gate decisions, newest first (optionally for one category)."""
    n = state.notify
    if not n:
        return []
    rows = [r for r in n["log"] if category is None or r[3] == category]
    return [
        {"at": iso_utc(r[0]), "type": r[1], "arrival": r[2], "category": r[3], "sku": r[4], "decision": r[5]}
        for r in reversed(rows)
    ]


def pending_view(state: CustomerState) -> list[dict[str, Any]]:
    n = state.notify
    if not n:
        return []
    return [
        {"type": t, "due": iso_utc(p["due"]), "items": p["items"], "reason": p["why"]}
        for t, p in n["pend"].items()
    ]
