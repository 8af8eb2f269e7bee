"""The customer profile document (what ``patronage profile`` and the HTTP API return)."""

from __future__ import annotations

from typing import Any

from schemas.state import CustomerState
from schemas.timestamps import iso_utc
from streams.policy import Policy
from streams.population import Population
from streams.rfm import mean_interpurchase_days, recency_days, trailing_windows


def _money(cents: int) -> float:
    return cents / 100


def build_profile(
    state: CustomerState, population: Population, now_ms: int, policy: Policy, clock: str
) -> dict[str, Any]:
    """Profile as of ``now_ms`` (the clock's now); RFM scores against ``population``."""
    scores = population.scores(state)
    mean_gap = mean_interpurchase_days(state)
    return {
        "customer_id": state.subject,
        "anonymous": state.anonymous,
        "as_of": iso_utc(now_ms),
        "clock": clock,
        "lifecycle_stage": state.stage,
        "lifecycle_since": iso_utc(state.stage_since_ms),
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
        "facts": {name: entry[2] for name, entry in sorted(state.facts.items())},
        "merged_anonymous_ids": list(state.aliases),
        "merged_into": state.merged_into,
        "last_event_at": iso_utc(state.last_event_ms),
    }


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
        if state.erased_ms is not None and state.stage == "stranger" and not state.frequency:
            continue
        if state.anonymous:
            anonymous += 1
        else:
            known += 1
        key = f"{state.stage} (anonymous)" if state.anonymous else state.stage
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
        "stages": dict(sorted(stages.items())),
        "segments": dict(sorted(segments.items(), key=lambda kv: -kv[1])),
    }
