"""The id memory's exact guarantee, content conflicts, and the state version bump."""

from __future__ import annotations

import base64
import random
from array import array
from collections import Counter

import orjson
import pytest

from schemas.errors import Rejected
from schemas.events import Purchase, Touchpoint
from schemas.fast import fast_purchase, fast_touchpoint
from schemas.state import LEGACY_ID_CAP, CustomerState, IdMemory
from streams import dedupe
from streams.dedupe import Seen, id_hash, purchase_digest, remember, touch_digest, union


def test_events_after_the_horizon_are_judged_exactly_in_any_order() -> None:
    """Property, by brute force: whatever order events arrive in, an event newer than the
    horizon is NEW iff its id was never applied; older unknown ones are BEYOND_HORIZON."""
    rnd = random.Random(7)
    for _ in range(200):
        cap = rnd.randint(1, 12)
        applied: set[int] = set()
        mem = IdMemory()
        for _ in range(rnd.randint(1, 60)):
            i = rnd.randint(0, 40)
            ts = 1000 + i * 10  # an id always carries the same event time
            horizon = mem.horizon
            seen = remember(mem, id_hash(f"e{i}"), ts, cap, content=7)
            if horizon is not None and ts <= horizon and i not in applied:
                assert seen is Seen.BEYOND_HORIZON
            elif horizon is None or ts > horizon:
                assert seen is (Seen.DUPLICATE if i in applied else Seen.NEW), (i, horizon)
            if seen is Seen.NEW:
                applied.add(i)
            assert len(mem) <= cap
            assert IdMemory.decode(mem.encode()) == mem


def test_same_id_different_content_is_a_conflict_same_content_a_duplicate() -> None:
    mem = IdMemory()
    h = id_hash("p1")
    assert remember(mem, h, 5, 8, content=11) is Seen.NEW
    assert remember(mem, h, 5, 8, content=11) is Seen.DUPLICATE
    assert remember(mem, h, 5, 8, content=12) is Seen.CONFLICT
    assert len(mem) == 1


def test_a_touchpoint_resent_with_another_type_is_a_conflict() -> None:
    mem = IdMemory()
    base = id_hash("t1") & ~dedupe.TOUCH_CODE_MASK
    assert remember(mem, base | 1, 5, 8, 3, dedupe.TOUCH_CODE_MASK) is Seen.NEW
    assert remember(mem, base | 1, 5, 8, 3, dedupe.TOUCH_CODE_MASK) is Seen.DUPLICATE
    assert remember(mem, base | 2, 5, 8, 3, dedupe.TOUCH_CODE_MASK) is Seen.CONFLICT


P = {"event_id": "p1", "customer_id": "c1", "ts": "2026-11-01T10:00:00Z", "amount": 12.5, "currency": "EUR",
     "items": [{"sku": "a", "category": "beer", "qty": 2, "price": 6.25}]}  # fmt: skip


def test_content_is_the_validated_values_whatever_their_spelling() -> None:
    same = [
        P,
        {**P, "ts": 1793527200000, "amount": "12.50", "extra": "ignored"},
        {**P, "customer_id": "someone-else"},  # the owner is not content
    ]
    digests = {purchase_digest(Purchase.model_validate(p)) for p in same}
    digests |= {purchase_digest(fp) for p in same if (fp := fast_purchase(p)) is not None}
    assert len(digests) == 1
    for change in ({"amount": 12.51}, {"ts": 1793527200001}, {"store_id": "s"}, {"items": []}):
        assert purchase_digest(Purchase.model_validate({**P, **change})) not in digests
    t = {"event_id": "t", "anonymous_id": "a", "ts": 1793527200000, "type": "view", "category": "beer"}
    fwd = {**t, "customer_id": "c"}  # forwarded after a merge: same event
    assert touch_digest(Touchpoint.model_validate(t)) == touch_digest(Touchpoint.model_validate(fwd))
    assert touch_digest(fast_touchpoint(t)) == touch_digest(Touchpoint.model_validate(t))  # type: ignore[arg-type]
    assert touch_digest(Touchpoint.model_validate({**t, "type": "cart"})) != touch_digest(
        Touchpoint.model_validate(t)
    )


def test_the_step_dead_letters_conflicts_and_events_beyond_the_horizon() -> None:
    from streams.core import Context
    from streams.customer import on_purchase
    from streams.policy import Policy
    from streams.population import Population

    ctx = Context(policy=Policy(purchase_id_cap=8), now_ms=1793527200000, population=Population())
    state = None
    for i in range(10):
        step = on_purchase(
            state, Purchase.model_validate({**P, "event_id": f"p{i}", "ts": 1793527200000 + i}), ctx
        )
        state = step.state
    assert state is not None and state.frequency == 10 and state.purchase_ids.horizon == 1793527200001
    with pytest.raises(Rejected) as info:
        on_purchase(
            state, Purchase.model_validate({**P, "event_id": "p5", "ts": 1793527200005, "amount": 1}), ctx
        )
    assert info.value.reason == "duplicate_conflict"
    with pytest.raises(Rejected) as info:  # p0 was forgotten: re-sent, it is not counted again
        on_purchase(state, Purchase.model_validate({**P, "event_id": "p0", "ts": 1793527200000}), ctx)
    assert info.value.reason == "beyond_dedupe_horizon"
    assert state.frequency == 10
    lax = Context(
        policy=Policy(purchase_id_cap=8, beyond_horizon="apply"),
        now_ms=1793527200000,
        population=Population(),
    )
    step = on_purchase(state, Purchase.model_validate({**P, "event_id": "p0", "ts": 1793527200000}), lax)
    assert step.beyond_horizon and step.state is not None and step.state.frequency == 11


def test_records_of_state_version_4_still_load() -> None:
    ids = array("Q", sorted(id_hash(f"e{i}") for i in range(3)))
    ts = array("q", (10, 30, 20))
    old = base64.b64encode(ids.tobytes() + ts.tobytes()).decode()
    record = {"v": 4, "s": "c1", "f": 3, "m": 300, "fp": 10, "lp": 30, "days": {"0": [3, 300]}, "pid": old}
    s = CustomerState.from_json(orjson.dumps(record))
    assert list(s.purchase_ids.ids) == list(ids) and s.purchase_ids.horizon is None
    h = int(ids[0])
    assert remember(s.purchase_ids, h, 10, 512, content=99) is Seen.DUPLICATE  # no digest: any content
    again = CustomerState.from_json(s.to_json())
    assert orjson.loads(s.to_json())["v"] == 5 and again == s
    full = base64.b64encode(
        array("Q", range(LEGACY_ID_CAP)).tobytes() + array("q", range(5, LEGACY_ID_CAP + 5)).tobytes()
    ).decode()
    assert IdMemory.decode(full, 4).horizon == 5  # a full legacy memory had forgotten ids
    mem = IdMemory.decode(full, 4)
    assert remember(mem, 2**62, 10_000, 512, 1) is Seen.NEW and len(mem) == 512
    assert mem.horizon == LEGACY_ID_CAP + 5 - 512


def test_union_keeps_the_newest_and_the_later_horizon() -> None:
    a, b = IdMemory(), IdMemory()
    for i in range(6):
        remember(a, id_hash(f"a{i}"), i, 4, 1)
        remember(b, id_hash(f"b{i}"), 10 + i, 4, 2)
    union(a, b, 4)
    assert sorted(a.ts) == [12, 13, 14, 15] and a.horizon == 11
    assert remember(a, id_hash("b5"), 15, 4, 2) is Seen.DUPLICATE
    assert remember(a, id_hash("b5"), 15, 4, 3) is Seen.CONFLICT


def test_changelog_record_is_bounded_by_the_cap() -> None:
    s = CustomerState("hot")
    for i in range(5000):
        remember(s.purchase_ids, id_hash(f"p{i}"), i, 512, 5)
    s.frequency = 1
    s.monetary_cents = s.first_purchase_ms = s.last_purchase_ms = 0
    s.days = {}
    assert len(s.purchase_ids) == 512 and len(s.to_json()) < 14_000


def test_a_customer_update_resent_with_another_value_is_a_conflict() -> None:
    from schemas.topics import Topic
    from streams.testing import PipelineHarness

    h = PipelineHarness(clock="wall", start_ms=1793527200000)
    u = {"event_id": "u1", "customer_id": "c1", "ts": 1793527100000, "loyalty_member": True}
    h.send(Topic.CUSTOMER_UPDATES, u)
    h.send(Topic.CUSTOMER_UPDATES, u)  # identical: a silent duplicate
    assert not h.dead_letters()
    h.send(Topic.CUSTOMER_UPDATES, {**u, "loyalty_member": False})
    (dead,) = h.dead_letters()
    assert dead["reason"] == "duplicate_conflict" and "loyalty_member" in dead["error"]
    state = h.state("c1")
    assert state is not None and state.fact("loyalty_member") is True
    conflicts = sum((b.stats.conflicts for b in h.batches), start=Counter())
    assert conflicts == Counter({"customer-updates": 1})
