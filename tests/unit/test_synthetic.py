"""The synthetic generator: deterministic, valid against the contracts, labels true."""

from __future__ import annotations

import re
import statistics
from bisect import bisect_left
from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from schemas.events import CustomerUpdate, Purchase, StockArrival, Touchpoint
from schemas.timestamps import DAY_MS, parse_ts_ms
from synthetic import CATEGORIES, DEFAULT_END_MS, STORES, generate, iter_purchases_fast

N = 400
SEED = 11


@pytest.fixture(scope="module")
def data():
    return generate(N, SEED)


@pytest.fixture(scope="module")
def purchases(data):
    return [Purchase.model_validate(p) for p in data.purchases]


@pytest.fixture(scope="module")
def touchpoints(data):
    return [Touchpoint.model_validate(t) for t in data.touchpoints]


@pytest.fixture(scope="module")
def purchase_times(purchases):
    by: dict[str, list[int]] = defaultdict(list)
    for p in purchases:
        by[p.customer_id].append(p.ts)
    return by


def _streams(data):
    return {
        "p": (data.purchases, Purchase),
        "t": (data.touchpoints, Touchpoint),
        "u": (data.customer_updates, CustomerUpdate),
        "s": (data.stock_arrivals, StockArrival),
    }


def test_default_end_is_2026_11_01():
    assert parse_ts_ms("2026-11-01T00:00:00Z") == DEFAULT_END_MS


def test_same_seed_same_output_other_seed_differs(data):
    assert generate(N, SEED) == data
    other = generate(N, SEED + 1)
    assert other.purchases != data.purchases
    assert other.labels != data.labels


def test_every_record_validates(data, purchases, touchpoints):
    assert len(purchases) == len(data.purchases) > N * 5
    assert len(touchpoints) == len(data.touchpoints) > len(purchases)
    updates = [CustomerUpdate.model_validate(u) for u in data.customer_updates]
    stock = [StockArrival.model_validate(s) for s in data.stock_arrivals]
    assert updates and stock
    for p in purchases:
        assert p.currency == "EUR"
        assert p.items
        assert p.amount_cents == sum(i.qty * i.price_cents for i in p.items)
        assert p.channel in ("store", "web", "app")
        assert p.store_id is None or p.store_id in STORES
        assert all(i.category in CATEGORIES for i in p.items)
    # amounts and prices are plain numbers with at most two decimals
    for raw in data.purchases[:500]:
        assert isinstance(raw["amount"], float)
        assert round(raw["amount"], 2) == raw["amount"]
        assert all(round(i["price"], 2) == i["price"] for i in raw["items"])


def test_event_ids_unique_and_numbered_in_time_order(data):
    for prefix, (records, _model) in _streams(data).items():
        ids = [r["event_id"] for r in records]
        assert ids == [f"{prefix}-{n}" for n in range(1, len(records) + 1)]


def test_lists_sorted_by_time_within_period(data):
    start = data.labels["end_ms"] - data.labels["days"] * DAY_MS
    for records, _model in _streams(data).values():
        times = [parse_ts_ms(r["ts"]) for r in records]
        assert times == sorted(times)
        assert start <= times[0] and times[-1] < data.labels["end_ms"]


def test_timestamp_formats_are_mixed(data):
    kinds = Counter()
    for r in data.touchpoints + data.purchases:
        ts = r["ts"]
        if isinstance(ts, int):
            kinds["epoch"] += 1
        elif ts.endswith("Z"):
            kinds["zulu"] += 1
        else:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", ts)
            kinds["offset"] += 1
    total = sum(kinds.values())
    assert kinds["zulu"] > total / 2
    assert kinds["epoch"] > total / 20 and kinds["offset"] > total / 20


def test_customer_ids_and_labels_shape(data, purchase_times):
    labels = data.labels
    assert labels["seed"] == SEED and labels["customers"] == N and labels["end_ms"] == DEFAULT_END_MS
    ids = {p["customer_id"] for p in data.purchases}
    assert all(re.fullmatch(r"c\d{6}", c) for c in ids)
    assert len(ids) > N * 0.9  # a few only ever browse
    assert set(labels["favourite_categories"]) == set(purchase_times)


def test_lapsing_loyalists_are_regulars_gone_silent(data, purchase_times):
    end = data.labels["end_ms"]
    lapsing = set(data.labels["lapsing_loyalists"])
    assert abs(len(lapsing) - 0.08 * N) <= 2
    for cid in lapsing:
        ts = purchase_times[cid]
        assert len(ts) >= 5, cid
        gaps = [b - a for a, b in pairwise(ts)]
        med = statistics.median(gaps)
        silence = end - ts[-1]
        assert silence >= 3 * med, cid
        assert silence >= 60 * DAY_MS, cid
        assert max(gaps) < silence / 2, cid  # the lapse stands out from their own history
    # and nobody else looks like one: other frequent buyers are still within their rhythm
    for cid, ts in purchase_times.items():
        if cid in lapsing or len(ts) < 5:
            continue
        med = statistics.median(b - a for a, b in pairwise(ts))
        assert end - ts[-1] <= 2.5 * med, cid


def test_favourite_categories_hold_most_of_the_spend(data, purchases):
    spend: dict[str, Counter] = defaultdict(Counter)
    for p in purchases:
        for i in p.items:
            spend[p.customer_id][i.category] += i.qty * i.price_cents
    favourites = data.labels["favourite_categories"]
    for cid, favs in favourites.items():
        by_cat = spend[cid]
        assert 1 <= len(favs) <= 3 and len(set(favs)) == len(favs)
        assert 2 * sum(by_cat[f] for f in favs) > sum(by_cat.values()), cid
        others = max((v for k, v in by_cat.items() if k not in favs), default=0)
        assert all(by_cat[f] > others for f in favs), cid
        assert [by_cat[f] for f in favs] == sorted((by_cat[f] for f in favs), reverse=True)
    # most customers are quite loyal to their favourites, and tastes differ
    shares = [sum(spend[c][f] for f in favs) / sum(spend[c].values()) for c, favs in favourites.items()]
    assert statistics.median(shares) > 0.75
    assert len({favs[0] for favs in favourites.values()}) >= 15


def test_identified_visitors_identify_before_buying(data, touchpoints, purchase_times):
    identified = data.labels["anonymous_identified"]
    assert len(identified) >= N * 0.03
    identify = {(t.anonymous_id, t.customer_id): t.ts for t in touchpoints if t.type == "identify"}
    assert len(identify) == len(identified)
    anon_first: dict[str, int] = {}
    for t in touchpoints:
        if t.customer_id is None:
            anon_first.setdefault(t.anonymous_id, t.ts)
    for anon, cid in identified.items():
        assert anon.startswith("anon-")
        when = identify[(anon, cid)]
        assert anon_first[anon] < when < purchase_times[cid][0]
    customer_touch_before = [
        t for t in touchpoints if t.customer_id in set(identified.values()) and t.type != "identify"
    ]
    first_identify = {cid: identify[(anon, cid)] for anon, cid in identified.items()}
    assert all(t.ts >= first_identify[t.customer_id] for t in customer_touch_before)
    # the other half never identify
    never = set(anon_first) - set(identified)
    assert len(never) >= len(identified) * 0.8


def test_touchpoints_precede_purchases(touchpoints, purchases):
    by: dict[str, list[int]] = defaultdict(list)
    for t in touchpoints:
        if t.customer_id is not None and t.type in ("view", "visit", "cart", "inquiry"):
            by[t.customer_id].append(t.ts)
    preceded = 0
    for p in purchases:
        times = by.get(p.customer_id, [])
        k = bisect_left(times, p.ts)
        if k and p.ts - times[k - 1] <= 3 * DAY_MS:
            preceded += 1
    assert preceded > 0.85 * len(purchases)
    types = Counter(t.type.value for t in touchpoints)
    assert types["view"] > types["cart"] > types["inquiry"] > types["complaint"] > 0
    for typ in ("campaign_click", "app_open", "signup", "support", "review", "referral", "identify"):
        assert types[typ] > 0, typ
    ratings = Counter(t.rating for t in touchpoints if t.type == "review")
    assert set(ratings) == {1, 2, 3, 4, 5} and ratings[5] > ratings[1]


def test_complainers_complained(data, touchpoints):
    complainers = set(data.labels["complainers"])
    assert abs(len(complainers) - 0.02 * N) <= 1
    complained = {t.customer_id for t in touchpoints if t.type == "complaint"}
    assert complained == complainers


def test_customer_updates(data, purchase_times):
    updates = [CustomerUpdate.model_validate(u) for u in data.customer_updates]
    members = {u.customer_id for u in updates if u.loyalty_member}
    assert abs(len(members) - 0.2 * N) <= 2
    assert any(len(purchase_times.get(c, [])) < 3 for c in members)
    assert len({u.customer_id for u in updates if u.consent is not None}) > N / 2
    assert len({u.customer_id for u in updates if u.timezone is not None}) > N / 2
    assert any(u.household_id is not None and u.payer_id is not None for u in updates)
    assert any(p.get("payer_id") for p in data.purchases)


def test_stock_arrivals_cover_categories_and_stores(data):
    stock = [StockArrival.model_validate(s) for s in data.stock_arrivals]
    assert 200 <= len(stock) <= 1000
    assert {s.category for s in stock} == set(CATEGORIES)
    assert len({s.store_id for s in stock if s.store_id}) == len(STORES)
    assert all(s.tags for s in stock)


def test_other_period_and_currency():
    end = parse_ts_ms("2025-03-15T12:34:56.789Z")
    d = generate(60, 5, end_ms=end, days=150, currency="SEK")
    start = end - 150 * DAY_MS
    for records in (d.purchases, d.touchpoints, d.customer_updates, d.stock_arrivals):
        assert all(start <= parse_ts_ms(r["ts"]) < end for r in records)
    assert all(Purchase.model_validate(p).currency == "SEK" for p in d.purchases)
    assert d.labels["lapsing_loyalists"]
    with pytest.raises(ValueError):
        generate(10, 1, days=30)


def test_empty_population():
    d = generate(0, 1)
    assert d.purchases == [] and d.touchpoints == [] and d.customer_updates == []
    assert d.labels["lapsing_loyalists"] == []


def test_iter_purchases_fast_counts_and_validity():
    events = list(iter_purchases_fast(3000, 20_000, 4))
    assert len(events) == 20_000
    assert len({e["customer_id"] for e in events}) == 3000
    assert len({e["event_id"] for e in events}) == 20_000
    times = [parse_ts_ms(e["ts"]) for e in events]
    assert times == sorted(times) and times[-1] < DEFAULT_END_MS
    for e in events[::97]:
        p = Purchase.model_validate(e)
        assert p.amount_cents == sum(i.qty * i.price_cents for i in p.items)
    # activity is skewed: some customers buy much more often than others
    per = Counter(e["customer_id"] for e in events)
    assert max(per.values()) > 5 * statistics.median(per.values())
    assert events[:50] == list(iter_purchases_fast(3000, 20_000, 4))[:50]
    assert events[:50] != list(iter_purchases_fast(3000, 20_000, 5))[:50]


def test_iter_purchases_fast_fewer_purchases_than_customers():
    events = list(iter_purchases_fast(500, 200, 1))
    assert len(events) == 200 == len({e["customer_id"] for e in events})
    assert list(iter_purchases_fast(10, 0, 1)) == []
