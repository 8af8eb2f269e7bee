"""The pure customer state machine against the independent oracle (tests/oracle.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.state import CustomerState, Fact, IdMemory
from schemas.topics import Topic
from streams.dedupe import Seen, id_hash, remember
from streams.lifecycle import stage_only
from streams.policy import Policy
from streams.population import Population
from streams.rfm import mean_interpurchase_days, trailing_windows
from streams.testing import PipelineHarness
from tests import oracle

POLICY = Policy()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000


class Harness(PipelineHarness):
    """The whole pipeline (decode, routing, identity hops, steps) in memory, on the event
    clock, with the wall clock far enough ahead for every generated event to be plausible."""

    def __init__(self, policy: Policy = POLICY) -> None:
        super().__init__(policy, start_ms=T0 + 2000 * DAY)

    def send(self, topic: str, obj: dict[str, Any]) -> None:  # type: ignore[override]
        super().send(Topic(topic), obj)

    @property
    def states(self) -> dict[str, CustomerState]:
        return self.store


def purchase(i: int, cid: str, day: float, amount: float) -> dict[str, Any]:
    return {
        "event_id": f"p{i}",
        "customer_id": cid,
        "ts": T0 + int(day * DAY),
        "amount": amount,
        "currency": "EUR",
    }


def touch(
    i: int, type_: str, day: float, cid: str | None = None, anon: str | None = None, **kw: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {"event_id": f"t{i}", "ts": T0 + int(day * DAY), "type": type_, **kw}
    if cid:
        d["customer_id"] = cid
    if anon:
        d["anonymous_id"] = anon
    return d


def assert_matches_oracle(h: Harness, purchases: list, touches: list, updates: list = ()) -> None:  # type: ignore[assignment]
    expected = oracle.compute(purchases, touches, list(updates))
    now = max(oracle.ts_ms(e["ts"]) for e in [*purchases, *touches]) + 3 * DAY
    for cid, e in expected.items():
        s = h.states[cid]
        assert s.frequency == e.frequency, cid
        assert s.monetary_cents == e.monetary_cents, cid
        assert s.first_purchase_ms == e.first_ms and s.last_purchase_ms == e.last_ms, cid
        assert {k: v for k, v in s.touch_counts.items() if v} == e.touches, cid
        assert s.positive_reviews == e.positive_reviews, cid
        assert stage_only(s, POLICY) == e.stage(), cid  # the base stage (risk comes on top)
        assert set(s.aliases) == e.aliases, cid
        for w in trailing_windows(s, now, POLICY):
            assert (w.purchases, w.monetary_cents) == e.window(now, w.days), (cid, w.days)


event_lists = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.floats(min_value=0, max_value=900, allow_nan=False),
        st.sampled_from([0.01, 1, 9.99, 12.5, 100, 0.1, 0.2, 0.3]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events=event_lists, seed=st.integers(0, 10_000), dup_share=st.floats(0, 0.5))
def test_purchases_in_any_order_with_duplicates_equal_the_batch_result(
    events: list, seed: int, dup_share: float
) -> None:
    rnd = random.Random(seed)
    purchases = [purchase(i, c, d, a) for i, (c, d, a) in enumerate(events)]
    stream = purchases + [p for p in purchases if rnd.random() < dup_share]
    rnd.shuffle(stream)
    h = Harness()
    for p in stream:
        h.send("purchases", p)
    assert_matches_oracle(h, purchases, [])
    in_order = Harness()
    for p in sorted(purchases, key=lambda p: p["ts"]):
        in_order.send("purchases", p)
    for cid, s in in_order.states.items():
        shuffled = h.states[cid]
        assert (s.frequency, s.monetary_cents, s.days, stage_only(s, POLICY)) == (
            shuffled.frequency,
            shuffled.monetary_cents,
            shuffled.days,
            stage_only(shuffled, POLICY),
        )


def test_windows_roll_with_now_and_old_buckets_are_dropped() -> None:
    h = Harness()
    for i, day in enumerate([0, 10, 100, 300, 800]):
        h.send("purchases", purchase(i, "c1", day, 10))
    s = h.states["c1"]
    assert min(s.days) > (T0 + 800 * DAY) // DAY - POLICY.bucket_retention_days
    now = T0 + 805 * DAY
    assert [(w.days, w.purchases) for w in trailing_windows(s, now, POLICY)] == [(30, 1), (90, 1), (365, 1)]
    assert [w.purchases for w in trailing_windows(s, T0 + 850 * DAY, POLICY)] == [0, 1, 1]
    assert s.frequency == 5 and s.monetary_cents == 5000
    assert mean_interpurchase_days(s) == pytest.approx(800 / 4)


def test_lifecycle_progression_emits_each_transition_once_with_cause() -> None:
    h = Harness()
    h.send("touchpoints", touch(1, "view", 0, cid="c1"))
    h.send("touchpoints", touch(2, "cart", 1, cid="c1"))
    h.send("touchpoints", touch(2, "cart", 1, cid="c1"))  # duplicate
    for i in range(3):
        h.send("purchases", purchase(i, "c1", 2 + i, 5))
    h.send("touchpoints", touch(3, "referral", 9, cid="c1"))
    changes = h.lifecycle()
    path = [(c["from_stage"], c["to_stage"]) for c in changes]
    assert path == [
        ("stranger", "visitor"),
        ("visitor", "prospect"),
        ("prospect", "customer"),
        ("customer", "member"),
        ("member", "advocate"),
    ]
    assert changes[3]["cause"] == {
        "event_id": "p2",
        "topic": "purchases",
        "type": "purchase",
        "rule": "repeat buyer (3 purchases)",
    }
    assert len({c["change_id"] for c in changes}) == 5
    # deterministic ids: a second run produces the same ids
    again = Harness()
    for ev in [touch(1, "view", 0, cid="c1"), touch(2, "cart", 1, cid="c1")]:
        again.send("touchpoints", ev)
    assert [c["change_id"] for c in again.lifecycle()] == [c["change_id"] for c in changes[:2]]


def test_loyalty_member_and_positive_review_make_an_advocate_without_three_purchases() -> None:
    h = Harness()
    h.send("customer-updates", {"event_id": "u1", "customer_id": "c1", "ts": T0, "loyalty_member": True})
    assert h.states["c1"].stage == "member"
    h.send("touchpoints", touch(1, "review", 1, cid="c1", rating=3))
    assert h.states["c1"].stage == "member"
    h.send("touchpoints", touch(2, "review", 2, cid="c1", rating=5))
    assert h.states["c1"].stage == "advocate"
    # an older update does not override a newer one (last writer by event time wins)
    h.send(
        "customer-updates", {"event_id": "u0", "customer_id": "c1", "ts": T0 - DAY, "loyalty_member": False}
    )
    assert h.states["c1"].fact("loyalty_member") is True


def test_anonymous_visitor_merges_into_customer_exactly_once_in_any_order() -> None:
    touches = [
        touch(1, "view", 0, anon="a1"),
        touch(2, "cart", 1, anon="a1"),
        touch(3, "identify", 2, cid="c1", anon="a1"),
        touch(4, "view", 3, anon="a1"),  # after identify: forwarded to c1
        touch(5, "review", 4, anon="a1", rating=5),
        touch(6, "view", 5, cid="c1"),
    ]
    purchases = [purchase(1, "c1", 6, 20)]
    for seed in range(30):
        rnd = random.Random(seed)
        stream = [("touchpoints", t) for t in touches] + [("purchases", p) for p in purchases]
        stream += [("touchpoints", t) for t in touches if rnd.random() < 0.5]  # duplicates
        rnd.shuffle(stream)
        h = Harness()
        for topic, ev in stream:
            h.send(topic, ev)
        assert_matches_oracle(h, purchases, touches)
        assert h.states["a1"].merged_into == "c1"


def test_anonymous_id_cannot_be_merged_into_two_customers() -> None:
    h = Harness()
    h.send("touchpoints", touch(1, "view", 0, anon="a1"))
    h.send("touchpoints", touch(2, "identify", 1, cid="c1", anon="a1"))
    claim = h.record(Topic.TOUCHPOINTS, touch(3, "identify", 2, cid="c2", anon="a1"))
    h.deliver([claim])
    assert h.states["a1"].merged_into == "c1"
    (dead,) = h.dead_letters()
    assert dead["reason"] == "identity_conflict" and dead["stage"] == "process"
    assert "already merged into 'c1'" in dead["error"]
    # refused at a1's partition (the link hop), named by the identify the user sent
    assert (dead["topic"], dead["partition"], dead["offset"]) == (claim.topic, claim.partition, claim.offset)
    assert dead["via"]["topic"] == "patronage-identity"


def test_currency_mismatch_is_rejected_with_reason() -> None:
    h = Harness()
    h.send("purchases", {**purchase(1, "c1", 0, 5), "currency": "USD"})
    (dead,) = h.dead_letters()
    assert dead["reason"] == "currency_mismatch"
    assert "USD is not the configured currency EUR" in dead["error"]
    assert h.state("c1") is None


def test_erasure_forgets_and_ignores_older_events() -> None:
    h = Harness()
    h.send("purchases", purchase(1, "c1", 0, 5))
    h.send("customer-updates", {"event_id": "u1", "customer_id": "c1", "ts": T0 + DAY, "erase": True})
    s = h.states["c1"]
    assert (s.frequency, s.stage, s.erased_ms) == (0, "stranger", T0 + DAY)
    h.send("purchases", purchase(1, "c1", 0, 5))  # replayed old event stays forgotten
    assert h.states["c1"].frequency == 0
    h.send("purchases", purchase(2, "c1", 2, 7))  # a new purchase starts afresh
    assert h.states["c1"].frequency == 1
    assert h.lifecycle()[-2]["to_stage"] == "stranger"


def test_erasure_emits_a_tombstone_and_erases_the_merged_anonymous_ids() -> None:
    h = Harness()
    h.send("touchpoints", touch(1, "view", 0, anon="a1"))
    h.send("touchpoints", touch(2, "identify", 1, cid="c1", anon="a1"))
    h.send("purchases", purchase(1, "c1", 2, 30))
    assert h.states["a1"].merged_into == "c1" and h.states["c1"].aliases == ["a1"]
    h.send("customer-updates", {"event_id": "u1", "customer_id": "c1", "ts": T0 + 3 * DAY, "erase": True})
    # one tombstone for the customer and one for the anonymous id, both on lifecycle-changes
    assert sorted(h.tombstones[Topic.LIFECYCLE_CHANGES]) == ["a1", "c1"]
    for subject in ("c1", "a1"):
        s = h.states[subject]
        assert s.erased_ms == T0 + 3 * DAY, subject
        assert (s.merged_into, s.aliases, s.touch_counts, s.frequency) == (None, [], {}, 0), subject
    # the anonymous id's old events, replayed, reach nobody: not c1, not a new profile
    h.send("touchpoints", touch(1, "view", 0, anon="a1"))
    h.send("touchpoints", touch(9, "view", 2.5, anon="a1"))
    assert h.states["a1"].touch_counts == {} and h.states["c1"].touch_counts == {}
    assert len(h.tombstones[Topic.LIFECYCLE_CHANGES]) == 2  # nothing new to erase


def test_id_memory_is_bounded_and_reports_what_it_cannot_check() -> None:
    mem = IdMemory()
    for i in range(10):
        assert remember(mem, id_hash(f"e{i}"), 100 + i, cap=5) is Seen.NEW
    assert len(mem) == 5 and sorted(mem.ts) == [105, 106, 107, 108, 109]
    assert list(mem.ids) == sorted(mem.ids)
    assert remember(mem, id_hash("e9"), 109, cap=5) is Seen.DUPLICATE
    assert mem.horizon == 104  # the latest event time forgotten
    assert remember(mem, id_hash("old"), 1, cap=5) is Seen.BEYOND_HORIZON
    assert remember(mem, id_hash("e0"), 100, cap=5) is Seen.BEYOND_HORIZON  # forgotten: not judged
    assert len(mem) == 5 and IdMemory.decode(mem.encode()) == mem
    assert id_hash("e1") == id_hash("e1") and id_hash("e1") != id_hash("e2")
    assert 0 <= id_hash("anything") < 2**63


def test_population_scores_match_batch_ranks() -> None:
    rnd = random.Random(3)
    purchases = [
        purchase(i, f"c{rnd.randrange(200)}", rnd.uniform(0, 700), rnd.choice([5, 10, 25.5, 80]))
        for i in range(1500)
    ]
    h = Harness()
    pop = Population()
    for p in purchases:
        h.send("purchases", p)
        pop.update(0, p["customer_id"], h.states[p["customer_id"]])
    expected = oracle.rfm_scores(oracle.compute(purchases, []), partitions=1)
    assert len(pop) == len(expected)
    for cid, (r, f, m) in expected.items():
        sc = pop.scores(h.states[cid])
        assert sc is not None and (sc.r, sc.f, sc.m) == (r, f, m), cid
    pop.update(0, "c1", None)
    assert len(pop) == len(expected) - 1


@settings(max_examples=300, deadline=None)
@given(
    freq=st.integers(0, 5),
    touches=st.dictionaries(
        st.sampled_from(["view", "cart", "inquiry", "signup", "referral", "review"]), st.integers(0, 2)
    ),
    positive=st.integers(0, 2),
    loyalty=st.sampled_from([None, True, False]),
)
def test_fast_stage_agrees_with_the_documented_rules(
    freq: int, touches: dict, positive: int, loyalty: bool | None
) -> None:
    from streams.lifecycle import stage_of, stage_only

    s = CustomerState("c")
    s.frequency = freq
    s.touch_counts = {k: v for k, v in touches.items() if v}
    s.positive_reviews = positive
    if loyalty is not None:
        s.facts["loyalty_member"] = Fact(1, "u", loyalty)
    assert stage_only(s, POLICY) == stage_of(s, POLICY)[0]
