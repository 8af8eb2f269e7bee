"""The identity protocol, in one place: anonymous visitor -> known customer, across partitions.

Records travel on the internal ``<app>-identity`` topic (co-partitioned with the inputs,
keyed by the subject that must handle them); their shape is :class:`IdentityRecord`.

  1. ``identify`` touchpoint at customer C: emit ``link(anon=A, customer=C)`` keyed by A.
  2. ``link`` at A: A's touchpoint aggregates are emitted as ``merge(snapshot)`` keyed by C,
     and A becomes a redirect stub (``merged_into=C``).
  3. ``merge`` at C: folded in once (C remembers A in ``aliases``).
  4. later events for A reach the stub and are forwarded to C as ``event`` records; so are
     input events a producer keyed to the wrong partition (re-routing).
Every hop is idempotent, so at-least-once delivery of the internal records is enough.

Every hop carries its ``origin``: the input record (topic, partition, offset) behind it,
kept from hop to hop (the pipeline stamps it), so that a dead letter of a hop names the
record the user sent, not the internal topic's position.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from schemas.errors import Reason, Rejected, Stage
from schemas.events import describe_validation_error
from schemas.outputs import IdentityRecord, RecordOrigin
from schemas.state import CustomerState
from schemas.topics import Topic
from streams import dedupe, storefunnel
from streams.core import Context, Emit, Outcome, Step
from streams.dedupe import POSITIVE_REVIEW_CODE, TOUCH_CODE_MASK, TOUCH_CODES, TOUCH_TYPES
from streams.lifecycle import note_event_time, restage


def link_record(anon: str, customer: str, event_id: str, ts_ms: int) -> Emit:
    return Emit(
        Topic.IDENTITY,
        anon,
        {"kind": "link", "anon": anon, "customer": customer, "event_id": event_id, "ts": ts_ms},
    )


def merge_record(
    anon: str, customer: str, event_id: str, ts_ms: int, snapshot: dict[str, Any] | None
) -> Emit:
    return Emit(
        Topic.IDENTITY,
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


def redirect_record(subject: str, topic: Topic, event: dict[str, Any]) -> Emit:
    """An input event carried to the partition that owns ``subject``."""
    return Emit(Topic.IDENTITY, subject, {"kind": "event", "topic": topic.value, "event": event})


def origin_of(hop: bytes | None) -> dict[str, Any] | None:
    """The ``origin`` an identity record carries (None: not an identity record, or one
    written before hops carried it)."""
    try:
        obj = orjson.loads(hop) if hop is not None else None
    except orjson.JSONDecodeError:
        return None
    origin = obj.get("origin") if isinstance(obj, dict) else None
    if not isinstance(origin, dict):
        return None
    try:
        return RecordOrigin.model_validate(origin).model_dump()
    except ValidationError:
        return None


def parse(obj: dict[str, Any]) -> IdentityRecord:
    """An identity record, or Rejected with the field named."""
    try:
        rec = IdentityRecord.model_validate(obj)
        if rec.kind == "event":
            rec.require("topic", "event")
        else:
            rec.require("anon", "customer", "event_id", "ts")
    except ValidationError as exc:
        reason, detail = describe_validation_error(exc)
        raise Rejected(Stage.VALIDATE, reason, f"identity record: {detail}") from None
    except ValueError as exc:
        raise Rejected(Stage.VALIDATE, Reason.MISSING_FIELD, str(exc)) from None
    return rec


def on_link(state: CustomerState | None, anon: str, customer: str, event_id: str, ts_ms: int) -> Step:
    """At the anonymous id: hand its aggregates to ``customer`` and become a redirect stub."""
    if state is not None and state.merged_into is not None:
        if state.merged_into == customer:
            return Step(state, Outcome.DUPLICATE)
        raise Rejected(
            Stage.PROCESS,
            Reason.IDENTITY_CONFLICT,
            f"anonymous id {anon!r} is already merged into {state.merged_into!r}; "
            f"identify {event_id!r} asks to merge it into {customer!r}",
        )
    if state is not None and not state.anonymous:
        raise Rejected(
            Stage.PROCESS,
            Reason.IDENTITY_CONFLICT,
            f"{anon!r} is a known customer id, not an anonymous id; refusing to merge it into {customer!r}",
        )
    snapshot = state.to_dict() if state is not None else None
    stub = CustomerState(anon, anonymous=True)
    stub.merged_into = customer
    stub.last_event_ms = state.last_event_ms if state is not None else ts_ms
    stub.stage = state.stage if state is not None else "stranger"
    stub.stage_since_ms = state.stage_since_ms if state is not None else None
    return Step(stub, Outcome.LINKED, [merge_record(anon, customer, event_id, ts_ms, snapshot)])


def on_merge(
    state: CustomerState | None,
    customer: str,
    anon: str,
    snapshot: dict[str, Any] | None,
    event_id: str,
    ts_ms: int,
    ctx: Context,
) -> Step:
    """At the customer: fold the anonymous visitor's touchpoints in, exactly once."""
    policy = ctx.policy
    if state is None:
        state = CustomerState(customer, anonymous=False)
    if anon in state.aliases:
        return Step(state, Outcome.DUPLICATE)
    if len(state.aliases) >= policy.max_aliases:
        raise Rejected(
            Stage.PROCESS,
            Reason.TOO_MANY_ALIASES,
            f"customer {customer!r} already has {policy.max_aliases} merged anonymous ids",
        )
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
        storefunnel.merge(state, other, ctx.now_ms, policy.funnel)
        if other.last_event_ms is not None:
            note_event_time(state, other.last_event_ms)
    state.aliases.append(anon)
    step = Step(state, Outcome.MERGED)
    change = restage(state, policy, event_id=event_id, topic="identity", cause_type="merge", ts_ms=ts_ms)
    if change is not None:
        step.emits.append(change)
    return step
