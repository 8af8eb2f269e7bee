"""One step of the customer state machine: ``f(state, event, ctx) -> Step``.

The caller (the pipeline) owns the state object; steps mutate it in place for speed and
return what to store plus the records to emit. All validation happens before any
mutation, so a step either applies completely or not at all. The identity protocol
(anonymous visitor -> known customer) lives in :mod:`streams.identity`.
"""

from __future__ import annotations

from schemas.errors import Reason, Rejected, Stage
from schemas.events import CustomerUpdate, PurchaseLike, TouchpointLike, TouchType
from schemas.state import CustomerState, Fact
from schemas.topics import Topic
from streams import churn, dedupe, storefunnel, uplift
from streams import interest as interests
from streams.core import Context, Outcome, Step, lifecycle_change, tombstone
from streams.dedupe import POSITIVE_REVIEW_CODE, TOUCH_CODE_MASK, TOUCH_CODES, Seen
from streams.identity import link_record, redirect_record
from streams.lifecycle import note_event_time, restage
from streams.policy import Policy
from streams.rfm import apply_purchase


def _unjudged(seen: Seen, kind: str, ts_ms: int, horizon: int | None) -> Rejected:
    if seen is Seen.CONFLICT:
        return Rejected(
            Stage.PROCESS,
            Reason.DUPLICATE_CONFLICT,
            f"event_id: this {kind} id was applied before with different content (not applied again)",
        )
    return Rejected(
        Stage.PROCESS,
        Reason.BEYOND_DEDUPE_HORIZON,
        f"ts: {kind} at {ts_ms} is at or before the customer's id-memory horizon {horizon}; it may "
        "have been applied already (raise PATRONAGE_*_ID_CAP or set PATRONAGE_DEDUPE_BEYOND_HORIZON=apply)",
    )


def _erased(state: CustomerState | None, ts_ms: int) -> bool:
    return state is not None and state.erased_ms is not None and ts_ms <= state.erased_ms


def on_purchase(state: CustomerState | None, ev: PurchaseLike, ctx: Context) -> Step:
    policy = ctx.policy
    if ev.currency != policy.accept_currency:
        raise Rejected(
            Stage.VALIDATE,
            Reason.CURRENCY_MISMATCH,
            f"currency: {ev.currency} is not the configured currency {policy.accept_currency} "
            "(set PATRONAGE_CURRENCY)",
        )
    if _erased(state, ev.ts):
        return Step(state, Outcome.IGNORED_ERASED)
    if state is None:
        state = CustomerState(ev.customer_id, anonymous=False)
    previous_last = state.last_purchase_ms
    seen = apply_purchase(state, ev.event_id, ev.ts, ev.amount_cents, policy, dedupe.purchase_digest(ev))
    if seen is Seen.DUPLICATE:
        return Step(state, Outcome.DUPLICATE)
    if seen is Seen.CONFLICT or (seen is Seen.BEYOND_HORIZON and policy.beyond_horizon == "dead_letter"):
        raise _unjudged(seen, "purchase", ev.ts, state.purchase_ids.horizon)
    note_event_time(state, ev.ts)
    churn.note_store(state, ev.store_id, policy.churn)
    if ev.store_id is not None:
        storefunnel.note_purchase(state, ev.store_id, ev.ts, ev.amount_cents, ctx.now_ms, policy.funnel)
    interests.note_purchase(state, ev.ts, ev.items, policy.interest)
    if state.uplift:
        uplift.on_purchase(state, ev.ts, (it.category for it in ev.items))
    payer = ev.payer_id
    if payer is not None and payer != state.subject:
        paid_by = state.facts.get("paid_by")
        if paid_by is None or (paid_by.ts_ms, paid_by.event_id) < (ev.ts, ev.event_id):
            state.facts["paid_by"] = Fact(ev.ts, ev.event_id, payer)
    step = Step(state, Outcome.APPLIED, beyond_horizon=seen is Seen.BEYOND_HORIZON)
    triggers, rule = churn.after_purchase(state, ev.event_id, ev.ts, previous_last, ctx)
    change = restage(
        state, policy, event_id=ev.event_id, topic="purchases", cause_type="purchase", ts_ms=ev.ts, rule=rule
    )
    if change is not None:
        step.emits.append(change)
    step.emits.extend(triggers)
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
    note_event_time(state, ts_ms)


def on_touchpoint(state: CustomerState | None, ev: TouchpointLike, ctx: Context) -> Step:
    policy = ctx.policy
    if _erased(state, ev.ts):
        return Step(state, Outcome.IGNORED_ERASED)
    anonymous = ev.customer_id is None
    if anonymous and state is not None and state.merged_into is not None:
        # This anonymous id now belongs to a known customer: forward the event there.
        forwarded = ev.model_dump(mode="json", exclude_none=True)
        forwarded["customer_id"] = state.merged_into
        return Step(
            state, Outcome.REDIRECTED, [redirect_record(state.merged_into, Topic.TOUCHPOINTS, forwarded)]
        )
    if state is None:
        state = CustomerState(ev.subject, anonymous=anonymous)
    positive = ev.type is TouchType.review and (ev.rating or 0) >= policy.positive_review_min_rating
    code = POSITIVE_REVIEW_CODE if positive else TOUCH_CODES[ev.type.value]
    h = (dedupe.id_hash(ev.event_id) & ~TOUCH_CODE_MASK) | code
    content = dedupe.touch_digest(ev)
    seen, _ = dedupe.check(state.touch_ids, h, ev.ts, content, TOUCH_CODE_MASK)
    if seen is Seen.DUPLICATE:
        return Step(state, Outcome.DUPLICATE)
    if seen is Seen.CONFLICT or (seen is Seen.BEYOND_HORIZON and policy.beyond_horizon == "dead_letter"):
        raise _unjudged(seen, "touchpoint", ev.ts, state.touch_ids.horizon)
    if seen is Seen.NEW:
        dedupe.remember(state.touch_ids, h, ev.ts, policy.touch_id_cap, content, TOUCH_CODE_MASK)
    apply_touch(state, ev.type.value, ev.ts, ev.rating, policy)
    if ev.type is TouchType.visit and ev.store_id is not None:
        storefunnel.note_visit(state, ev.store_id, ev.ts, ctx.now_ms, policy.funnel)
    if ev.category is not None and ev.type.value in policy.interest.touch_types:
        interests.note_touch(state, ev.ts, ev.category, policy.interest)
    step = Step(state, Outcome.APPLIED, beyond_horizon=seen is Seen.BEYOND_HORIZON)
    if ev.type is TouchType.identify:
        anon = ev.anonymous_alias
        if anon is not None and anon not in state.aliases:
            step.emits.append(link_record(anon, state.subject, ev.event_id, ev.ts))
    triggers = churn.after_touch(state, ev, ctx)
    change = restage(
        state, policy, event_id=ev.event_id, topic="touchpoints", cause_type=ev.type.value, ts_ms=ev.ts
    )
    if change is not None:
        step.emits.append(change)
    step.emits.extend(triggers)
    return step


def on_customer_update(state: CustomerState | None, ev: CustomerUpdate, ctx: Context) -> Step:
    policy = ctx.policy
    if ev.erase:
        return _erase(state, ev)
    if _erased(state, ev.ts):
        return Step(state, Outcome.IGNORED_ERASED)
    if state is None:
        state = CustomerState(ev.customer_id, anonymous=False)
    version = (ev.ts, ev.event_id)
    changed = False
    fields = ev.changed_fields()
    for name, value in fields.items():
        current = state.facts.get(name)
        if current is not None and (current.ts_ms, current.event_id) == version and current.value != value:
            raise Rejected(
                Stage.PROCESS,
                Reason.DUPLICATE_CONFLICT,
                f"{name}: this update id was applied before with a different value (not applied again)",
            )
    for name, value in fields.items():
        current = state.facts.get(name)
        if current is None or (current.ts_ms, current.event_id) < version:
            state.facts[name] = Fact(ev.ts, ev.event_id, value)
            changed = True
    if not changed:
        return Step(state, Outcome.DUPLICATE)
    note_event_time(state, ev.ts)
    step = Step(state, Outcome.APPLIED)
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


def _erase(state: CustomerState | None, ev: CustomerUpdate) -> Step:
    """Right to erasure: the state is replaced by a marker that holds only the id and the
    erasure time (so events older than it, replayed or late, are ignored instead of bringing
    the customer back); the indexes and the Redis projection drop the customer when they see
    the marker; a tombstone goes to ``lifecycle-changes``; anonymous ids merged into the
    customer are erased the same way (an erase hop to each, through the identity topic)."""
    if state is not None and state.erased_ms is not None and state.erased_ms >= ev.ts:
        return Step(state, Outcome.DUPLICATE)
    tomb = CustomerState(ev.customer_id, anonymous=False)
    tomb.erased_ms = ev.ts
    step = Step(tomb, Outcome.ERASED)
    if state is not None:
        for alias in state.aliases:
            hop = {"event_id": ev.event_id, "customer_id": alias, "ts": ev.ts, "erase": True}
            step.emits.append(redirect_record(alias, Topic.CUSTOMER_UPDATES, hop))
        if state.stage != "stranger":
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
    step.emits.append(tombstone(ev.customer_id))
    return step
