"""One step of the customer state machine: ``f(state, event) -> Step(state, emits)``.

The caller (agents/processor.py) owns the state object; steps mutate it in place for speed
and return what to store plus the records to emit. All validation
happens before any mutation, so a step either applies completely or not at all.

Identity merge (anonymous visitor -> known customer), across partitions:
  1. ``identify`` touchpoint at customer C: emit ``link(anon=A, customer=C)`` keyed by A.
  2. ``link`` at A: A's touchpoint aggregates are emitted as ``merge(snapshot)`` keyed by C,
     and A becomes a redirect stub (``merged_into=C``).
  3. ``merge`` at C: folded in once (C remembers A in ``aliases``).
  4. later events for A reach the stub and are forwarded to C as ``event`` records.
Every hop is idempotent, so at-least-once delivery of the internal records is enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from schemas.events import CustomerUpdate, Purchase, Touchpoint, TouchType
from schemas.outputs import deterministic_id
from schemas.state import CustomerState
from schemas.timestamps import iso_utc
from streams import dedupe
from streams.dedupe import Seen
from streams.lifecycle import stage_of, stage_only
from streams.policy import Policy
from streams.rfm import apply_purchase

# A remembered touchpoint id carries its type in the low 4 bits, so merges can tell exactly
# which of a visitor's events the customer already counted.
TOUCH_TYPES = tuple(t.value for t in TouchType)
TOUCH_CODES = {t: i for i, t in enumerate(TOUCH_TYPES)}
POSITIVE_REVIEW_CODE = len(TOUCH_TYPES)
TOUCH_CODE_MASK = 0xF
assert POSITIVE_REVIEW_CODE <= TOUCH_CODE_MASK

LIFECYCLE = "lifecycle-changes"
IDENTITY = "identity"
DEAD_LETTERS = "dead-letters"


class Emit(NamedTuple):
    """A record to send: logical topic name, key, JSON-able value."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass(slots=True)
class Step:
    state: CustomerState | None
    outcome: str  # applied | duplicate | redirected | ignored_erased | merged | linked | ...
    emits: list[Emit] = field(default_factory=list)
    beyond_horizon: bool = False


def _new_state(subject: str, anonymous: bool) -> CustomerState:
    return CustomerState(subject, anonymous=anonymous)


def _touch_event_ms(state: CustomerState, ts_ms: int) -> None:
    if state.last_event_ms is None or ts_ms > state.last_event_ms:
        state.last_event_ms = ts_ms


def restage(
    state: CustomerState, policy: Policy, *, event_id: str, topic: str, cause_type: str, ts_ms: int
) -> Emit | None:
    """Recompute the stage; on change update ``state`` and return the lifecycle record."""
    stage = stage_only(state, policy)
    if stage == state.stage:
        return None
    _, rule = stage_of(state, policy)
    before = state.stage
    state.stage = stage
    state.stage_since_ms = ts_ms
    return lifecycle_change(
        state.subject,
        state.anonymous,
        before,
        stage,
        event_id=event_id,
        topic=topic,
        cause_type=cause_type,
        rule=rule,
        ts_ms=ts_ms,
    )


def lifecycle_change(
    subject: str,
    anonymous: bool,
    before: str,
    after: str,
    *,
    event_id: str,
    topic: str,
    cause_type: str,
    rule: str,
    ts_ms: int,
) -> Emit:
    """The ``lifecycle-changes`` record; its id is derived from the transition and its cause."""
    return Emit(
        LIFECYCLE,
        subject,
        {
            "change_id": deterministic_id("lifecycle", subject, before, after, event_id),
            "customer_id": subject,
            "anonymous": anonymous,
            "from_stage": before,
            "to_stage": after,
            "ts": iso_utc(ts_ms),
            "cause": {"event_id": event_id, "topic": topic, "type": cause_type, "rule": rule},
        },
    )


def _erased(state: CustomerState | None, ts_ms: int) -> bool:
    return state is not None and state.erased_ms is not None and ts_ms <= state.erased_ms


def on_purchase(state: CustomerState | None, ev: Purchase, policy: Policy) -> Step:
    if ev.currency != policy.accept_currency:
        raise ValueError(
            f"currency: {ev.currency} is not the configured currency {policy.accept_currency} "
            "(set PATRONAGE_CURRENCY)"
        )
    if _erased(state, ev.ts):
        return Step(state, "ignored_erased")
    if state is None:
        state = _new_state(ev.customer_id, anonymous=False)
    seen = apply_purchase(state, ev.event_id, ev.ts, ev.amount_cents, policy)
    if seen is Seen.DUPLICATE:
        return Step(state, "duplicate")
    _touch_event_ms(state, ev.ts)
    step = Step(state, "applied", beyond_horizon=seen is Seen.NEW_BEYOND_HORIZON)
    change = restage(
        state, policy, event_id=ev.event_id, topic="purchases", cause_type="purchase", ts_ms=ev.ts
    )
    if change is not None:
        step.emits.append(change)
    return step


def apply_touch(state: CustomerState, type_: str, ts_ms: int, rating: int | None, policy: Policy) -> None:
    """Fold one (already de-duplicated) touchpoint into the aggregates."""
    counts = state.touch_counts
    counts[type_] = counts.get(type_, 0) + 1
    if state.first_touch_ms is None or ts_ms < state.first_touch_ms:
        state.first_touch_ms = ts_ms
    if state.last_touch_ms is None or ts_ms > state.last_touch_ms:
        state.last_touch_ms = ts_ms
    if type_ == "review" and rating is not None and rating >= policy.positive_review_min_rating:
        state.positive_reviews += 1
    _touch_event_ms(state, ts_ms)


def on_touchpoint(state: CustomerState | None, ev: Touchpoint, policy: Policy) -> Step:
    if _erased(state, ev.ts):
        return Step(state, "ignored_erased")
    anonymous = ev.customer_id is None
    if anonymous and state is not None and state.merged_into is not None:
        # This anonymous id now belongs to a known customer: forward the event there.
        forwarded = ev.model_dump(mode="json", exclude_none=True)
        forwarded["customer_id"] = state.merged_into
        return Step(
            state,
            "redirected",
            [
                Emit(
                    IDENTITY, state.merged_into, {"kind": "event", "topic": "touchpoints", "event": forwarded}
                )
            ],
        )
    if state is None:
        state = _new_state(ev.subject, anonymous=anonymous)
    positive = ev.type is TouchType.review and (ev.rating or 0) >= policy.positive_review_min_rating
    code = POSITIVE_REVIEW_CODE if positive else TOUCH_CODES[ev.type.value]
    seen = dedupe.remember(
        state.touch_ids, (dedupe.id_hash(ev.event_id) & ~TOUCH_CODE_MASK) | code, ev.ts, policy.touch_id_cap
    )
    if seen is Seen.DUPLICATE:
        return Step(state, "duplicate")
    apply_touch(state, ev.type.value, ev.ts, ev.rating, policy)
    step = Step(state, "applied", beyond_horizon=seen is Seen.NEW_BEYOND_HORIZON)
    if ev.type is TouchType.identify:
        anon = ev.anonymous_alias
        if anon is not None and anon not in state.aliases:
            step.emits.append(
                Emit(
                    IDENTITY,
                    anon,
                    {
                        "kind": "link",
                        "anon": anon,
                        "customer": state.subject,
                        "event_id": ev.event_id,
                        "ts": ev.ts,
                    },
                )
            )
    change = restage(
        state, policy, event_id=ev.event_id, topic="touchpoints", cause_type=ev.type.value, ts_ms=ev.ts
    )
    if change is not None:
        step.emits.append(change)
    return step


def on_customer_update(state: CustomerState | None, ev: CustomerUpdate, policy: Policy) -> Step:
    if ev.erase:
        if state is not None and state.erased_ms is not None and state.erased_ms >= ev.ts:
            return Step(state, "duplicate")
        tomb = _new_state(ev.customer_id, anonymous=False)
        tomb.erased_ms = ev.ts
        step = Step(tomb, "erased")
        if state is not None and state.stage != "stranger":
            step.emits.append(
                lifecycle_change(
                    ev.customer_id,
                    False,
                    state.stage,
                    "stranger",
                    event_id=ev.event_id,
                    topic="customer-updates",
                    cause_type="erase",
                    rule="erasure requested",
                    ts_ms=ev.ts,
                )
            )
        return step
    if _erased(state, ev.ts):
        return Step(state, "ignored_erased")
    if state is None:
        state = _new_state(ev.customer_id, anonymous=False)
    version = (ev.ts, ev.event_id)
    changed = False
    for name, value in ev.changed_fields().items():
        current = state.facts.get(name)
        if current is None or (current[0], current[1]) < version:
            state.facts[name] = [ev.ts, ev.event_id, value]
            changed = True
    if not changed:
        return Step(state, "duplicate")
    _touch_event_ms(state, ev.ts)
    step = Step(state, "applied")
    change = restage(
        state,
        policy,
        event_id=ev.event_id,
        topic="customer-updates",
        cause_type="customer-update",
        ts_ms=ev.ts,
    )
    if change is not None:
        step.emits.append(change)
    return step


def on_link(state: CustomerState | None, anon: str, customer: str, event_id: str, ts_ms: int) -> Step:
    """At the anonymous id: hand its aggregates to ``customer`` and become a redirect stub."""
    if state is not None and state.merged_into is not None:
        if state.merged_into == customer:
            return Step(state, "duplicate")
        raise ValueError(
            f"anonymous id {anon!r} is already merged into {state.merged_into!r}; "
            f"identify {event_id!r} asks to merge it into {customer!r}"
        )
    if state is not None and not state.anonymous:
        raise ValueError(
            f"{anon!r} is a known customer id, not an anonymous id; refusing to merge it into {customer!r}"
        )
    snapshot = state.to_dict() if state is not None else None
    stub = _new_state(anon, anonymous=True)
    stub.merged_into = customer
    stub.last_event_ms = state.last_event_ms if state is not None else ts_ms
    stub.stage = state.stage if state is not None else "stranger"
    stub.stage_since_ms = state.stage_since_ms if state is not None else None
    return Step(
        stub,
        "linked",
        [
            Emit(
                IDENTITY,
                customer,
                {
                    "kind": "merge",
                    "anon": anon,
                    "customer": customer,
                    "event_id": event_id,
                    "ts": ts_ms,
                    "snapshot": snapshot,
                },
            )
        ],
    )


def on_merge(
    state: CustomerState | None,
    customer: str,
    anon: str,
    snapshot: dict[str, Any] | None,
    event_id: str,
    ts_ms: int,
    policy: Policy,
) -> Step:
    """At the customer: fold the anonymous visitor's touchpoints in, exactly once."""
    if state is None:
        state = _new_state(customer, anonymous=False)
    if anon in state.aliases:
        return Step(state, "duplicate")
    if len(state.aliases) >= policy.max_aliases:
        raise ValueError(f"customer {customer!r} already has {policy.max_aliases} merged anonymous ids")
    if snapshot is not None:
        other = CustomerState.from_dict(snapshot)
        # Events the customer already applied under its own id are in both memories:
        # subtract them (their type is in the low bits of the remembered id).
        known = set(state.touch_ids.ids)
        counts = dict(other.touch_counts)
        positive = other.positive_reviews
        for h in other.touch_ids.ids:
            if h in known:
                code = h & TOUCH_CODE_MASK
                if code == POSITIVE_REVIEW_CODE:
                    positive -= 1
                    code = TOUCH_CODES["review"]
                type_ = TOUCH_TYPES[code]
                counts[type_] = counts.get(type_, 0) - 1
        for type_, n in counts.items():
            if n > 0:
                state.touch_counts[type_] = state.touch_counts.get(type_, 0) + n
        state.positive_reviews += max(0, positive)
        if other.first_touch_ms is not None and (
            state.first_touch_ms is None or other.first_touch_ms < state.first_touch_ms
        ):
            state.first_touch_ms = other.first_touch_ms
        if other.last_touch_ms is not None and (
            state.last_touch_ms is None or other.last_touch_ms > state.last_touch_ms
        ):
            state.last_touch_ms = other.last_touch_ms
        dedupe.union(state.touch_ids, other.touch_ids, policy.touch_id_cap)
        if other.last_event_ms is not None:
            _touch_event_ms(state, other.last_event_ms)
    state.aliases.append(anon)
    step = Step(state, "merged")
    change = restage(state, policy, event_id=event_id, topic="identity", cause_type="merge", ts_ms=ts_ms)
    if change is not None:
        step.emits.append(change)
    return step
