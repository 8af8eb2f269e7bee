"""Churn risk: cadence-aware lapse, bad experiences, stalled prospects - and who should act.

Pure functions of (state, event, context); ``context.now_ms`` is the configured clock.

**Lapse.** A buyer's *usual interval* is the median gap between their distinct purchase
days (the retained 400 days), blended with a population prior for short histories:
``(n x own + w x prior) / (n + w)`` with n own gaps and w = ``prior_weight``. Silent longer
than ``factor x usual`` (and at least ``min days``) moves the risk stage
at_risk -> lapsed -> lost; each is a lifecycle change stamped with its deadline. A purchase
after that brings the customer back (lifecycle change "won back").

**Episodes.** The time from a first sign of risk until the customer comes back is one
episode; at most one churn-risk trigger per episode (``trigger_id`` = hash of type,
customer, episode). A purchase after the alert closes it (a ``won_back`` trigger to the same
recipient) and the next episode begins. A purchase from *before* a lapse alert that ends the
silence the alert was about (it reached us after the alert: late, or a clock ahead of it)
closes it as ``churn_risk_withdrawn`` instead: the alert should not have gone out, and the
customer was never won back.

**Who matters.** Value tier from the live spend distribution (top ``core_share`` = core)
and purchase milestones (watch >= 3, care >= 5). Triggers go out for customers in
``alert_tiers`` or with >= ``alert_min_purchases`` purchases; everyone else's risk changes
are lifecycle records and metrics only.

**Bad experiences.** A complaint, or a rating <= ``complaint_max_rating``, from a valued
customer raises the alert at once (reason ``complaint``). Rated moments also feed a
peak-end experience score (the most recent and the worst moments weigh most, then the
best, then the mean); when it falls to below ``experience_floor``, ``experience_drop`` or
more under its best so far, that raises it with reason ``experience``.

**Stalled prospects.** A known customer with no purchase who asked (inquiry, cart add,
store visit) >= ``stalled_min_asks`` times, the first ask >= ``stalled_after_days`` ago,
raises one ``stalled_prospect`` trigger for sales, listing the touchpoints behind it.
"""

from __future__ import annotations

from bisect import insort
from typing import Any

from schemas.events import TouchpointLike
from schemas.outputs import deterministic_id
from schemas.state import Alert, Ask, CustomerState, Experience
from schemas.timestamps import DAY_MS, iso_utc
from schemas.topics import Topic
from streams import bgnbd
from streams.core import ChurnModel, Context, Emit, in_control, lifecycle_change
from streams.policy import ChurnPolicy
from streams.rfm import mean_interpurchase_days, rhythm

RISK_STAGES = ("at_risk", "lapsed", "lost")
ASKS_KEPT_NEWEST = 2  # asks kept beyond the first stalled_min_asks (for the trigger's details)


# --- cadence ---------------------------------------------------------------------------------
def usual_interval_days(state: CustomerState, prior_days: float, policy: ChurnPolicy) -> float:
    """The customer's usual interval between purchase days, shrunk towards the prior."""
    own, n = own_interval(state)
    return shrunk_interval(own, n, prior_days, policy)


def own_interval(state: CustomerState) -> tuple[float, float]:
    """(own interval in days, its weight n): the median gap between purchase days with n
    gaps (n >= 2), else the mean interpurchase time with weight 1, else (0.0, 0.0): the
    prior alone."""
    own, gaps = rhythm(state)
    if gaps >= 2:
        return own, float(gaps)
    mean = mean_interpurchase_days(state)
    if not mean:
        return 0.0, 0.0
    return mean, 1.0


def shrunk_interval(own: float, n: float, prior_days: float, policy: ChurnPolicy) -> float:
    """``(n x own + w x prior) / (n + w)``; the prior alone when n is 0."""
    if not n:
        return prior_days
    w = policy.prior_weight
    return (n * own + w * prior_days) / (n + w)


def risk_times(state: CustomerState, usual_days: float, policy: ChurnPolicy) -> tuple[int, int, int]:
    """Absolute times (configured clock) at which silence makes the customer at_risk, lapsed, lost."""
    last = state.last_purchase_ms
    assert last is not None
    usual_ms = usual_days * DAY_MS
    f1, f2, f3 = policy.factors
    m1, m2, m3 = policy.min_ms
    return (
        last + max(int(f1 * usual_ms), m1),
        last + max(int(f2 * usual_ms), m2),
        last + max(int(f3 * usual_ms), m3),
    )


def risk_level(state: CustomerState) -> int:
    """-1 when not at risk, else the index in RISK_STAGES."""
    return -1 if state.risk is None else RISK_STAGES.index(state.risk)


def _churn_subject(state: CustomerState) -> bool:
    return state.frequency > 0 and not state.anonymous and state.merged_into is None


def stalled_at(state: CustomerState, policy: ChurnPolicy) -> int | None:
    """When a prospect counts as stalled (enough asks, the first long enough ago)."""
    asks = state.asks
    n = policy.stalled_min_asks
    if len(asks) < n:
        return None
    return max(asks[0].ts_ms + int(policy.stalled_after_days * DAY_MS), asks[n - 1].ts_ms)


def next_deadline(state: CustomerState, prior_days: float, policy: ChurnPolicy) -> int | None:
    """The next time the clock alone changes something for this customer (for the index)."""
    return deadline_at(deadline_terms(state, policy), prior_days, policy)


# what a deadline depends on in the state: (last purchase ms, index of the next risk stage
# in RISK_STAGES, own interval days, its weight) - the prior comes in only in deadline_at
DeadlineTerms = tuple[int, int, float, float]


def deadline_terms(state: CustomerState, policy: ChurnPolicy) -> DeadlineTerms | int | None:
    """:func:`next_deadline` without the prior: the terms of a cadence deadline, or the time
    of a stalled prospect's (an int: it does not depend on the prior), or None. A restart
    computes these while it indexes each customer once, before the population's prior is
    known (``CustomerPipeline.rebuild``)."""
    if _churn_subject(state):
        level = risk_level(state)
        if level >= len(RISK_STAGES) - 1:
            return None
        last = state.last_purchase_ms
        assert last is not None
        own, n = own_interval(state)
        return (last, level + 1, own, n)
    if state.frequency == 0 and state.stalled_ms is None and state.asks and not state.anonymous:
        return stalled_at(state, policy)
    return None


def deadline_at(terms: DeadlineTerms | int | None, prior_days: float, policy: ChurnPolicy) -> int | None:
    """The deadline :func:`deadline_terms` describes, with the prior (as :func:`risk_times`)."""
    if terms is None or isinstance(terms, int):
        return terms
    last, stage, own, n = terms
    usual_ms = shrunk_interval(own, n, prior_days, policy) * DAY_MS
    return last + max(int(policy.factors[stage] * usual_ms), policy.min_ms[stage])


# --- who matters, who acts -------------------------------------------------------------------
def tier(state: CustomerState, ctx: Context) -> str | None:
    """``core`` (top share by spend), ``regular`` (other buyers) or None (not a buyer)."""
    if state.frequency <= 0:
        return None
    return "core" if ctx.population.is_core(state, ctx.policy.churn.core_share) else "regular"


def milestone(state: CustomerState, policy: ChurnPolicy) -> str | None:
    if state.frequency >= policy.care_purchases:
        return "care"
    if state.frequency >= policy.watch_purchases:
        return "watch"
    return None


def valued(state: CustomerState, ctx: Context) -> bool:
    policy = ctx.policy.churn
    if state.frequency >= policy.alert_min_purchases:
        return True
    return tier(state, ctx) in policy.alert_tiers


def at_risk_since(state: CustomerState, ctx: Context) -> int | None:
    """Since when (epoch ms) ``state`` belongs on a store's "at risk now" list, or None.

    One rule for the staff page and Redis' ``at_risk:<store>`` sets: a buyer with an open
    churn alert (a complaint alert too, without any cadence stage: since the alert), or a
    valued buyer in a risk stage (since the stage began). A risk stage without
    ``risk_since_ms`` dates from the last purchase."""
    if state.frequency <= 0:
        return None
    if state.alert is not None:
        return state.alert.ts_ms
    if state.risk is None or not valued(state, ctx):
        return None
    return state.risk_since_ms if state.risk_since_ms is not None else state.last_purchase_ms or 0


def recipient(state: CustomerState, team: str) -> tuple[str, str]:
    """(kind, id) of who should act: the account owner, else the most frequent store, else a team."""
    owner = state.fact("owner_id")
    if owner:
        return "account_owner", str(owner)
    store = home_store(state)
    if store is not None:
        return "store", store
    return "team", team


def home_store(state: CustomerState) -> str | None:
    """The store the customer visits or buys at most (ties: the smallest id), or None."""
    if not state.stores:
        return None
    return min(state.stores.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def note_store(state: CustomerState, store_id: str | None, policy: ChurnPolicy) -> None:
    """Count a purchase or visit at ``store_id`` (the most visited ``max_stores`` are kept)."""
    if store_id is None:
        return
    stores = state.stores
    stores[store_id] = stores.get(store_id, 0) + 1
    if len(stores) > policy.max_stores:
        fewest = min(stores.values())
        del stores[max(s for s, n in stores.items() if n == fewest)]


# --- P(alive) --------------------------------------------------------------------------------
def alive(state: CustomerState, model: ChurnModel | None, at_ms: int, horizon_days: int) -> dict[str, Any]:
    """P(alive) and expected purchases in the next ``horizon_days`` (BG/NBD), as of ``at_ms``.

    Occasions are distinct UTC purchase days among the remembered purchase ids (exact while
    a customer has fewer purchases than the id memory holds)."""
    if model is None or state.frequency <= 0:
        return {"p_alive": None, f"expected_purchases_{horizon_days}d": None}
    summary = bgnbd.summarize(state.purchase_ids.ts, at_ms, model.unit)
    if summary is None:
        return {"p_alive": None, f"expected_purchases_{horizon_days}d": None}
    x, t_x, big_t = summary
    horizon = horizon_days / bgnbd.UNIT_DAYS[model.unit]
    return {
        "p_alive": round(bgnbd.p_alive(model.params, x, t_x, big_t), 4),
        f"expected_purchases_{horizon_days}d": round(
            bgnbd.expected_purchases(model.params, horizon, x, t_x, big_t), 3
        ),
    }


# --- triggers --------------------------------------------------------------------------------
def trigger(
    state: CustomerState,
    type_: str,
    reason: str,
    ts_ms: int,
    episode: int,
    recipient_of: tuple[str, str],
    details: dict[str, Any],
    held: bool | None = None,
) -> Emit:
    """Decide a trigger: the record goes into the customer's outbox (sent after the state is
    durable, re-sent unchanged after a crash) and is remembered as the last of its type.
    ``held`` (churn risk and its won back; False for a stalled prospect, which has no control
    group): ``deliver``/``holdout`` fields, ``holdout`` true when the alert is in the control
    group (recorded, never delivered)."""
    trigger_id = deterministic_id("trigger", type_, state.subject, episode)
    kind, who = recipient_of
    record = {
        "trigger_id": trigger_id,
        "type": type_,
        "customer_id": state.subject,
        "recipient_id": who,
        "recipient_kind": kind,
        "ts": iso_utc(ts_ms),
        "reason": reason,
        "episode": episode,
        "details": details,
    }
    if held is not None:
        record["deliver"] = not held
        record["holdout"] = held
    state.outbox.append(record)
    state.last_triggers[type_] = [trigger_id, ts_ms]
    return Emit(Topic.TRIGGERS, state.subject, record)


def churn_details(state: CustomerState, ctx: Context, at_ms: int) -> dict[str, Any]:
    policy = ctx.policy.churn
    last = state.last_purchase_ms
    details: dict[str, Any] = {
        "days_silent": None if last is None else round((at_ms - last) / DAY_MS, 1),
        "usual_interval_days": round(usual_interval_days(state, ctx.prior_days, policy), 1),
        "last_purchase_at": iso_utc(last),
        "purchases": state.frequency,
        "lifetime_value": state.monetary_cents / 100,
        "currency": ctx.policy.accept_currency,
        "tier": tier(state, ctx),
        "milestone": milestone(state, policy),
        "risk_stage": state.risk,
    }
    details.update(alive(state, ctx.model, at_ms, policy.expected_horizon_days))
    return details


def _alert(state: CustomerState, ctx: Context, reason: str, ts_ms: int, extra: dict[str, Any]) -> Emit:
    details = churn_details(state, ctx, ts_ms)
    details.update(extra)
    held = in_control(
        ctx.policy.churn.holdout_share, ctx.policy.gate.experiment, "churn_risk", state.subject, state.episode
    )
    if held:
        details["experiment"] = ctx.policy.gate.experiment
    emit = trigger(
        state,
        "churn_risk",
        reason,
        ts_ms,
        state.episode,
        recipient(state, ctx.policy.churn.default_recipient),
        details,
        held=held,
    )
    assert emit.value is not None
    state.alert = Alert(ts_ms, reason, emit.value["trigger_id"], held)
    return emit


# --- the clock moved -------------------------------------------------------------------------
def advance(state: CustomerState, ctx: Context) -> list[Emit]:
    """Apply what the clock alone changed by ``ctx.now_ms``: risk stages, stalled prospects."""
    policy = ctx.policy.churn
    emits: list[Emit] = []
    if _churn_subject(state):
        usual = usual_interval_days(state, ctx.prior_days, policy)
        times = risk_times(state, usual, policy)
        last = state.last_purchase_ms
        assert last is not None
        level = risk_level(state)
        while level < len(RISK_STAGES) - 1 and times[level + 1] <= ctx.now_ms:
            level += 1
            stage = RISK_STAGES[level]
            before = state.stage
            state.risk, state.risk_since_ms, state.stage = stage, times[level], stage
            silent = (times[level] - last) / DAY_MS
            emits.append(
                lifecycle_change(
                    state.subject,
                    False,
                    before,
                    stage,
                    event_id=f"silence-since:{last}",
                    topic="clock",
                    cause_type="deadline",
                    rule=f"no purchase for {silent:.0f} days; usual interval {usual:.1f} days "
                    f"(> {policy.factors[level]:g}x)",
                    ts_ms=times[level],
                )
            )
            # decided as of this transition (same record however late the tick runs)
            if state.alert is None and valued(state, ctx):
                emits.append(_alert(state, ctx, "lapse", times[level], {}))
    elif state.frequency == 0 and state.stalled_ms is None and not state.anonymous:
        when = stalled_at(state, policy)
        if when is not None and when <= ctx.now_ms:
            emits.append(_stalled(state, ctx, when))
    return emits


def _stalled(state: CustomerState, ctx: Context, ts_ms: int) -> Emit:
    policy = ctx.policy.churn
    asks = {t: n for t, n in sorted(state.touch_counts.items()) if t in policy.ask_types and n}
    details = {
        "asks": asks,
        "first_ask_at": iso_utc(state.asks[0].ts_ms),
        "last_ask_at": iso_utc(state.asks[-1].ts_ms),
        "touchpoints": [
            {
                "type": a.type,
                "at": iso_utc(a.ts_ms),
                "channel": a.channel,
                "store_id": a.store_id,
                "category": a.category,
            }
            for a in state.asks
        ],
        "touchpoints_total": sum(state.touch_counts.values()),
    }
    state.stalled_ms = ts_ms
    # no control group for sales follow-ups: always to be delivered (said, so a consumer that
    # filters on ``deliver`` keeps them)
    return trigger(
        state,
        "stalled_prospect",
        "stalled",
        ts_ms,
        0,
        recipient(state, policy.sales_recipient),
        details,
        False,
    )


# --- events ----------------------------------------------------------------------------------
def after_purchase(
    state: CustomerState, event_id: str, ts_ms: int, previous_last_ms: int | None, ctx: Context
) -> tuple[list[Emit], str | None]:
    """A new purchase was applied: maybe back from risk, maybe the end of an episode.

    Returns the triggers and, when the risk stage went down, the rule text for the lifecycle
    change the caller emits."""
    policy = ctx.policy.churn
    state.asks = []  # a buyer is no longer a prospect
    emits: list[Emit] = []
    rule = None
    level = risk_level(state)
    # Only a purchase that ends the silence (a new newest purchase) lowers the risk; a late
    # older one changes the rhythm but not the fact that they have been silent since.
    if level >= 0 and state.last_purchase_ms != previous_last_ms:
        at = max(ctx.now_ms, ts_ms)
        usual = usual_interval_days(state, ctx.prior_days, policy)
        times = risk_times(state, usual, policy)
        new = level
        while new >= 0 and times[new] > at:
            new -= 1
        if new < level:
            silent = None if previous_last_ms is None else (ts_ms - previous_last_ms) / DAY_MS
            if new < 0:
                stage, since = state.risk, state.risk_since_ms
                state.risk, state.risk_since_ms = None, None
                if since is not None and ts_ms < since:  # applied after the stage began: late
                    rule = f"a purchase from before the {stage} deadline, applied after it: not {stage} after all"
                else:
                    rule = "won back" + (
                        f" after {silent:.0f} days without a purchase" if silent is not None else ""
                    )
            else:
                state.risk, state.risk_since_ms = RISK_STAGES[new], times[new]
                rule = f"purchase moved the risk back to {RISK_STAGES[new]}"
    alert = state.alert
    if alert is not None and ts_ms >= alert.ts_ms:
        emits.append(_came_back(state, event_id, ts_ms, previous_last_ms, policy))
    elif alert is not None and alert.reason == "lapse" and state.risk is None:
        emits.append(_withdrawn(state, event_id, ts_ms, policy))
    elif level >= 0 and state.risk is None:
        state.episode += 1  # came back before anyone was alerted: a new episode all the same
    return emits, rule


def _came_back(
    state: CustomerState, event_id: str | None, ts_ms: int, previous_last_ms: int | None, policy: ChurnPolicy
) -> Emit:
    """Close the open alert's episode with a ``won_back`` trigger to the same recipient."""
    silent = None if previous_last_ms is None else round((ts_ms - previous_last_ms) / DAY_MS, 1)
    return _close(state, "won_back", "came_back", ts_ms, event_id, ts_ms, {"days_silent": silent}, policy)


def _withdrawn(state: CustomerState, event_id: str, ts_ms: int, policy: ChurnPolicy) -> Emit:
    """Close the open lapse alert's episode with ``churn_risk_withdrawn``: the purchase that
    ended the silence is older than the alert (it was applied after it), so the customer was
    not silent that long - the alert was premature, nobody won them back. Stamped with the
    alert's own time (it never comes before what it withdraws)."""
    alert = state.alert
    assert alert is not None
    early = {"days_before_alert": round((alert.ts_ms - ts_ms) / DAY_MS, 1)}
    return _close(state, "churn_risk_withdrawn", "premature", alert.ts_ms, event_id, ts_ms, early, policy)


def _close(
    state: CustomerState,
    type_: str,
    reason: str,
    at_ms: int,
    event_id: str | None,
    purchase_ms: int,
    extra: dict[str, Any],
    policy: ChurnPolicy,
) -> Emit:
    """The trigger that ends the open alert's episode (to the same recipient, in the alert's
    control group or not), and the next episode."""
    alert = state.alert
    assert alert is not None
    details = {
        "purchase_event_id": event_id,
        "purchase_at": iso_utc(purchase_ms),
        "alerted_at": iso_utc(alert.ts_ms),
        "alert_reason": alert.reason,
        "alert_trigger_id": alert.trigger_id,
        **extra,
    }
    emit = trigger(
        state,
        type_,
        reason,
        at_ms,
        state.episode,
        recipient(state, policy.default_recipient),
        details,
        held=alert.held_out,
    )
    state.alert = None
    state.episode += 1
    return emit


def peak_end_score(worst: int, best: int, last: int, mean: float) -> float:
    return round(0.35 * last + 0.30 * worst + 0.15 * best + 0.20 * mean, 2)


def after_touch(state: CustomerState, ev: TouchpointLike, ctx: Context) -> list[Emit]:
    """A new touchpoint was applied: asks of a prospect, stores, bad experiences."""
    policy = ctx.policy.churn
    kind = ev.type.value
    if kind == "visit":
        note_store(state, ev.store_id, policy)
    if kind in policy.ask_types and state.frequency == 0 and state.stalled_ms is None and not state.anonymous:
        insort(state.asks, Ask(ev.ts, kind, ev.channel, ev.store_id, ev.category))
        if len(state.asks) > policy.stalled_min_asks + ASKS_KEPT_NEWEST:
            del state.asks[policy.stalled_min_asks]
    complaint = kind == "complaint"
    rating = ev.rating
    if rating is None and not complaint:
        return []
    r = 1 if rating is None else rating
    prev = state.experience
    if prev is None:
        count, total, worst, best, last, last_ms = 1, r, r, r, r, ev.ts
    else:
        count, total = prev.rated + 1, prev.total + r
        worst, best = min(prev.worst, r), max(prev.best, r)
        last, last_ms = (r, ev.ts) if ev.ts >= prev.last_ms else (prev.last, prev.last_ms)
    score = peak_end_score(worst, best, last, total / count)
    peak = score if prev is None else max(prev.peak, score)
    state.experience = Experience(count, total, worst, best, last, last_ms, score, peak)
    if state.alert is not None or not _churn_subject(state) or not valued(state, ctx):
        return []
    alert: Emit | None = None
    if complaint or r <= policy.complaint_max_rating:
        complaint_info: dict[str, Any] = {
            "event_id": ev.event_id,
            "type": kind,
            "at": iso_utc(ev.ts),
            "rating": rating,
            "channel": ev.channel,
            "store_id": ev.store_id,
            "category": ev.category,
            "sku": ev.sku,
        }
        alert = _alert(state, ctx, "complaint", ev.ts, {"complaint": complaint_info})
    elif prev is not None and score < prev.score and peak - score >= policy.experience_drop:
        if score < policy.experience_floor:
            info: dict[str, Any] = {
                "score": score,
                "previous_score": prev.score,
                "peak_score": peak,
                "worst": worst,
                "last": last,
            }
            alert = _alert(state, ctx, "experience", ev.ts, {"experience": info})
    if alert is None:
        return []
    last_purchase = state.last_purchase_ms
    if last_purchase is not None and last_purchase > ev.ts:
        # the record arrived after a later purchase (late, or fetched after it): as it
        # would have gone live - the alert, and at once the come-back that ended it
        return [alert, _came_back(state, None, last_purchase, None, policy)]
    return [alert]
