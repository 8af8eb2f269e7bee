"""The customer profile document (what ``patronage profile`` and the HTTP API return)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS, iso_utc
from streams import bgnbd, churn, gate
from streams import interest as interests
from streams.core import Context
from streams.lifecycle import RISK_STAGES, STAGES, stage_only
from streams.population import Population
from streams.rfm import mean_interpurchase_days, recency_days, trailing_windows


def _money(cents: int) -> float:
    return cents / 100


def churn_view(state: CustomerState, ctx: Context) -> dict[str, Any] | None:
    """The churn part of a profile: risk, rhythm, value, P(alive), the open alert."""
    if state.frequency <= 0:
        return None
    policy = ctx.policy.churn
    usual = churn.usual_interval_days(state, ctx.prior_days, policy)
    last = state.last_purchase_ms
    assert last is not None
    times = churn.risk_times(state, usual, policy)
    exp = state.experience
    return {
        "risk_stage": state.risk,
        "risk_since": iso_utc(state.risk_since_ms),
        "days_silent": round(max(0, ctx.now_ms - last) / DAY_MS, 1),
        "usual_interval_days": round(usual, 1),
        "at_risk_after": iso_utc(times[0]),
        "lapsed_after": iso_utc(times[1]),
        "lost_after": iso_utc(times[2]),
        "next_deadline": iso_utc(churn.next_deadline(state, ctx.prior_days, policy)),
        "tier": churn.tier(state, ctx),
        "milestone": churn.milestone(state, policy),
        "valued": churn.valued(state, ctx),
        "episode": state.episode,
        "alert": None
        if state.alert is None
        else {
            "at": iso_utc(state.alert.ts_ms),
            "reason": state.alert.reason,
            "trigger_id": state.alert.trigger_id,
        },
        "experience_score": None if exp is None else exp.score,
        "recipient": dict(zip(("kind", "id"), churn.recipient(state, policy.default_recipient), strict=True)),
        **churn.alive(state, ctx.model, ctx.now_ms, policy.expected_horizon_days),
    }


def _interest_row(row: dict[str, Any]) -> dict[str, Any]:
    """An interest for people: the last order as ISO time instead of epoch ms."""
    out = {k: v for k, v in row.items() if k != "last_ms"}
    out["last_order_at"] = iso_utc(row["last_ms"])
    return out


PROFILE_INTERESTS = 5  # interests a profile lists


def build_profile(
    state: CustomerState, ctx: Context, clock: str, top: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Profile as of ``ctx.now_ms`` (the clock's now); RFM scores against the population.
    ``top``: the customer's best interests as of now (``interests.top``, at least
    ``PROFILE_INTERESTS`` of them if there are that many) when the caller has them already."""
    population, now_ms, policy = ctx.population, ctx.now_ms, ctx.policy
    if top is None:
        top = interests.top(state, now_ms, policy.interest, PROFILE_INTERESTS)
    scores = population.scores(state)
    mean_gap = mean_interpurchase_days(state)
    return {
        "customer_id": state.subject,
        "anonymous": state.anonymous,
        "as_of": iso_utc(now_ms),
        "clock": clock,
        "lifecycle_stage": state.stage,  # the risk stage while there is one
        "base_stage": stage_only(state, policy),  # stranger .. advocate, ignoring risk
        # since when the stage shown holds: the risk stage's own start while there is one
        "lifecycle_since": iso_utc(
            state.risk_since_ms
            if state.risk is not None and state.stage == state.risk
            else state.stage_since_ms
        ),
        "frequency": state.frequency,
        "monetary": _money(state.monetary_cents),
        "currency": policy.accept_currency,
        "first_purchase_at": iso_utc(state.first_purchase_ms),
        "last_purchase_at": iso_utc(state.last_purchase_ms),
        "recency_days": recency_days(state, now_ms),
        "avg_interpurchase_days": None if mean_gap is None else round(mean_gap, 3),
        "windows": {
            f"{w.days}d": {"purchases": w.purchases, "monetary": _money(w.monetary_cents)}
            for w in trailing_windows(state, now_ms, policy)
        },
        "rfm": None
        if scores is None
        else {
            "r": scores.r,
            "f": scores.f,
            "m": scores.m,
            "code": scores.code,
            "segment": scores.segment,
            "population": len(population),
        },
        "touchpoints": dict(sorted(state.touch_counts.items())),
        "first_touch_at": iso_utc(state.first_touch_ms),
        "last_touch_at": iso_utc(state.last_touch_ms),
        "positive_reviews": state.positive_reviews,
        "loyalty_member": bool(state.fact("loyalty_member", False)),
        "facts": {name: entry.value for name, entry in sorted(state.facts.items())},
        "stores": dict(sorted(state.stores.items(), key=lambda kv: (-kv[1], kv[0]))),
        "churn": churn_view(state, ctx),
        "stalled_prospect_at": iso_utc(state.stalled_ms),
        "interests": [_interest_row(row) for row in top[:PROFILE_INTERESTS]],
        "notifications": {
            "channel": gate.channel(state, policy.gate),
            "pending": gate.pending_view(state),
            "recent": gate.decisions_for(state)[:10],
        },
        "last_triggers": {
            t: {"trigger_id": v[0], "at": iso_utc(v[1])} for t, v in sorted(state.last_triggers.items())
        },
        "merged_anonymous_ids": list(state.aliases),
        "merged_into": state.merged_into,
        "last_event_at": iso_utc(state.last_event_ms),
    }


def churn_summary_rows(states: Iterable[CustomerState], until_ms: int, unit: str) -> list[list[float]]:
    """BG/NBD inputs from the table: ``[x, t_x, T, customers]`` rows (identical triples
    counted once), from each buyer's remembered purchase times up to ``until_ms``."""
    if unit not in bgnbd.UNIT_DAYS:
        raise ValueError(f"unit must be one of {', '.join(bgnbd.UNIT_DAYS)}")
    counts: dict[tuple[int, float, float], int] = {}
    for state in states:
        if state.frequency <= 0 or state.merged_into is not None:
            continue
        summary = bgnbd.summarize(state.purchase_ids.ts, until_ms, unit)
        if summary is not None:
            counts[summary] = counts.get(summary, 0) + 1
    return [[x, t_x, big_t, n] for (x, t_x, big_t), n in sorted(counts.items())]


def stage_key(state: CustomerState) -> str | None:
    """The summary's lifecycle class of a subject: its stage (the risk stage while one holds),
    ``"<stage> (anonymous)"`` for anonymous ids; None for merged ids and erased strangers."""
    if state.merged_into is not None:
        return None
    if state.erased_ms is not None and state.stage == "stranger" and not state.frequency:
        return None
    return f"{state.stage} (anonymous)" if state.anonymous else state.stage


def summarize(states: Any, population: Population) -> dict[str, Any]:
    """Counts per lifecycle stage and per RFM segment over an iterable of states."""
    stages: dict[str, int] = {}
    segments: dict[str, int] = {}
    known = anonymous = merged = 0
    purchases = monetary = 0
    for state in states:
        purchases += state.frequency
        monetary += state.monetary_cents
        if state.merged_into is not None:
            merged += 1
            continue
        key = stage_key(state)
        if key is None:
            continue
        if state.anonymous:
            anonymous += 1
        else:
            known += 1
        stages[key] = stages.get(key, 0) + 1
        scores = population.scores(state)
        if scores is not None:
            segments[scores.segment] = segments.get(scores.segment, 0) + 1
    return {
        "customers": known,
        "anonymous_visitors": anonymous,
        "merged_anonymous_ids": merged,
        "buyers": len(population),
        "totals": {"purchases": purchases, "monetary_cents": monetary},
        "stages": dict(sorted(stages.items(), key=lambda kv: _stage_order(kv[0]))),
        # most customers first, ties by name: the same counts always print in the same order
        "segments": dict(sorted(segments.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _stage_order(key: str) -> tuple[int, int, str]:
    """Lifecycle order (stranger … advocate, then at_risk, lapsed, lost), known ids before
    anonymous ones of the same stage."""
    stage, anonymous = key.removesuffix(" (anonymous)"), key.endswith(" (anonymous)")
    rank = STAGES.index(stage) if stage in STAGES else len(STAGES)
    return (rank, int(anonymous), key)


def risk_rows(counts: dict[tuple[str, bool], int]) -> dict[str, int]:
    """The summary's churn-risk rows ((risk stage or "none", open alert) -> customers) in a
    fixed order: none, at_risk, lapsed, lost; each without an open alert first."""
    order = ("none", *RISK_STAGES)

    def rank(key: tuple[str, bool]) -> tuple[int, bool]:
        stage, alerted = key
        return (order.index(stage) if stage in order else len(order), bool(alerted))

    return {
        f"{stage}{' (alerted)' if alerted else ''}": n
        for (stage, alerted), n in sorted(counts.items(), key=lambda kv: rank(kv[0]))
    }


def why(
    state: CustomerState | None,
    subject: str,
    category: str,
    ctx: Context,
    regions: Mapping[str, tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """Why did (or would) ``subject`` hear about new stock in ``category``? The interest
    definition checked as of the clock's now, the gate's standing checks (where they shop:
    with ``regions``, each store's region as the worker knows it), and every decision the
    gate remembers for that category (newest first). An arrival that skipped the customer
    (another store or region) leaves no decision: the stores and regions say why."""
    policy = ctx.policy
    ip, gp = policy.interest, policy.gate
    now = ctx.now_ms
    reasons: list[str] = []
    doc: dict[str, Any] = {
        "customer_id": subject,
        "category": category,
        "as_of": iso_utc(now),
        "known": state is not None,
    }
    if state is None:
        doc.update(interested=False, reasons=["unknown customer: no events seen"], decisions=[])
        return doc
    # never judged as of a time before what the customer (or an arrival offered to them)
    # already did: the partition's clock can lag behind a customer's own newest events
    decisions = gate.decisions_for(state, category)
    pending = gate.pending_view(state)
    memory = state.notify or {}
    seen = [state.last_event_ms or now]
    seen += [row[0] for row in memory.get("log", ()) if row[3] == category]
    seen += [p["open"] for p in memory.get("pend", {}).values()]
    now = max(now, *seen)
    doc["as_of"] = iso_utc(now)
    found = interests.assess(state, category, now, ip)
    if found is None:
        reasons.append(f"never bought {category!r} (or it is not among the {ip.max_categories} tracked)")
    else:
        ok_occ = found.occasions_in_window >= ip.min_occasions
        ok_share = found.spend_share >= ip.min_spend_share
        reasons.append(
            f"{'ok' if ok_occ else 'NO'}: {found.occasions_in_window} order(s) with {category!r} in the last "
            f"{ip.occasion_window_days:g} days (needs {ip.min_occasions})"
        )
        reasons.append(
            f"{'ok' if ok_share else 'NO'}: {found.spend_share:.0%} of recency-weighted spend (needs "
            f"{ip.min_spend_share:.0%})"
        )
    ch = gate.channel(state, gp)
    reasons.append(f"ok: channel {ch}" if ch else f"NO: no consented channel among {', '.join(gp.channels)}")
    n = state.notify or {}
    cooled = n.get("cool", {}).get(category)
    if cooled is not None and now - cooled < gp.cooldown_days * DAY_MS:
        reasons.append(f"cooldown: {category!r} was in a notification at {iso_utc(cooled)}")
    if interests.bought_within(state, category, now - int(gp.just_bought_days * DAY_MS), now):
        reasons.append(f"just bought: an order with {category!r} in the last {gp.just_bought_days:g} days")
    if state.stores:
        if regions is None:
            reasons.append("shops at: " + ", ".join(sorted(state.stores)))
        else:
            named = [f"{s} ({regions[s][0]})" if s in regions else s for s in sorted(state.stores)]
            unknown = [s for s in state.stores if s not in regions]
            reasons.append(
                "shops at: "
                + ", ".join(named)
                + "; only arrivals at these stores, in these regions or online reach this customer"
                + (f" ({len(unknown)} store(s) of no known region)" if unknown else "")
            )
    else:
        reasons.append("shops at no known store: store/region arrivals do not reach this customer")
    doc.update(
        interested=bool(found and found.interested),
        interest=None
        if found is None
        else {k: v for k, v in found._asdict().items() if k != "last_ms"}
        | {"last_order_at": iso_utc(found.last_ms)},
        reasons=reasons,
        pending=pending,
        decisions=decisions,
    )
    return doc
