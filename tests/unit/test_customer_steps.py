"""The pure customer state machine against the independent oracle (tests/oracle.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import CustomerUpdate, Purchase, Touchpoint
from schemas.state import CustomerState, IdMemory
from streams import customer as steps
from streams.dedupe import Seen, id_hash, remember
from streams.policy import Policy
from streams.population import Population
from streams.rfm import mean_interpurchase_days, trailing_windows
from tests import oracle

POLICY = Policy()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000


class Harness:
    """Routes events to per-subject states the way the processor does, including the
    internal identity hops, but synchronously and in memory."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.states: dict[str, CustomerState] = {}
        self.lifecycle: list[dict[str, Any]] = []
        self.outcomes: dict[str, int] = {}

    def _store(self, subject: str, step: steps.Step) -> None:
        self.outcomes[step.outcome] = self.outcomes.get(step.outcome, 0) + 1
        if step.state is not None and step.outcome != "duplicate":
            self.states[subject] = step.state
        for emit in step.emits:
            if emit.topic == steps.LIFECYCLE:
                self.lifecycle.append(emit.value)
            elif emit.topic == steps.IDENTITY:
                self.identity(emit.value)

    def identity(self, rec: dict[str, Any]) -> None:
        if rec["kind"] == "link":
            step = steps.on_link(
                self.states.get(rec["anon"]), rec["anon"], rec["customer"], rec["event_id"], rec["ts"]
            )
            self._store(rec["anon"], step)
        elif rec["kind"] == "merge":
            c = rec["customer"]
            step = steps.on_merge(
                self.states.get(c), c, rec["anon"], rec["snapshot"], rec["event_id"], rec["ts"], self.policy
            )
            self._store(c, step)
        else:
            self.send(rec["topic"], rec["event"])

    def send(self, topic: str, obj: dict[str, Any]) -> None:
        if topic == "purchases":
            p = Purchase.model_validate(obj)
            self._store(p.subject, steps.on_purchase(self.states.get(p.subject), p, self.policy))
        elif topic == "touchpoints":
            t = Touchpoint.model_validate(obj)
            self._store(t.subject, steps.on_touchpoint(self.states.get(t.subject), t, self.policy))
        else:
            u = CustomerUpdate.model_validate(obj)
            self._store(u.subject, steps.on_customer_update(self.states.get(u.subject), u, self.policy))


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
        assert s.stage == e.stage(), cid
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
        assert (s.frequency, s.monetary_cents, s.days, s.stage) == (
            shuffled.frequency,
            shuffled.monetary_cents,
            shuffled.days,
            shuffled.stage,
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
    path = [(c["from_stage"], c["to_stage"]) for c in h.lifecycle]
    assert path == [
        ("stranger", "visitor"),
        ("visitor", "prospect"),
        ("prospect", "customer"),
        ("customer", "member"),
        ("member", "advocate"),
    ]
    assert h.lifecycle[3]["cause"] == {
        "event_id": "p2",
        "topic": "purchases",
        "type": "purchase",
        "rule": "repeat buyer (3 purchases)",
    }
    assert len({c["change_id"] for c in h.lifecycle}) == 5
    # deterministic ids: a second run produces the same ids
    again = Harness()
    for ev in [touch(1, "view", 0, cid="c1"), touch(2, "cart", 1, cid="c1")]:
        again.send("touchpoints", ev)
    assert [c["change_id"] for c in again.lifecycle] == [c["change_id"] for c in h.lifecycle[:2]]


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
    with pytest.raises(ValueError, match="already merged into 'c1'"):
        steps.on_link(h.states["a1"], "a1", "c2", "t9", T0)


def test_currency_mismatch_is_rejected_with_reason() -> None:
    p = Purchase.model_validate({**purchase(1, "c1", 0, 5), "currency": "USD"})
    with pytest.raises(ValueError, match="USD is not the configured currency EUR"):
        steps.on_purchase(None, p, POLICY)


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
    assert h.lifecycle[-2]["to_stage"] == "stranger"


def test_id_memory_is_bounded_and_reports_what_it_cannot_check() -> None:
    mem = IdMemory()
    for i in range(10):
        assert remember(mem, id_hash(f"e{i}"), 100 + i, cap=5) is Seen.NEW
    assert len(mem) == 5 and sorted(mem.ts) == [105, 106, 107, 108, 109]
    assert list(mem.ids) == sorted(mem.ids)
    assert remember(mem, id_hash("e9"), 109, cap=5) is Seen.DUPLICATE
    assert remember(mem, id_hash("old"), 1, cap=5) is Seen.NEW_BEYOND_HORIZON
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
        pop.update(p["customer_id"], h.states[p["customer_id"]])
    expected = oracle.rfm_scores(oracle.compute(purchases, []))
    assert len(pop) == len(expected)
    for cid, (r, f, m) in expected.items():
        sc = pop.scores(h.states[cid])
        assert sc is not None and (sc.r, sc.f, sc.m) == (r, f, m), cid
    pop.update("c1", None)
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
        s.facts["loyalty_member"] = [1, "u", loyalty]
    assert stage_only(s, POLICY) == stage_of(s, POLICY)[0]
