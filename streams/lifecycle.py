"""Lifecycle stage: one pure rule set, a function of the aggregated customer state.

    stranger  -> nothing known
    visitor   -> at least one touchpoint
    prospect  -> showed intent: an inquiry, cart add or signup touchpoint
    customer  -> at least one purchase
    member    -> repeat buyer (>= policy.member_min_purchases purchases) or loyalty member
    advocate  -> a member who referred someone or left a positive review (rating >= 4)

Because the stage is derived from order-independent aggregates, replaying events in any
order ends in the same stage. (at-risk / lapsed / lost come with churn detection.)
"""

from __future__ import annotations

from schemas.state import CustomerState
from streams.policy import Policy

STAGES = ("stranger", "visitor", "prospect", "customer", "member", "advocate")


def stage_only(state: CustomerState, policy: Policy) -> str:
    """The stage alone (hot path: called after every event; the rule text only on change)."""
    touches = state.touch_counts
    if state.frequency >= policy.member_min_purchases or (
        "loyalty_member" in state.facts and state.facts["loyalty_member"][2]
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
