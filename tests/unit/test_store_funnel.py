"""The store funnel (streams/storefunnel.py) through the whole pipeline, checked against an
independent batch computation of the documented definition; exact after a rebuild (as after
a restart) and under re-delivery; bounded per customer; its metrics' store label capped."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from agents.metrics import OTHER_STORE, Metrics
from schemas.state import STATE_VERSION, CustomerState
from schemas.timestamps import HOUR_MS, iso_utc
from schemas.topics import Topic
from streams.policy import FunnelPolicy, Policy
from streams.testing import T0, PipelineHarness

WINDOW_MS = 2 * HOUR_MS


def funnel_truth(
    visits: list[tuple[str, str, int]], purchases: list[tuple[str, str, int, int]], window_ms: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """(store, hour) -> the README's definition, computed from the raw events."""
    cells: dict[tuple[str, int], dict[str, Any]] = defaultdict(
        lambda: {"visits": 0, "visitors": set(), "buyers": set(), "orders": 0, "cents": 0}
    )
    for who, store, ts in visits:
        cell = cells[(store, ts // HOUR_MS * HOUR_MS)]
        cell["visits"] += 1
        cell["visitors"].add(who)
        if any(c == who and s == store and ts <= t <= ts + window_ms for c, s, t, _ in purchases):
            cell["buyers"].add(who)
    for _who, store, ts, cents in purchases:
        cell = cells[(store, ts // HOUR_MS * HOUR_MS)]
        cell["orders"] += 1
        cell["cents"] += cents
    return cells


def as_rows(cells: dict[tuple[str, int], dict[str, Any]], since_ms: int) -> list[dict[str, Any]]:
    out = []
    for (store, hour), c in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        if hour < since_ms:
            continue
        visitors, buyers = len(c["visitors"]), len(c["buyers"])
        revenue = c["cents"] / 100
        out.append(
            {
                "store": store,
                "hour": iso_utc(hour),
                "visits": c["visits"],
                "visitors": visitors,
                "buyers": buyers,
                "conversion": round(buyers / visitors, 4) if visitors else None,
                "orders": c["orders"],
                "revenue": revenue,
                "avg_basket": round(revenue / c["orders"], 2) if c["orders"] else None,
            }
        )
    return out


def random_day(seed: int, customers: int = 60, hours: int = 18) -> tuple[list[Any], list[Any], list[Any]]:
    """Store visits (some by anonymous ids), purchases with and without a store, online
    touchpoints; purchases often minutes after a visit, sometimes hours later or before."""
    rng = random.Random(seed)
    stores = [f"s{n}" for n in range(5)]
    touches: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    visits: list[tuple[str, str, int]] = []
    bought: list[tuple[str, str, int, int]] = []
    n = 0
    for c in range(customers):
        who = f"c{c:03d}"
        for _ in range(rng.randint(0, 4)):
            n += 1
            store = rng.choice(stores)
            ts = T0 + rng.randint(0, hours * HOUR_MS)
            anonymous = rng.random() < 0.15
            subject = f"a{c:03d}" if anonymous else who
            touches.append(
                {"event_id": f"t{n}", ("anonymous_id" if anonymous else "customer_id"): subject, "ts": ts,
                 "type": "visit", "channel": "store", "store_id": store}
            )  # fmt: skip
            visits.append((subject, store, ts))
            if rng.random() < 0.6:
                n += 1
                at = ts + rng.choice([rng.randint(0, 45 * 60_000), rng.randint(0, 5 * HOUR_MS), -HOUR_MS])
                where = store if rng.random() < 0.8 else rng.choice(stores)
                cents = rng.randint(100, 90_000)
                purchases.append(
                    {"event_id": f"p{n}", "customer_id": who, "ts": at, "amount": cents / 100, "currency": "EUR",
                     "store_id": where, "items": [{"sku": "r1", "category": "rings", "qty": 1, "price": cents / 100}]}
                )  # fmt: skip
                bought.append((who, where, at, cents))
        n += 1
        touches.append({"event_id": f"t{n}", "customer_id": who, "ts": T0, "type": "view"})  # no store
        purchases.append(
            {"event_id": f"p{n}", "customer_id": who, "ts": T0 + HOUR_MS, "amount": 5, "currency": "EUR",
             "channel": "web", "items": [{"sku": "x", "category": "tea", "qty": 1, "price": 5}]}
        )  # fmt: skip
    return touches, purchases, [visits, bought]


def feed(h: PipelineHarness, touches: list[Any], purchases: list[Any]) -> None:
    h.send_many(Topic.TOUCHPOINTS, touches)
    h.send_many(Topic.PURCHASES, purchases)
    h.advance(10_000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_are_the_definition_and_survive_rebuild_and_redelivery(seed: int) -> None:
    touches, purchases, (visits, bought) = random_day(seed)
    h = PipelineHarness()
    feed(h, touches, purchases)
    assert not h.dead_letters()
    rows = h.pipeline.store_funnel(72)
    now = h.clock.now_ms()
    since = now - now % HOUR_MS - 71 * HOUR_MS
    truth = as_rows(funnel_truth(visits, bought, WINDOW_MS), since)
    assert rows == truth
    assert any(r["buyers"] for r in rows) and any(r["visitors"] > r["buyers"] for r in rows)
    # a restart: the index from the states alone
    h.pipeline.rebuild()
    assert h.pipeline.store_funnel(72) == truth
    # at-least-once: the same records again change nothing
    feed(h, touches, purchases)
    assert h.pipeline.store_funnel(72) == truth
    # hours: the newest first, only the asked-for ones
    last3 = h.pipeline.store_funnel(3)
    assert last3 == [r for r in truth if r["hour"] >= iso_utc(now - now % HOUR_MS - 2 * HOUR_MS)]


def test_a_replay_of_history_keeps_its_first_batch() -> None:
    """The event clock knows no time before its first event; the first batch of a replay of
    data a year old must not be judged against real time (its store entries were dropped
    as "older than the retention" when the batch's now was the wall clock)."""
    touches, purchases, (visits, bought) = random_day(4)
    h = PipelineHarness(start_ms=T0 + 365 * 24 * HOUR_MS)  # real time: a year after the data
    assert not h.clock.started(0)
    feed(h, touches, purchases)
    assert h.clock.started(0)
    now = h.clock.now_ms()
    assert now < T0 + 48 * HOUR_MS  # event time, not real time
    truth = as_rows(funnel_truth(visits, bought, WINDOW_MS), now - now % HOUR_MS - 71 * HOUR_MS)
    assert truth and h.pipeline.store_funnel(72) == truth


def test_an_identified_visitor_who_buys_is_a_buyer_once() -> None:
    h = PipelineHarness()
    visit = {
        "event_id": "v1",
        "anonymous_id": "anon-1",
        "ts": T0 + 600_000,
        "type": "visit",
        "store_id": "s1",
    }
    h.send(Topic.TOUCHPOINTS, visit)
    h.send(
        Topic.TOUCHPOINTS,
        {
            "event_id": "i1",
            "customer_id": "c1",
            "anonymous_id": "anon-1",
            "ts": T0 + 700_000,
            "type": "identify",
        },
    )
    h.send(
        Topic.PURCHASES,
        {"event_id": "p1", "customer_id": "c1", "ts": T0 + 900_000, "amount": 120, "currency": "EUR",
         "store_id": "s1", "items": [{"sku": "r", "category": "rings", "qty": 1, "price": 120}]},
    )  # fmt: skip
    h.advance(10_000)
    [row] = h.pipeline.store_funnel(24)
    assert (row["store"], row["visits"], row["visitors"], row["buyers"]) == ("s1", 1, 1, 1)
    assert (row["orders"], row["revenue"], row["avg_basket"], row["conversion"]) == (1, 120.0, 120.0, 1.0)
    h.pipeline.rebuild()
    assert h.pipeline.store_funnel(24) == [row]


def test_entries_are_bounded_by_retention_and_count() -> None:
    policy = Policy(funnel=FunnelPolicy(buy_window_ms=HOUR_MS, retention_ms=3 * HOUR_MS, max_entries=4))
    h = PipelineHarness(policy)
    for n in range(10):
        h.send(
            Topic.TOUCHPOINTS,
            {
                "event_id": f"v{n}",
                "customer_id": "c1",
                "ts": T0 + n * HOUR_MS,
                "type": "visit",
                "store_id": "s1",
            },
        )
    state = h.state("c1")
    assert state is not None and state.funnel is not None
    kept = [ts for _store, ts in state.funnel["v"]]
    assert len(kept) <= 4 and min(kept) >= T0 + 9 * HOUR_MS - 3 * HOUR_MS
    # hours older than the retention are never reported (they may be incomplete)
    assert h.pipeline.store_funnel(1000) == h.pipeline.store_funnel(3)
    assert {r["hour"] for r in h.pipeline.store_funnel(1000)} <= {
        iso_utc(T0 + n * HOUR_MS) for n in range(7, 10)
    }


def test_funnel_state_round_trips_and_older_records_load_without_it() -> None:
    s = CustomerState("c1")
    s.funnel = {"v": [["s1", T0]], "p": [["s1", T0 + 5, 1200]]}
    assert CustomerState.from_json(s.to_json()).funnel == s.funnel
    old = orjson.loads(CustomerState("c2").to_json())
    assert "fun" not in old and old["v"] == STATE_VERSION
    assert CustomerState.from_dict(old).funnel is None


def test_store_label_is_capped_with_overflow_to_other_and_no_created_series() -> None:
    metrics = Metrics(max_stores=2)
    totals = {f"s{n}": (n + 1, 1, 1, 2, 1000) for n in range(5)}
    metrics.set_stores(totals)
    text = generate_latest(metrics.registry).decode()
    visits = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("patronage_store_visits{")
    }
    assert visits == {"s0": 1.0, "s1": 2.0, OTHER_STORE: 3.0 + 4.0 + 5.0}
    assert 'patronage_store_revenue{store="other"} 30.0' in text
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text


def test_population_gauges_equal_a_full_scan() -> None:
    """Stage, RFM grid, segment and tier gauges from the incremental indexes equal what a
    walk over every state (the summary, is_core) says."""
    from streams import churn
    from streams.profile import summarize
    from streams.rfm import segment

    touches, purchases, _ = random_day(7, customers=300)
    h = PipelineHarness()
    feed(h, touches, purchases)
    pipeline = h.pipeline
    population = pipeline.population
    metrics = Metrics()
    core = population.core_count(pipeline.policy.churn.core_share)
    metrics.set_population(
        pipeline.stage_counts(),
        population.rf_grid(),
        {(r, f): segment(r, f) for r in range(1, 6) for f in range(1, 6)},
        len(population),
        core,
    )
    summary = summarize(h.store.values(), population)
    registry = metrics.registry
    for key, n in summary["stages"].items():
        kind, stage = ("anonymous", key.split(" ")[0]) if key.endswith("(anonymous)") else ("known", key)
        assert registry.get_sample_value("patronage_customers_by_stage", {"kind": kind, "stage": stage}) == n
    for name, n in summary["segments"].items():
        assert registry.get_sample_value("patronage_segment_customers", {"segment": name}) == n
    # each customer's tier within its own partition's buyers
    tiers = [
        churn.tier(s, pipeline.context(pipeline.home_partition(s.subject)))
        for s in h.store.values()
        if s.merged_into is None
    ]
    assert core == tiers.count("core") > 0
    assert registry.get_sample_value("patronage_tier_customers", {"tier": "regular"}) == tiers.count(
        "regular"
    )
    assert registry.get_sample_value("patronage_customers", {"kind": "known"}) == summary["customers"]


def test_the_summary_lists_stages_in_lifecycle_order_and_segments_in_a_fixed_order() -> None:
    """Found by an outside run: the same counts printed their rows in a different order
    from one call to the next (segments tied on count kept the order customers were met)."""
    from streams.lifecycle import STAGES
    from streams.profile import summarize

    touches, purchases, _ = random_day(7, customers=300)
    h = PipelineHarness()
    feed(h, touches, purchases)
    states = list(h.store.values())
    first = summarize(states, h.pipeline.population)
    again = summarize(list(reversed(states)), h.pipeline.population)
    assert list(first["stages"]) == list(again["stages"]) and list(first["segments"]) == list(
        again["segments"]
    )
    ranks = [
        (STAGES.index(k.removesuffix(" (anonymous)")), k.endswith("(anonymous)")) for k in first["stages"]
    ]
    assert ranks == sorted(ranks) and len(ranks) >= 3
    counts = [(-n, name) for name, n in first["segments"].items()]
    assert counts == sorted(counts) and len(counts) >= 3


@pytest.mark.parametrize("seed", [4, 5])
def test_hours_before_the_retention_are_dropped_from_the_index_and_reports_stay_exact(seed: int) -> None:
    """The index keeps only hours from the clock's now minus the retention (nothing reads
    older ones): over years of history nearly every (hour, store) cell was one customer's."""
    from streams.storefunnel import StoreFunnelIndex, hour_of

    retention = 4 * HOUR_MS
    policy = Policy(funnel=FunnelPolicy(buy_window_ms=WINDOW_MS, retention_ms=retention))
    touches, purchases, (visits, bought) = random_day(seed, customers=200)
    h = PipelineHarness(policy)
    half = T0 + 9 * HOUR_MS  # customers remembered before the floor moves, changed after it
    feed(h, [t for t in touches if t["ts"] < half], [p for p in purchases if p["ts"] < half])
    feed(h, [t for t in touches if t["ts"] >= half], [p for p in purchases if p["ts"] >= half])
    assert not h.dead_letters()
    funnel = h.pipeline.funnel
    for _ in range(10):  # ticks: the sweep goes through the remembered contributions
        h.advance(1000)
    now = h.clock.now_ms()
    floor = hour_of(now - retention)
    assert funnel.floor_ms == floor > T0
    assert funnel._hours and min(funnel._hours) >= floor
    # every report is the definition computed from the raw events
    since = now - now % HOUR_MS - 3 * HOUR_MS
    truth = as_rows(funnel_truth(visits, bought, WINDOW_MS), since)
    assert h.pipeline.store_funnel(4) == truth and len(truth) > 5
    # the same sums as an index that keeps every hour, fed the same states
    whole = StoreFunnelIndex(WINDOW_MS)
    for subject, state in h.store.items():
        whole.update(0, subject, state)
    assert funnel.cells(floor) == whole.cells(floor)
    # contributions wholly before the floor are forgotten, the others kept
    live = {s for s, (_, flat) in whole._of.items() if max(flat[1::7]) >= floor}
    assert set(funnel._of) == live and len(live) < len(whole._of)
    # a restart loads only the hours kept
    h.pipeline.rebuild()
    assert funnel.floor_ms == floor and set(funnel._of) == live
    assert funnel.cells(floor) == whole.cells(floor) and min(funnel._hours) >= floor
    assert h.pipeline.store_funnel(4) == truth


@pytest.mark.parametrize("kind", ["event", "capped", "capped-historic", "wall"])
def test_a_rebuild_bounds_the_clock_from_below_only(kind: str) -> None:
    """What a rebuild leaves out of the store funnel along the way uses
    ``least_now_after_restore``: never above what the clock reads once restored (else it
    would drop hours a report still reads)."""
    from streams.clock import CappedEventClock, EventClock, WallClock

    wall = [T0]
    event = T0 + 5 * HOUR_MS if kind != "capped-historic" else T0 - 400 * 24 * HOUR_MS
    clock = {
        "event": lambda: EventClock(lambda: wall[0], allowed_lateness_ms=60_000),
        "capped": lambda: CappedEventClock(lambda: wall[0], 60_000, 5000, max_ahead_ms=HOUR_MS),
        "capped-historic": lambda: CappedEventClock(lambda: wall[0], 60_000, 5000, 0),
        "wall": lambda: WallClock(lambda: wall[0]),
    }[kind]()
    bound = clock.least_now_after_restore(event)  # type: ignore[attr-defined]
    clock.restore(0, event)
    assert bound <= clock.now_ms()
    assert clock.least_now() <= clock.now_ms()  # type: ignore[attr-defined]
    if kind != "wall":  # an event seen far ahead elsewhere: now() reads it, the bound does not
        clock.observe(1, "purchases", event + 100 * HOUR_MS)  # type: ignore[union-attr]
        clock.observe(0, "purchases", event)  # type: ignore[union-attr]
        assert clock.least_now() <= clock.now_ms()  # type: ignore[attr-defined]
    if kind == "capped":
        assert bound == T0 + HOUR_MS  # the cap: an hour past the wall clock
    elif kind != "wall":
        assert bound == event - 60_000


def test_the_summary_lists_churn_risk_rows_in_a_fixed_order_whatever_order_they_are_counted_in() -> None:
    from streams.profile import risk_rows

    counts = {
        ("lost", True): 1,
        ("none", False): 9,
        ("at_risk", True): 3,
        ("lapsed", False): 2,
        ("at_risk", False): 4,
    }
    expected = ["none", "at_risk", "at_risk (alerted)", "lapsed", "lost (alerted)"]
    assert list(risk_rows(counts)) == expected
    assert list(risk_rows(dict(reversed(list(counts.items()))))) == expected
    assert risk_rows(counts)["at_risk (alerted)"] == 3
