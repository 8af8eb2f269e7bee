"""Lifecycle stage: one pure rule set, a function of the aggregated customer state.

    stranger  -> nothing known
    visitor   -> at least one touchpoint
    prospect  -> showed intent: an inquiry, cart add or signup touchpoint
    customer  -> at least one purchase
    member    -> repeat buyer (>= policy.member_min_purchases purchases) or loyalty member
    advocate  -> a member who referred someone or left a positive review (rating >= 4)

Because the stage is derived from order-independent aggregates, replaying events in any
order ends in the same stage. On top of it, a buyer who goes silent for far longer than
their usual rhythm is ``at_risk``, then ``lapsed``, then ``lost`` (:mod:`streams.churn`,
on the configured clock); a purchase brings them back to their base stage.
"""

from __future__ import annotations

from schemas.state import CustomerState
from schemas.topics import Topic
from streams.core import Emit, lifecycle_change
from streams.policy import Policy

BASE_STAGES = ("stranger", "visitor", "prospect", "customer", "member", "advocate")
RISK_STAGES = ("at_risk", "lapsed", "lost")
STAGES = BASE_STAGES + RISK_STAGES


def effective_stage(state: CustomerState, policy: Policy) -> str:
    """The risk stage while there is one, else the base stage."""
    return state.risk or stage_only(state, policy)


def note_event_time(state: CustomerState, ts_ms: int) -> None:
    if state.last_event_ms is None or ts_ms > state.last_event_ms:
        state.last_event_ms = ts_ms


def restage(
    state: CustomerState,
    policy: Policy,
    *,
    event_id: str,
    topic: Topic | str,
    cause_type: str,
    ts_ms: int,
    rule: str | None = None,
) -> Emit | None:
    """Recompute the stage; on change update ``state`` and return the lifecycle record."""
    stage = effective_stage(state, policy)
    if stage == state.stage:
        return None
    if rule is None:
        rule = stage_of(state, policy)[1]
    before = state.stage
    state.stage = stage
    state.stage_since_ms = ts_ms
    return lifecycle_change(
        state.subject,
        state.anonymous,
        before,
        stage,
        event_id=event_id,
        topic=str(topic),
        cause_type=cause_type,
        rule=rule,
        ts_ms=ts_ms,
    )


def stage_only(state: CustomerState, policy: Policy) -> str:
    """The stage alone (hot path: called after every event; the rule text only on change)."""
    touches = state.touch_counts
    if state.frequency >= policy.member_min_purchases or (
        "loyalty_member" in state.facts and state.facts["loyalty_member"].value
    ):
        if touches.get("referral", 0) > 0 or state.positive_reviews > 0:
            return "advocate"
        return "member"
    if state.frequency >= 1:
        return "customer"
    if touches:
        for t in policy.intent_touch_types:
            if touches.get(t, 0) > 0:
                return "prospect"
        return "visitor"
    return "stranger"


def stage_of(state: CustomerState, policy: Policy) -> tuple[str, str]:
    """Return ``(stage, rule)`` where ``rule`` says in words why the customer is there."""
    touches = state.touch_counts
    loyalty = bool(state.fact("loyalty_member", False))
    member_rule = None
    if state.frequency >= policy.member_min_purchases:
        member_rule = f"repeat buyer ({state.frequency} purchases)"
    elif loyalty:
        member_rule = "joined the loyalty programme"
    if member_rule is not None:
        if touches.get("referral", 0) > 0:
            return "advocate", "member who referred someone"
        if state.positive_reviews > 0:
            return (
                "advocate",
                f"member who left a positive review (rating >= {policy.positive_review_min_rating})",
            )
        return "member", member_rule
    if state.frequency >= 1:
        return "customer", "made a first purchase"
    if any(touches.get(t, 0) > 0 for t in policy.intent_touch_types):
        return "prospect", "showed purchase intent (" + ", ".join(
            sorted(t for t in policy.intent_touch_types if touches.get(t, 0) > 0)
        ) + ")"
    if touches:
        return "visitor", "had a touchpoint"
    return "stranger", "nothing known yet"
